"""``edgerun bench``: every way of running one bundle, side by side, over one emulated link.

One run starts a private Mosquitto, two ``edgerun serve`` processes (the bundle's back
half, and the whole model for "all on the server"), and a link emulator in front of the
broker that the device side connects through. Modes:

* ``device_native``: the whole model on the native engine (``whole.erg``, written here);
* ``device_ort``: the whole model on onnxruntime (``whole.onnx``);
* ``server``: the raw input sent, the whole model on the server (a bundle cut at the input);
* ``split``: the bundle's cut, native front half, raw fp32 on the wire, no confident exits;
* ``split_codec``: the same with the bundle's activation codec (when it has one);
* ``split_exit``: the same with the bundle's early exits at their default budget (raw wire),
  so each feature's effect is read against ``split`` (skipped when the bundle lacks it).

Device compute is measured on THIS machine (no scaling). The link figures come from the
profile and are emulated; the emulator is measured in the same run (``emulated``).

On real hardware (``broker=`` / ``edgerun bench BUNDLE --broker URL``) nothing is emulated or
started: the device side runs here, the remote modes go through that broker to the ``edgerun
serve`` workers already running for the bundle (on the real server, over the real network), and
the bytes are the frames' own (``Result.bytes_sent``). ``server`` runs there when a worker serves
the whole model too (``edgerun serve BUNDLE --with-whole``), else it is skipped saying so.

Example:
    >>> rep = run_bench("bundles/digits", "wifi", requests=50)   # doctest: +SKIP
    >>> rep["modes"]["split"]["stages"]["total"]["p50"]          # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgerun import procs
from edgerun.bundle import Bundle, write_manifest
from edgerun.errors import ConfigError, EdgerunError, TransportError
from edgerun.feeds import Inputs, float32, n_samples, rows
from edgerun.profiles import LinkProfile, load_link
from edgerun.report import percentiles

STAGES = ("device", "encode", "network", "server", "decode", "total")
QS = (50, 95, 99)
REQUEST_TIMEOUT_MS = 30000.0  # how long each remote mode waits for a reply
CONNECT_TIMEOUT_MS = 5000.0   # how long an MQTT connect through the emulator waits for the broker's CONNACK
FIRST_REAL_ANSWER_MS = 10000.0  # --broker: how long the first request waits for a running server


def make_server_bundle(b: Bundle, out: Path) -> Bundle:
    """A bundle "cut at the input": the front half is an Identity, the back half the whole model.

    The device then sends the raw input and the server runs everything (all-on-server mode)
    with the unchanged device/server code.
    """
    import onnx
    from onnx import helper

    whole = onnx.load(b.file("whole.onnx"))
    ins = list(whole.graph.input)
    raw = {i.name: f"{i.name}_raw" for i in ins}  # every model input crosses as it came
    back = onnx.ModelProto()
    back.CopyFrom(whole)
    for vi in back.graph.input:
        vi.name = raw[vi.name]
    for node in back.graph.node:
        for i, name in enumerate(node.input):
            if name in raw:
                node.input[i] = raw[name]
    outs = []
    for inp in ins:
        out_vi = onnx.ValueInfoProto()
        out_vi.CopyFrom(inp)
        out_vi.name = raw[inp.name]
        outs.append(out_vi)
    nodes = [helper.make_node("Identity", [i.name], [raw[i.name]]) for i in ins]
    front = helper.make_model(helper.make_graph(nodes, "input_cut", ins, outs), opset_imports=list(whole.opset_import))
    front.ir_version = whole.ir_version  # onnxruntime may not read the newest IR version onnx writes
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(front, out / "front.onnx")
    onnx.save(back, out / "back.onnx")
    shutil.copy(b.file("whole.onnx"), out / "whole.onnx")
    specs = [dict(spec, name=raw[spec["name"]]) for spec in b.manifest["inputs"]]
    manifest = {k: v for k, v in b.manifest.items() if k not in ("bundle_hash", "format", "format_version")}
    manifest.update(split={"label": "input", "index": -1, "after_node": -1, "tensors": specs},
                    native={"ok": False, "reason": "identity front half: runs on onnxruntime"},
                    codec={"id": "none"}, exits={},  # raw input on the wire, no local answers
                    files={"front.onnx": {"role": "identity"}, "back.onnx": {"role": "whole model"},
                           "whole.onnx": {"role": "whole model (reference)"}})
    write_manifest(out, manifest)
    return Bundle.load(out)


def _one(xs: Inputs, i: int) -> Inputs:
    """Sample ``i`` (cycling) of the bundle's samples, as a batch of one."""
    j = i % n_samples(xs)
    return rows(xs, j, j + 1)


class SlowedEngine:
    """A front-half engine made ``factor`` times slower: emulates a slower device than this machine.

    After each run it waits ``(factor - 1)`` times the measured compute time (busy-waiting
    the last 0.2 ms so short segments stay accurate). Outputs are unchanged.
    """

    def __init__(self, engine: Any, factor: float) -> None:
        self.engine, self.factor = engine, float(factor)

    def run(self, feeds: Any) -> Any:
        t0 = time.perf_counter()
        out = self.engine.run(feeds)
        now = time.perf_counter()
        until = now + (now - t0) * (self.factor - 1.0)
        if until - now > 2e-4:
            time.sleep(until - now - 2e-4)
        while time.perf_counter() < until:
            pass
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def slow_down(dev: Any, factor: float) -> None:
    """Wrap a Device's front-half engines (plain or exit segments) in ``SlowedEngine``."""
    if factor == 1.0:
        return
    if getattr(dev, "engine", None) is not None:
        dev.engine = SlowedEngine(dev.engine, factor)
    if getattr(dev, "exits", None) is not None:
        segs = dev.exits.segments
        segs.engines = [SlowedEngine(e, factor) for e in segs.engines]


def _check_link_fits(lnk: LinkProfile, b: Bundle, xs: Inputs) -> None:
    """Refuse a link the bench cannot run over, before anything starts.

    A link profile with an RTT of seconds (or a bandwidth of bits per second) plans fine, but the
    bench's connections through the emulator then failed after minutes with "the MQTT broker did
    not accept the connection within 5 s", which blamed the broker.
    """
    worst_rtt = lnk.rtt_ms + 2 * lnk.jitter_ms  # U(0, jitter) each way
    first = rows(xs, 0, 1)  # the largest request: the raw inputs (all-on-server mode) + headers
    raw = sum(int(a.nbytes) for a in (first.values() if isinstance(first, dict) else [first])) + 4096
    out = sum(4 * int(np.prod([d or 1 for d in t.shape])) for t in b.outputs) + 4096
    request_ms = lnk.network_ms(raw, out) + lnk.jitter_ms
    if worst_rtt > 0.8 * CONNECT_TIMEOUT_MS or request_ms > 0.8 * REQUEST_TIMEOUT_MS:
        raise ConfigError(f"link {lnk.name} ({lnk.path}): a round trip takes up to {worst_rtt:.4g} ms and one request "
                          f"of this bundle {request_ms:.4g} ms over it, but the bench waits {CONNECT_TIMEOUT_MS:.0f} ms "
                          f"for a connection and {REQUEST_TIMEOUT_MS:.0f} ms for a reply: bench over a faster link "
                          f"(RTT + 2 x jitter under {0.8 * CONNECT_TIMEOUT_MS:.0f} ms, a request under "
                          f"{0.8 * REQUEST_TIMEOUT_MS:.0f} ms); `edgerun plan` takes any link")


def _local_mode(run: Callable[[Inputs], Any], xs: Inputs, requests: int, warmup: int) -> dict:
    for i in range(warmup):
        run(_one(xs, i))
    samples: dict[str, list[float]] = defaultdict(list)
    for i in range(requests):
        t0 = time.perf_counter()
        run(_one(xs, i))
        ms = (time.perf_counter() - t0) * 1e3
        samples["device"].append(ms)
        samples["total"].append(ms)
    return {"stages": percentiles(samples, QS), "bytes_sent": 0, "bytes_received": 0, "requests": requests}


def _remote_mode(bundle: Bundle, emu: Any, server: subprocess.Popen | None, log_path: Path | None, engine: str,
                 xs: Inputs, requests: int, warmup: int, slowdown: float = 1.0, *, url: str | None = None,
                 **device_opts: Any) -> dict:
    """One remote mode through the link emulator ``emu`` (bytes counted there), or straight to the broker at
    ``url`` (``emu`` None: bytes are the frames' own, ``Result.bytes_sent`` / ``bytes_received``)."""
    from edgerun.device import Device

    answered: dict[str, int] = defaultdict(int)
    confident_exits = bool(bundle.manifest.get("exits")) and device_opts.get("budget") != "off"
    with Device(bundle, broker=emu.url if emu is not None else url, engine=engine, timeout_ms=REQUEST_TIMEOUT_MS,
                **device_opts) as dev:
        slow_down(dev, slowdown)
        if not confident_exits:  # a device with confident exits may never need the server
            if server is not None:
                procs.first_server_answer(dev, rows(xs, 0, 1), server, log_path)
            else:
                _first_real_answer(dev, rows(xs, 0, 1), url)
        done = 0  # timed requests answered: a server lost mid-mode is reported with it
        try:
            for i in range(warmup):
                dev.infer(_one(xs, i))
            up0, down0 = (emu.up.bytes, emu.down.bytes) if emu is not None else (0, 0)
            samples: dict[str, list[float]] = defaultdict(list)
            frames = [0, 0]
            for done in range(requests):
                r = dev.infer(_one(xs, done))
                answered["server" if r.answered_by == "server" else "local"] += 1
                frames[0] += r.bytes_sent
                frames[1] += r.bytes_received
                for k, v in r.timings_ms.items():
                    samples[k].append(v)
        except TransportError as exc:
            why = str(exc).split(" If it is, the deadline")[0]  # the device's --deadline-ms advice is not bench's
            raise TransportError(f"stopped after {done} of {requests} timed requests: {why}") from None
        up, down = (emu.up.bytes - up0, emu.down.bytes - down0) if emu is not None else frames
    return {"stages": percentiles(samples, QS), "bytes_sent": round(up / requests),
            "bytes_received": round(down / requests), "requests": requests, "engine": engine,
            "local_fraction": answered["local"] / requests, **{k: v for k, v in device_opts.items() if v}}


def _measure(out: dict, mode: str, run: Callable[[], dict]) -> None:
    """``out[mode] = run()``, or ``{"failed": why}`` when the server or the broker stopped answering, or the
    server answered with an error: the modes measured before (minutes of them) and after are kept, and the
    report names the failure."""
    try:
        out[mode] = run()
    except EdgerunError as exc:
        out[mode] = {"failed": f"{type(exc).__name__}: {exc}" if not isinstance(exc, TransportError) else str(exc)}


def _first_real_answer(dev: Any, x: Inputs, url: str) -> None:
    """One answer from a running server before timing (its workers are not ours to start or watch)."""
    import shlex

    try:
        r = dev.infer(x, deadline_ms=FIRST_REAL_ANSWER_MS)
    except TransportError:
        # a command to paste (a TLS URL holds '?' and '&'); the device's own advice named --deadline-ms, which
        # bench does not take, and the wait here is already 10 s
        raise TransportError(f"no server answered through {dev._client.url} within {FIRST_REAL_ANSWER_MS / 1e3:g} s: "
                             f"start `edgerun serve {shlex.quote(dev.bundle.path.name)} --broker "
                             f"{shlex.quote(dev._client.url)}` on the server first (the server's copy of this "
                             "bundle)") from None
    if r.answered_by != "server":
        raise TransportError(f"the device answered by itself ({r.reason}): is a server running for this bundle?")


def _server_online(url: str, bundle: Bundle, wait_s: float = 2.0) -> bool:
    """True when a worker for ``bundle`` announced itself online on the broker (retained presence)."""
    import json
    import threading

    from edgerun import transport

    online = threading.Event()

    def on_msg(msg: Any) -> None:
        try:
            if json.loads(msg.payload).get("status") == "online":
                online.set()
        except ValueError:
            pass

    client = transport.MqttClient(url, transport.default_id("bench"), on_message=on_msg)
    client.connect()
    try:
        client.subscribe(transport.presence_filter(bundle.model_id, bundle.topic_id, "server"))
        return online.wait(wait_s)
    finally:
        client.close()


def _split_variants(b: Bundle) -> dict[str, dict]:
    """Device options of the split modes: raw fp32 on the wire and no confident exits; then each feature
    alone on top (the bundle's codec; its exits at their default budget)."""
    has_exits = bool(b.manifest.get("exits"))
    return {"split": {"codec": "none", "budget": "off" if has_exits else None},
            "split_codec": {"codec": None, "budget": "off" if has_exits else None},
            "split_exit": {"codec": "none", "budget": None}}


def _run_real(b: Bundle, broker: str, remote: list[str], work: Path, xs: Inputs, requests: int, warmup: int,
              out: dict, log: Callable[[str], None], factor: float = 1.0) -> None:
    """The remote modes straight through ``broker`` to the servers already running there (all on the server:
    a worker started with ``edgerun serve BUNDLE --with-whole`` serves the same bundle cut at the input)."""
    if "server" in remote:
        sb = make_server_bundle(b, work / "server-bundle")  # the same hash as the worker's: same files
        if _server_online(broker, sb):
            log("mode server (real network)")
            _measure(out, "server", lambda: _remote_mode(sb, None, None, None, "ort", xs, requests, warmup, url=broker))
        else:
            out["server"] = {"skipped": "no worker serves the whole model: start `edgerun serve BUNDLE --with-whole` "
                                        "on the server to compare with plain offload"}
    engine = "native" if b.native_ok else "ort"
    variants = _split_variants(b)
    for mode in ("split", "split_codec", "split_exit"):
        if mode in remote:
            log(f"mode {mode} (real network)")
            _measure(out, mode, lambda: _remote_mode(b, None, None, None, engine, xs, requests, warmup, factor,
                                                     url=broker, **variants[mode]))


def _link_report(link: LinkProfile) -> dict:
    from edgerun.linkemu import LinkConfig, measure

    m = measure(LinkConfig.from_profile(link, outages=()))
    return {"profile": {"rtt_ms": link.rtt_ms, "jitter_ms": link.jitter_ms, "up_mbps": link.up_mbps,
                        "down_mbps": link.down_mbps, "expected_mean_rtt_ms": link.rtt_ms + link.jitter_ms},
            "measured": {k: round(v, 3) for k, v in m.items()}}


def run_bench(bundle: str | Path | Bundle, link: str | LinkProfile | None = None, *, broker: str | None = None,
              requests: int = 100, warmup: int = 5, modes: tuple[str, ...] | None = None, device: str | None = None,
              log: Callable[[str], None] = lambda s: None) -> dict:
    """Run every mode of ``bundle`` over ``link`` (emulated) or through ``broker`` (real) and return the report.

    Args:
        bundle: a bundle (path or loaded).
        link: a link profile name or a loaded profile: the link is emulated here.
        broker: instead of ``link``, the URL of the broker that real ``edgerun serve`` workers of this
            bundle use: the real network is measured.
        requests: timed requests per mode (batch 1), after ``warmup`` untimed ones.
        modes: a subset of the modes to run (default: all).
        device: a device profile to emulate: device compute is slowed by the ratio of this
            machine's profile to it (reported as such); None = this machine as it is.

    Returns:
        ``{"bundle", "model", "cut", "link", "modes": {mode: {"stages": {stage: {p50,p95,p99}},
        "bytes_sent", ...} or {"skipped": why} or {"failed": why}}, "emulated": {...} (emulated link
        only), "device_compute": ...}``. A remote mode whose server or broker stopped answering is
        ``{"failed": why}`` (how many of its requests were answered, and why); the other modes are
        measured all the same.

    Raises:
        ConfigError: bad counts, an unknown mode, or not exactly one of ``link`` / ``broker``;
            BundleError / TransportError from the parts.
    """
    from edgerun.engine import make_engine

    all_modes = ("device_native", "device_ort", "server", "split", "split_codec", "split_exit")
    modes = modes or all_modes
    if requests < 1 or warmup < 0:
        raise ConfigError(f"requests={requests} must be >= 1 and warmup={warmup} >= 0")
    if set(modes) - set(all_modes):
        raise ConfigError(f"unknown modes {sorted(set(modes) - set(all_modes))}; use {all_modes}")
    if (link is None) == (broker is None):
        raise ConfigError("give a link profile to emulate (--link wifi) or the broker of running servers to measure "
                          "the real network (--broker URL), not both")
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    lnk = None if link is None else link if isinstance(link, LinkProfile) else load_link(link)
    xs = float32(b.samples())
    if lnk is not None:
        _check_link_fits(lnk, b, xs)
    else:
        from edgerun.broker import parse_broker_url, redact_broker_url

        parse_broker_url(broker)  # a malformed URL fails before the local modes run
    from edgerun.profiles import emulated_device

    _, factor, note = emulated_device(device)
    where = lnk.name if lnk is not None else f"real network via {redact_broker_url(broker)}"
    report: dict[str, Any] = {"bundle": str(b.path), "model": b.model_id, "cut": b.cut_label, "link": where,
                              "requests": requests, "device_compute": note, "device_slowdown": round(factor, 3),
                              "modes": {}}
    out = report["modes"]
    work = Path(tempfile.mkdtemp(prefix="edgerun-bench-"))
    try:
        if "device_native" in modes:
            from edgerun.exporters.erg import write_erg
            import onnx

            write_erg(onnx.load(b.file("whole.onnx")), work / "whole.erg")
            eng = make_engine("native", erg_path=work / "whole.erg", max_batch=1)
            log("mode device_native")
            out["device_native"] = _local_mode(SlowedEngine(eng, factor).run, xs, requests, warmup)
        if "device_ort" in modes:
            eng = make_engine("ort", onnx_path=b.file("whole.onnx"))
            log("mode device_ort")
            out["device_ort"] = _local_mode(SlowedEngine(eng, factor).run, xs, requests, warmup)
        codec_id = str(b.manifest.get("codec", {}).get("id", "none"))
        if "split_codec" in modes and codec_id == "none":
            out["split_codec"] = {"skipped": "the bundle has no codec (export with --codec tsq)"}
        if "split_exit" in modes and not b.manifest.get("exits"):
            out["split_exit"] = {"skipped": "the bundle has no early exits (export with --exits auto)"}
        remote = [m for m in ("server", "split", "split_codec", "split_exit") if m in modes and m not in out]
        if remote and lnk is None:
            _run_real(b, broker, remote, work, xs, requests, warmup, out, log, factor)
        elif remote:
            _run_remote(b, lnk, remote, work, xs, requests, warmup, out, log, factor)
        if lnk is not None:
            log("measuring the emulated link")
            report["emulated"] = _link_report(lnk)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _run_remote(b: Bundle, lnk: LinkProfile, remote: list[str], work: Path, xs: Inputs, requests: int,
                warmup: int, out: dict, log: Callable[[str], None], factor: float = 1.0) -> None:
    from edgerun.broker import Mosquitto, parse_broker_url
    from edgerun.linkemu import LinkConfig, LinkEmulator

    sb = make_server_bundle(b, work / "server-bundle") if "server" in remote else None
    children: list[subprocess.Popen] = []
    with Mosquitto() as broker:
        try:
            split_proc = procs.start_server(b.path, broker.url, work / "serve-split.log")
            children.append(split_proc)
            if sb is not None:
                srv_proc = procs.start_server(sb.path, broker.url, work / "serve-whole.log")
                children.append(srv_proc)
            with LinkEmulator(parse_broker_url(broker.url), LinkConfig.from_profile(lnk, outages=())) as emu:
                if sb is not None:
                    log("mode server")
                    _measure(out, "server", lambda: _remote_mode(sb, emu, srv_proc, work / "serve-whole.log", "ort",
                                                                 xs, requests, warmup))
                engine = "native" if b.native_ok else "ort"
                variants = _split_variants(b)
                for mode in ("split", "split_codec", "split_exit"):
                    if mode in remote:
                        log(f"mode {mode}")
                        _measure(out, mode, lambda: _remote_mode(b, emu, split_proc, work / "serve-split.log",
                                                                 engine, xs, requests, warmup, factor,
                                                                 **variants[mode]))
        finally:
            for p in children:
                procs.stop(p)


def plot(report: dict, path: str | Path) -> Path:
    """Stacked p50 stage times per mode (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m, r in report["modes"].items() if "stages" in r]
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = np.zeros(len(modes))
    for st in STAGES[:-1]:
        vals = np.array([report["modes"][m]["stages"].get(st, {}).get("p50", 0.0) for m in modes])
        ax.bar(modes, vals, bottom=bottom, label=st)
        bottom += vals
    for i, m in enumerate(modes):
        tot = report["modes"][m]["stages"]["total"]["p50"]
        ax.text(i, bottom[i], f"{tot:.1f} ms\n{report['modes'][m]['bytes_sent']} B", ha="center", va="bottom",
                fontsize=8)
    ax.set_ylabel("p50 ms (stacked stages)")
    dev = "this machine" if report.get("device_slowdown", 1.0) == 1.0 else f"emulated x{report['device_slowdown']}"
    how = "emulated link" if "emulated" in report else "measured"
    ax.set_title(f"{report['model']} cut {report['cut']} over {report['link']} ({how}; device: {dev})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


__all__ = ["STAGES", "make_server_bundle", "plot", "run_bench"]
