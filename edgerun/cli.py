"""The ``edgerun`` command line: export, verify, pack, serve, run, demo, broker, profile, layers, plan, bench.

Every command turns an ``EdgerunError`` into one line on stderr that says what
to do, and exit code 2 (1 for a failed check); a bug shows its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgerun.errors import ConfigError, EdgerunError, InternalError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


def version_text() -> str:
    """What `edgerun --version` prints: the package, the formats it reads and writes, and the
    native core that runs here (its kernel paths), so a bug report or a benchmark names them."""
    import importlib
    import importlib.metadata
    import os

    from edgerun import __version__, bundle, codec, wire

    lines = [f"edgerun {__version__}",
             f"formats: bundle {bundle.FORMAT_VERSION}, tool index {bundle.FORMAT_VERSION}, wire {wire.VERSION}, "
             f"tsq codec {codec.TSQ_VERSION}"]
    try:
        _core = importlib.import_module("edgerun._core")
    except ImportError as exc:
        lines.append(f"native core: missing ({exc}); reinstall edgerun with `pip install .`")
    else:
        lines.append(f"native core: engine graph (.erg) up to v{_core.ERG_VERSION}, fp32 gemm {_core.gemm_path()}, "
                     f"int8 gemm {_core.qgemm_path()}, {os.cpu_count()} CPUs")
        stale = [f"{name} {mine} vs core {theirs}" for name, mine, theirs in
                 (("wire", wire.VERSION, _core.WIRE_VERSION), ("tsq codec", codec.TSQ_VERSION, _core.TSQ_VERSION))
                 if mine != theirs]
        if stale:
            lines.append(f"warning: the native core does not match this Python package ({', '.join(stale)}); "
                         "rebuild it with `pip install .`")
    try:
        lines.append(f"onnxruntime {importlib.metadata.version('onnxruntime')}")
    except importlib.metadata.PackageNotFoundError:
        lines.append("onnxruntime: not installed (the server and `--engine ort` need it)")
    return "\n".join(lines)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _main_options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version, the formats and the native kernels here, and exit"),
) -> None:
    pass


def _fail(exc: EdgerunError) -> None:
    kind = "internal error (please report)" if isinstance(exc, InternalError) else "error"
    typer.echo(f"edgerun: {kind}: {exc}", err=True)
    raise typer.Exit(2)


@app.command("export")
def export_cmd(
    model: str = typer.Argument(..., help="zoo:digits-cnn, zoo:efficientnet-lite0, or path/to/file.py:fn"),
    cut: Optional[str] = typer.Option(None, help="cut index, label or tensor name (default: a mid-model cut)"),
    out: Path = typer.Option(Path("bundles/model"), help="bundle directory to write"),
    list_cuts: bool = typer.Option(False, "--list-cuts", help="list the valid cuts and exit"),
    max_cut_tensors: int = typer.Option(1, help="most tensors allowed to cross a cut"),
    front_precision: str = typer.Option("fp32", help="front half weights: fp32 | int8 | int4 | auto"),
    back_precision: str = typer.Option("fp32", help="back half: fp32 | fp16 | int8 (onnxruntime tools)"),
    codec: str = typer.Option("none", help="activation codec on the wire: none | tsq"),
    codec_budget: Optional[float] = typer.Option(None, help="tsq distortion budget (relative MSE); default: chosen on calibration data"),
    group_size: int = typer.Option(32, help="int4 group size"),
    max_device_mem_mb: Optional[float] = typer.Option(None, help="device memory budget for --front-precision auto"),
    front_act: str = typer.Option("int8", help="activations of int8 convs: int8 (int8 GEMM, faster) | fp32 (int8 weights dequantized per run: more accurate, fp32 speed)"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip measuring the split on held-out data"),
    exits: Optional[str] = typer.Option(None, help="early exits: auto | N (exits, the last at the cut) | none"),
    device: Optional[str] = typer.Option(None, help="plan the split for this device profile (with --server, --link)"),
    server: Optional[str] = typer.Option(None, help="server profile for the plan"),
    link: Optional[str] = typer.Option(None, help="link profile for the plan"),
    max_latency_ms: Optional[float] = typer.Option(None, help="plan budget: predicted ms per request"),
    max_accuracy_drop: Optional[float] = typer.Option(
        None, help="plan budget: metric loss vs the fp32 model (fraction; default 0.01, 1 = no limit)"),
    data: Optional[Path] = typer.Option(None, help="a model file's own samples (.npz: inputs or inputs.<name>, "
                                                   "optional labels): calibrate and measure on them, not on noise"),
    task: str = typer.Option("auto", help="how the first output is scored: classify (top-1; exits by max "
                                          "probability), regress (mean abs error; exits by action consistency), "
                                          "auto (the data's labels, else regress for one value per sample)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Trace MODEL, cut it, and write a split bundle (or list its cuts).

    With --device/--server/--link the planner chooses the cut, front precision and codec
    (the best feasible split under the budgets); --cut etc. are then ignored.
    """
    try:
        from edgerun.exporters.pipeline import ExportConfig, check_out_dir, export, trace_model
        from edgerun.report import cuts_table, export_summary

        planned = bool(device or server or link)
        if not planned and (max_latency_ms is not None or max_accuracy_drop is not None):
            raise ConfigError("--max-latency-ms / --max-accuracy-drop are budgets for the planner: "
                              "add --device, --server and --link, or drop them")
        if not list_cuts and not planned:  # fail on bad options before the (slow) trace
            ExportConfig(cut=cut, max_cut_tensors=max_cut_tensors, front_precision=front_precision,
                         back_precision=back_precision, codec=codec, codec_budget=codec_budget,
                         group_size=group_size, max_device_mem_mb=max_device_mem_mb, front_act=front_act,
                         exits=exits, task=task)
        if not list_cuts:
            check_out_dir(out)
            if exits not in (None, "none", "0") and not model.startswith("zoo:") and data is None:  # before the trace
                raise ConfigError(f"early exits need training inputs to fit the heads on, and {model} brings none: "
                                  "give its samples with --data samples.npz, or export it without --exits")
        traced = trace_model(model, max_cut_tensors=max_cut_tensors, data=data, task=task)
        if list_cuts:
            rows = [
                {"index": c.index, "label": c.label, "tensors": list(c.tensors), "shapes": [list(s) for s in c.shapes],
                 "crossing_bytes": c.crossing_bytes, "front_fraction": round(c.front_fraction, 4)}
                for c in traced.cuts
            ]
            typer.echo(json.dumps({"model": traced.source.model_id, "cuts": rows}) if as_json else cuts_table(rows))
            if not rows and not as_json:  # an empty table said nothing (the export itself says why)
                typer.echo(f"no valid cut: no tensor between two layers of {traced.source.model_id} carries all that "
                           f"the rest needs (a one-layer model has none; with skips, try --max-cut-tensors "
                           f"{max_cut_tensors + 1})", err=True)
            return
        if planned:
            overridden = [f"--{k} {v}" for k, v in (("cut", cut), ("front-precision", front_precision),
                                                   ("codec", codec)) if v not in (None, "fp32", "none")]
            if overridden:  # they were dropped without a word
                typer.echo(f"note: with --device/--server/--link the planner chooses the cut, the front "
                           f"precision and the codec; ignoring {', '.join(overridden)}", err=True)
            cut, front_precision, codec = _planned(traced, device, server, link, max_latency_ms,
                                                   max_device_mem_mb, max_accuracy_drop)
        cfg = ExportConfig(
            cut=cut, max_cut_tensors=max_cut_tensors, evaluate=not no_eval,
            front_precision=front_precision, back_precision=back_precision, codec=codec,
            codec_budget=codec_budget, group_size=group_size, max_device_mem_mb=max_device_mem_mb,
            front_act=front_act, exits=exits, task=task,
        )
        bundle = export(traced, cfg, out)
        report = json.loads(bundle.file("report.json").read_text())
        if as_json:
            typer.echo(json.dumps({"bundle": str(bundle.path), "hash": bundle.hash, "native": bundle.native_ok, **report}))
        else:
            typer.echo(export_summary(bundle, report))
    except EdgerunError as exc:
        _fail(exc)


def _planned(traced, device, server, link, max_latency_ms, max_mem_mb, max_drop) -> tuple[str, str, str]:
    """The planner's best feasible *split* (a bundle needs a cut; all-on-one-side plans are reported)."""
    from edgerun.exporters.planner import DEFAULT_MAX_ACCURACY_DROP, Budgets, plan

    if not (device and server and link):
        raise ConfigError("planning needs all three of --device, --server and --link")
    budgets = Budgets(max_latency_ms, max_mem_mb, DEFAULT_MAX_ACCURACY_DROP if max_drop is None else max_drop)
    p = plan(traced, device, server, link, budgets, splits_only=True)
    for note in p.notes:
        typer.echo(note, err=True)
    best = p.chosen
    if best is None:
        raise ConfigError(f"no feasible split for {device}/{server}/{link}: {p.reason}")
    typer.echo(f"plan: cut {best.cut}, front {best.front_precision}, codec {best.codec}, "
               f"{best.total_ms:.2f} ms predicted, loss {best.metric_loss:.4f} on calibration data", err=True)
    return best.cut, best.front_precision, best.codec


@app.command("verify")
def verify_cmd(
    bundle: Path = typer.Argument(..., help="bundle directory or archive"),
    threads: int = typer.Option(1, help="threads for both engines"),
    engine: str = typer.Option("native", help="device engine it will run on: native (checked against "
                               "onnxruntime) | ort (skips the native check)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Check native engine vs onnxruntime and split vs whole on the bundle's samples."""
    try:
        from edgerun.verify import verify

        rep = verify(str(bundle), threads=threads, engine=engine)
    except EdgerunError as exc:
        _fail(exc)
        return
    if as_json:
        typer.echo(json.dumps(rep.to_json()))
    else:
        for k, v in rep.to_json().items():
            typer.echo(f"{k:>30}: {v}")
    if not rep.ok:
        raise typer.Exit(1)


@app.command("pack")
def pack_cmd(
    bundle: Path = typer.Argument(..., help="bundle directory or archive (a model or a split LLM bundle)"),
    side: str = typer.Option(..., "--for", help="device | server: the side whose files the archive holds"),
    out: Path = typer.Option(..., help="the archive to write (.tar.gz)"),
    keep: list[str] = typer.Option([], help="a file of the other side to keep too, e.g. --keep back.onnx for "
                                            "`llm run --local-fallback` (repeat for several)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Write one side's copy of BUNDLE: the device's (front half, exits, samples) or the server's (back half).

    Same bundle hash as the whole bundle, so the two copies talk to each other."""
    try:
        from edgerun.pack import pack

        summary = pack(bundle, side, out, tuple(keep))
    except EdgerunError as exc:
        _fail(exc)
        return
    if as_json:
        typer.echo(json.dumps(summary))
        return
    mib = 2**20
    typer.echo(f"packed for the {summary['for']}: {summary['out']} ({summary['archive_bytes'] / mib:.2f} MiB)")
    typer.echo(f"  kept     {', '.join(summary['kept'])} ({summary['kept_bytes'] / mib:.2f} MiB)")
    typer.echo(f"  left out {', '.join(summary['left_out']) or '-'} ({summary['left_out_bytes'] / mib:.2f} MiB)")


@app.command("serve")
def serve_cmd(
    bundles: List[Path] = typer.Argument(..., help="bundle directories or archives: one worker each, in one process"),
    broker: str = typer.Option(..., help="broker URL, e.g. mqtt://127.0.0.1:1883"),
    group: str = typer.Option("edgerun", help="shared-subscription group (workers of one group split the load)"),
    threads: int = typer.Option(1, help="onnxruntime intra-op threads"),
    max_frame_mb: float = typer.Option(16.0, help="refuse requests larger than this, or that decode to more (MiB)"),
    max_batch: int = typer.Option(1, help="batch requests across devices: most samples per back-half call "
                                          "(1 = one call per request)"),
    batch_wait_ms: float = typer.Option(0.0, help="wait this long for more requests to fill a batch "
                                                  "(0 = batch only those already waiting)"),
    worker_id: Optional[str] = typer.Option(None, help="this worker's id in presence, replies and pinned topics "
                                                       "(default server-<host>-<pid>-<hex>)"),
    max_sessions: Optional[int] = typer.Option(None, help="a split LLM bundle only: most sessions whose KV cache "
                                                          "this worker keeps (default 32)"),
    session_ttl_s: Optional[float] = typer.Option(None, help="a split LLM bundle only: drop a session idle this "
                                                             "long (default 600 s)"),
    with_whole: bool = typer.Option(False, "--with-whole", help="also serve each model bundle's whole model (the "
                                    "plain-offload peer `edgerun bench --broker` compares the split with)"),
) -> None:
    """Serve the back half of each BUNDLE (model or split LLM bundles) over MQTT until Ctrl-C / SIGTERM."""
    import logging
    import signal
    import threading

    from edgerun.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s serve %(levelname)s %(message)s", stream=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if not 0 < max_frame_mb < 2**20:
            raise ConfigError(f"--max-frame-mb {max_frame_mb}: give a size in MiB > 0 (default 16)")
        opts = dict(group=group, threads=threads, max_frame_bytes=int(max_frame_mb * 2**20), max_batch=max_batch,
                    batch_wait_ms=batch_wait_ms, max_sessions=max_sessions, session_ttl_s=session_ttl_s,
                    worker_id=worker_id)
        if with_whole:
            import tempfile

            from edgerun.multi_server import with_whole_models

            tmp = tempfile.TemporaryDirectory(prefix="edgerun-whole-")
            to_serve = with_whole_models(bundles, Path(tmp.name))  # loaded: not unpacked again below
        else:
            to_serve = [str(b) for b in bundles]
        if len(to_serve) == 1:
            all_stats = [serve(to_serve[0], broker, stop=stop, **opts)]
        else:
            from edgerun.multi_server import serve_many

            all_stats = serve_many(to_serve, broker, stop=stop, **opts)
    except EdgerunError as exc:
        _fail(exc)
        return
    from edgerun.multi_server import label

    for b, stats in zip(to_serve, all_stats):  # one line per bundle; the last line is the last bundle's
        line = {"served": getattr(stats, "served", None), "stats": getattr(stats, "__dict__", {})}
        typer.echo(json.dumps({"bundle": label(b), **line} if len(to_serve) > 1 else line, default=str))


@app.command("demo")
def demo_cmd(
    limit: Optional[int] = typer.Option(None, help="use at most this many test samples"),
    engine: str = typer.Option("native", help="front-half engine: native | ort"),
    cut: Optional[str] = typer.Option(None, help="cut (default: the exporter's default cut)"),
    codec: str = typer.Option("none", help="activation codec on the wire: none | tsq"),
    front_precision: str = typer.Option("fp32", help="front half weights: fp32 | int8 | int4"),
    back_precision: str = typer.Option("fp32", help="back half: fp32 | fp16 | int8"),
    budget: Optional[str] = typer.Option(None, help="export with early exits and run under this budget: fast | balanced | accurate | off"),
    as_json: bool = typer.Option(False, "--json", help="last line of stdout: one JSON object"),
) -> None:
    """End-to-end split inference on the digits model with a local broker and server."""
    from edgerun.demo import run_demo
    from edgerun.procs import sigterm_unwinds

    sigterm_unwinds()  # SIGTERM cleans up like Ctrl-C: stop the broker and server
    try:
        run_demo(limit=limit, engine=engine, cut=cut, as_json=as_json, codec=codec,
                 front_precision=front_precision, back_precision=back_precision, budget=budget)
    except EdgerunError as exc:
        _fail(exc)


BROKER_WATCH_S = 0.5  # how often `edgerun broker` checks that its mosquitto still runs


@app.command("broker")
def broker_cmd(
    tls: bool = typer.Option(False, "--tls", help="listen with TLS only, on a throwaway CA and certificate (the "
                                                  "URL printed names the CA file: mqtts://...?ca=...)"),
    require_client_cert: bool = typer.Option(False, "--require-client-cert",
                                             help="with --tls: refuse clients without a certificate of that CA (the "
                                                  "URL printed carries one: &cert=...&key=...)"),
    port: Optional[int] = typer.Option(None, "--port", help="listen on this port (default: a free one); with "
                                                            "--certs-dir, a restarted broker keeps its URL"),
    certs_dir: Optional[Path] = typer.Option(None, "--certs-dir",
                                             help="with --tls: keep the certificates in this folder (made on the "
                                                  "first start, reused later; default: a temp folder deleted when "
                                                  "the broker stops)"),
) -> None:
    """Start a Mosquitto on a loopback port and print its URL (Ctrl-C or SIGTERM stops it)."""
    import time

    from edgerun.broker import Mosquitto
    from edgerun.procs import sigterm_unwinds

    sigterm_unwinds()  # `kill` stops the Mosquitto too (it was left running)
    try:
        if port is not None and not 1 <= port <= 65535:
            raise ConfigError(f"--port {port}: give a port in 1..65535")
        if (require_client_cert or certs_dir is not None) and not tls:
            raise ConfigError("--require-client-cert and --certs-dir need --tls")
        with Mosquitto(tls=tls, require_client_cert=require_client_cert, port=port, certs_dir=certs_dir) as m:
            typer.echo(m.url, err=False)
            sys.stdout.flush()
            if tls and certs_dir is None:  # the URL names files that vanish with this process
                typer.echo(f"certificates in {m.certs.ca.parent}: deleted when this broker stops, and a new broker "
                           "makes new ones (its clients need its new URL); --certs-dir DIR --port PORT keeps both",
                           err=True)
            while m.running:  # it used to sleep on for good after its mosquitto died, the URL dead
                time.sleep(BROKER_WATCH_S)
            raise UserError(f"mosquitto stopped (exit {m.returncode}): {m.url} is gone; its log ends with:\n"
                            f"{m.log_tail() or '(empty)'}")
    except KeyboardInterrupt:
        pass
    except EdgerunError as exc:
        _fail(exc)


def _register_planning_commands() -> None:
    # run, profile / layers / plan / bench live in their own modules (edgerun/cli_run.py, cli_plan.py).
    from edgerun.cli_plan import bench_cmd, layers_cmd, plan_cmd, profile_cmd
    from edgerun.cli_run import run_cmd

    app.command("run")(run_cmd)  # edgerun/cli_run.py

    app.command("profile")(profile_cmd)
    app.command("layers")(layers_cmd)
    app.command("plan")(plan_cmd)
    app.command("bench")(bench_cmd)
    from edgerun.cli_tools import tools_app

    app.add_typer(tools_app, name="tools")
    from edgerun.cli_llm import llm_app

    app.add_typer(llm_app, name="llm")


_register_planning_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
