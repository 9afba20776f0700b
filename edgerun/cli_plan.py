"""Command functions for ``edgerun profile``, ``edgerun layers``, ``edgerun plan`` and ``edgerun bench``.

Registered in ``edgerun/cli.py`` with one line each (``app.command("plan")(plan_cmd)``).
Errors become one line on stderr and exit code 2, like the other commands; ``plan`` exits
1 when no candidate meets the budgets (the JSON still says why).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from edgerun.errors import EdgerunError, InternalError


def _fail(exc: EdgerunError) -> None:
    kind = "internal error (please report)" if isinstance(exc, InternalError) else "error"
    typer.echo(f"edgerun: {kind}: {exc}", err=True)
    raise typer.Exit(2)


def _log(msg: str) -> None:
    typer.echo(f"[edgerun] {msg}", err=True)


def _check_writable(path: Optional[Path], option: str) -> None:
    """Refuse an output file that cannot be written *before* the measurement (minutes) runs: the
    results were written at the end, and a directory or an unwritable place lost all of them."""
    import os
    import tempfile

    from edgerun.errors import ConfigError

    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; give a file path, e.g. {path / 'out'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write {option} {path} ({exc.strerror or exc}); give a writable path") from exc


def profile_cmd(
    out: Path = typer.Option(Path("devices/this-machine.toml"), help="device profile TOML to write"),
    server_out: Optional[Path] = typer.Option(None, help="also write the server profile (ORT back halves) here"),
    model: List[str] = typer.Option(["zoo:digits-cnn", "zoo:efficientnet-lite0"], help="models to time (repeatable)"),
    repeats: int = typer.Option(20, help="timed runs per segment (the median is kept)"),
    passes: int = typer.Option(3, help="sweeps over all cuts; the median over sweeps is kept"),
    gap_ms: float = typer.Option(20.0, help="idle ms before each timed run, as between served requests"),
    threads: int = typer.Option(1, help="engine threads"),
    name: str = typer.Option("this-machine", help="profile name"),
) -> None:
    """Measure the native engine on this machine per cut and write a device profile TOML."""
    try:
        from edgerun.profiler import profile_machine, write_toml

        _check_writable(out, "--out")
        _check_writable(server_out, "--server-out")
        prof = profile_machine(model, repeats=repeats, threads=threads, name=name, passes=passes, gap_ms=gap_ms, log=_log)
        typer.echo(str(write_toml(prof["device"], out)))
        if server_out is not None:
            typer.echo(str(write_toml(prof["server"], server_out)))
    except EdgerunError as exc:
        _fail(exc)


def layers_cmd(
    bundle: Path = typer.Argument(..., help="bundle directory or archive (its front.erg is timed), or a .erg file"),
    runs: int = typer.Option(50, help="timed runs (the mean per layer is shown)"),
    threads: int = typer.Option(1, help="engine threads"),
    top: int = typer.Option(15, help="show the slowest N layers (0 = all)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Time each layer of a front half on the native engine here, on the bundle's own samples."""
    import numpy as np

    from edgerun.errors import ConfigError
    from edgerun import feeds
    from edgerun.engine import NativeEngine

    try:
        if top < 0:
            raise ConfigError(f"--top {top}: give how many of the slowest layers to show (0 = all)")
        if bundle.suffix == ".erg":
            erg, x = bundle, None
        else:
            from edgerun.bundle import Bundle

            b = Bundle.load(bundle)
            # (a one-side copy without it: b.file says so below; there is no `export --engine ort`: the reason is
            # the op the engine lacks)
            if "front.erg" not in b.manifest["files"]:
                raise ConfigError(f"bundle {bundle} has no native front half to time: {b.native_reason or 'none was written'}"
                                  "; `edgerun layers` times the native engine: export a cut before that node "
                                  "(`edgerun export MODEL --list-cuts`)")
            erg, x = b.file("front.erg"), feeds.float32(feeds.rows(b.samples(), 0, 1))
        eng = NativeEngine(erg, max_batch=1, threads=threads)
        if x is None:  # a bare .erg: random inputs of its shapes
            rng = np.random.default_rng(0)
            x = {n: rng.standard_normal((1, *shape[1:])).astype(np.float32)
                 for n, shape in zip(eng.input_names, eng.input_shapes)}
        steps = eng.profile_layers(x, runs=runs)
    except EdgerunError as exc:
        _fail(exc)
    total = sum(s["us"] for s in steps) or 1.0
    kernels: dict[str, float] = {}
    for s in steps:
        kernels[s["kernel"]] = kernels.get(s["kernel"], 0.0) + s["us"]
    if as_json:
        typer.echo(json.dumps({"total_us": total, "by_kernel_us": kernels, "layers": steps}))
        return
    shown = sorted(steps, key=lambda s: -s["us"])[: top or None]
    typer.echo(f"{'layer':40} {'op':10} {'kernel':16} {'us':>9} {'share':>6}")
    for s in shown:
        typer.echo(f"{s['node'][:40]:40} {s['op']:10} {s['kernel']:16} {s['us']:9.1f} {100 * s['us'] / total:5.1f}%")
    typer.echo(f"total {total:.1f} us over {len(steps)} layers; by kernel: "
               + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])))


def plan_cmd(
    model: str = typer.Argument(..., help="zoo:digits-cnn, zoo:efficientnet-lite0, or path/to/file.py:fn"),
    device: str = typer.Option(..., help="device profile: name in devices/ (rpi4, ...) or a .toml path"),
    server: str = typer.Option(..., help="server profile: name (cpu-server, gpu-a100) or path"),
    link: str = typer.Option(..., help="link profile: name (wifi, lte, 5g, ethernet) or path"),
    max_latency_ms: Optional[float] = typer.Option(None, help="budget: predicted ms per request"),
    max_device_mem_mb: Optional[float] = typer.Option(None, help="budget: device memory, MiB"),
    max_accuracy_drop: Optional[float] = typer.Option(
        None, help="budget: metric loss vs the fp32 model (fraction; default 0.01, 1 = no limit)"),
    data: Optional[Path] = typer.Option(None, help="a model file's own samples (.npz, as for export --data): the "
                                                   "lossy candidates' loss is measured on them"),
    task: str = typer.Option("auto", help="how the first output is scored, as for export --task"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Rank every cut x precision x codec for DEVICE/SERVER/LINK and choose the best feasible one."""
    try:
        from edgerun.exporters.pipeline import trace_model
        from edgerun.exporters.planner import DEFAULT_MAX_ACCURACY_DROP, Budgets, plan

        drop = DEFAULT_MAX_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop
        spec = trace_model(model, data=data, task=task) if data is not None or task != "auto" else model
        p = plan(spec, device, server, link, Budgets(max_latency_ms, max_device_mem_mb, drop))
    except EdgerunError as exc:
        _fail(exc)
        return
    for note in p.notes:
        typer.echo(note, err=True)
    if as_json:
        typer.echo(json.dumps(p.to_json()))
    else:
        from edgerun.report import table

        rows = [[c.cut, c.front_precision, c.codec, f"{c.device_ms:.2f}", c.wire_bytes, f"{c.network_ms:.2f}",
                 f"{c.server_ms:.2f}", f"{c.total_ms:.2f}", f"{c.device_mem_bytes / 2**20:.1f}", "-" if c.metric_loss is None else f"{c.metric_loss:.4f}",
                 "yes" if c.feasible else ",".join(c.violations)] for c in p.candidates]
        typer.echo(table(["cut", "prec", "codec", "device ms", "wire B", "net ms", "server ms", "total ms",
                          "dev MiB", "loss", "feasible"], rows))
        typer.echo(p.reason)
    if p.chosen is None:
        raise typer.Exit(1)


def bench_cmd(
    bundle: Path = typer.Argument(..., help="bundle directory or archive"),
    link: Optional[str] = typer.Option(None, help="link profile to emulate: name (wifi, lte, 5g, ethernet) or path"),
    broker: Optional[str] = typer.Option(None, help="instead of --link: the broker of `edgerun serve` workers already "
                                                    "running for BUNDLE (the real network is measured)"),
    requests: int = typer.Option(100, help="timed requests per mode"),
    warmup: int = typer.Option(5, help="untimed requests per mode first"),
    device: Optional[str] = typer.Option(None, help="emulate this device profile's speed (device compute "
                                         "scaled from this machine's profile; reported as emulated)"),
    png: Optional[Path] = typer.Option(None, help="write a stacked-stage chart here"),
    out: Optional[Path] = typer.Option(None, help="also write the JSON report here"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Run BUNDLE all-on-device, all-on-server and split over an emulated LINK (or through a real --broker);
    per-stage p50/p95/p99."""
    from edgerun.procs import sigterm_unwinds

    sigterm_unwinds()  # SIGTERM stops the bench's Mosquitto and servers, as Ctrl-C does
    try:
        from edgerun.bench import plot, run_bench

        _check_writable(png, "--png")
        _check_writable(out, "--out")
        rep = run_bench(bundle, link, broker=broker, requests=requests, warmup=warmup, device=device, log=_log)
    except EdgerunError as exc:
        _fail(exc)
        return
    if png is not None:
        rep["png"] = str(plot(rep, png))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rep, indent=2) + "\n")
    failed = [m for m, r in rep["modes"].items() if "failed" in r]
    if as_json:
        typer.echo(json.dumps(rep))
    else:
        _bench_table(rep)
    if failed:  # the figures above are kept; a script still sees that the run was not whole
        typer.echo(f"edgerun: error: mode(s) {', '.join(failed)} failed: "
                   + "; ".join(f"{m}: {rep['modes'][m]['failed']}" for m in failed), err=True)
        raise typer.Exit(1)


def _bench_table(rep: dict) -> None:
    from edgerun.report import table

    rows = []
    for mode, r in rep["modes"].items():
        if "skipped" in r or "failed" in r:
            rows.append([mode, "-", "-", "-", "-", r.get("skipped") or "FAILED (below)"])
            continue
        t = r["stages"]["total"]
        rows.append([mode, f"{t['p50']:.2f}", f"{t['p95']:.2f}", f"{t['p99']:.2f}", r["bytes_sent"], ""])
    typer.echo(table(["mode", "p50 ms", "p95 ms", "p99 ms", "bytes sent", "note"], rows))
    typer.echo(f"device compute: {rep['device_compute']}")  # emulated or not; a stale profile's warning
    em = rep.get("emulated")
    if em is None:
        typer.echo(f"link: {rep['link']} (not emulated)")
        return
    typer.echo(f"link {rep['link']}: profile RTT {em['profile']['rtt_ms']} ms (+{em['profile']['jitter_ms']} jitter), "
               f"measured p50 {em['measured']['rtt_ms_p50']:.2f} ms; up {em['measured']['up_mbps']:.1f}/"
               f"{em['profile']['up_mbps']} Mbit/s, down {em['measured']['down_mbps']:.1f}/{em['profile']['down_mbps']}")


__all__ = ["bench_cmd", "plan_cmd", "profile_cmd"]
