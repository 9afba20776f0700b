"""Hedged requests against a frozen server worker: deadline misses and latency, with and without
`Device(hedge_ms=...)`, in one run.

Two `edgerun serve` workers of one group on a private Mosquitto, the digits bundle. First both run
(the cost of hedging when nothing is wrong), then one is frozen with SIGSTOP: its broker session
stays up until the keepalive runs out, so the shared subscription keeps handing it its turn (until
its 20-message in-flight window is full). Each run starts two fresh workers; a device sends
``--requests`` requests one after another with ``--deadline-ms``, without hedging and with
``--hedge-ms``. Per run: requests that missed the deadline, p50 /
p99 / max of the answered ones (ms, send to answer), and how many were sent twice.
``--cpp`` runs the same four cases with the C++ device too (``edgerun_control_loop`` back to back, native
front half, built as the tests build it: tests/integration/cpp_device_build.py).

Run:  python benchmarks/bench_hedging.py --out benchmarks/results/zen5/hedging.json [--cpp]
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgerun import procs
from edgerun.broker import Mosquitto
from edgerun.device import Device
from edgerun.errors import TransportError
from edgerun.profiles import cpu_name


def _run(bundle, url: str, x: np.ndarray, n: int, deadline_ms: float, hedge_ms: float | None) -> dict:
    lat, missed = [], 0
    with Device(bundle, broker=url, engine="ort", hedge_ms=hedge_ms) as dev:
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                dev.infer(x, deadline_ms=deadline_ms)
                lat.append((time.perf_counter() - t0) * 1e3)
            except TransportError:
                missed += 1
        hedged = dev.hedged
    q = (lambda p: float(np.percentile(lat, p))) if lat else (lambda p: float("nan"))
    return {"hedge_ms": hedge_ms, "requests": n, "missed_deadline": missed, "sent_twice": hedged,
            "p50_ms": q(50), "p99_ms": q(99), "max_ms": max(lat) if lat else float("nan")}


def _run_cpp(loop_exe: Path, bundle, url: str, x_path: Path, n: int, deadline_ms: float,
             hedge_ms: float | None) -> dict:
    """The same requests from edgerun_control_loop, back to back (a rate it cannot keep)."""
    cmd = [str(loop_exe), str(bundle.path), "--broker", url, "--input", str(x_path), "--rate", "10000",
           "--ticks", str(n), "--deadline-ms", str(deadline_ms)] + (["--hedge-ms", str(hedge_ms)] if hedge_ms else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    s = json.loads(r.stdout.splitlines()[-1])
    t = s["total_ms"]
    return {"hedge_ms": hedge_ms, "requests": n, "missed_deadline": s["missed"], "sent_twice": s["hedged"],
            "p50_ms": t.get("p50", float("nan")), "p99_ms": t.get("p99", float("nan")), "max_ms": float("nan")}


def _both_online(bundle, url: str, x: np.ndarray, timeout_s: float = 60.0) -> None:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    with Device(bundle, broker=url, engine="ort") as dev:
        while len(seen) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only workers {seen} answered")
            try:
                seen.add(dev.infer(x, deadline_ms=2000).worker)
            except TransportError:
                time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--deadline-ms", type=float, default=1000.0)
    ap.add_argument("--hedge-ms", type=float, default=50.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/hedging.json"))
    ap.add_argument("--cpp", action="store_true", help="the C++ device (edgerun_control_loop) too")
    args = ap.parse_args()
    loop_exe = None
    if args.cpp:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
        from cpp_device_build import build, control_loop, missing_tools

        if missing_tools():
            raise SystemExit(f"cannot build the C++ device: {missing_tools()}")
        build_dir = Path(tempfile.mkdtemp(prefix="edgerun-bench-hedging-"))
        loop_exe = control_loop(build(build_dir / "build"))
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model

    rows = []
    with tempfile.TemporaryDirectory() as d:
        b = export(trace_model("zoo:digits-cnn"), ExportConfig(evaluate=False), Path(d) / "digits")
        x = np.asarray(b.samples()[:1], np.float32)
        np.save(Path(d) / "x.npy", x)
        devices = ("python", "cpp") if loop_exe else ("python",)
        cases = [(dv, s, h) for dv in devices for s in ("both running", "one of two frozen") for h in (None, args.hedge_ms)]
        with Mosquitto() as broker:
            for device, state, hedge in cases:
                # fresh workers per run: a frozen worker stops getting its turn once the broker's
                # in-flight window for it is full (20 unacknowledged messages), so a second run
                # on the same frozen worker would measure a group that has routed around it
                workers = [procs.start_server(b.path, broker.url, Path(d) / f"serve-{len(rows)}-{i}.log")
                           for i in range(2)]
                try:
                    _both_online(b, broker.url, x)
                    if state == "one of two frozen":
                        workers[1].send_signal(signal.SIGSTOP)
                    if device == "python":
                        run = _run(b, broker.url, x, args.requests, args.deadline_ms, hedge)
                    else:
                        run = _run_cpp(loop_exe, b, broker.url, Path(d) / "x.npy", args.requests, args.deadline_ms,
                                       hedge)
                    r = {"device": device, "workers": state, **run}
                finally:
                    workers[1].send_signal(signal.SIGCONT)
                    for w in workers:
                        procs.stop(w)
                rows.append(r)
                print(json.dumps(r), flush=True)
    meta = {"machine": platform.machine(), "cpu": cpu_name(), "deadline_ms": args.deadline_ms,
            "requests": args.requests,
            "model": "zoo:digits-cnn (default cut; python: onnxruntime front, cpp: native front)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print("| device | workers | hedge_ms | missed deadline | sent twice | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['workers']} | {r['hedge_ms'] or 'off'} | {r['missed_deadline']} / {r['requests']} | "
              f"{r['sent_twice']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
