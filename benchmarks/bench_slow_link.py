"""A server slower than the deadline: how often a device with exits waits out its deadline.

The digits CNN with exits (`--exits auto`, budget "off": no exit is confident, each tick asks the server
unless it predicts a miss) runs a control loop through the userspace link emulator (each way `--delay-ms`,
so the round trip is over `--deadline-ms`): the server is up, every reply comes late. A device that learns
the round trip from the late replies answers from its deepest exit at once ("predicted round trip"), and
sends a request anyway once a second to measure again; one that learns only from replies in time takes
each miss for an outage and waits out a whole deadline once a second. Per device: ticks that waited out
the deadline, ticks answered on a prediction (and how many of those still sent their request), latency
p50 / p99, bytes sent per tick. The Python Device (onnxruntime front, in this process) and the C++ control
loop (`edgerun_control_loop`, built here, or the executables given with `--exe`, e.g. of two commits).

Run:  python benchmarks/bench_slow_link.py --out benchmarks/results/xeon/slow_link.json
      python benchmarks/bench_slow_link.py --exe old/edgerun_control_loop --exe new/edgerun_control_loop
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgerun import procs
from edgerun.broker import Mosquitto
from edgerun.device import Device
from edgerun.linkemu import LinkConfig, LinkEmulator
from edgerun.profiles import cpu_name

WAITED = "deadline: no reply from a server"
PREDICTED = "deadline: predicted round trip"
PROBE = "(sent anyway, to measure the round trip again)"


def _counts(reasons: list[str]) -> dict:
    return {"ticks": len(reasons), "waited_out_deadline": sum(r.startswith(WAITED) for r in reasons),
            "predicted_miss": sum(r.startswith(PREDICTED) for r in reasons),
            "predicted_and_sent": sum(r.startswith(PREDICTED) and r.endswith(PROBE) for r in reasons),
            "suspect": sum(r.startswith("server unreachable:") for r in reasons),
            "by_server": sum(r == "server replied" for r in reasons)}


def _python(bundle, url: str, x: np.ndarray, ticks: int, rate: float, deadline_ms: float) -> dict:
    reasons, totals, sent = [], [], 0
    with Device(bundle, broker=url, budget="off") as dev:
        nxt = time.perf_counter()
        for _ in range(ticks):
            r = dev.infer(x, deadline_ms=deadline_ms)
            reasons.append(r.reason)
            totals.append(r.timings_ms["total"])
            sent += r.bytes_sent
            nxt += 1.0 / rate
            time.sleep(max(nxt - time.perf_counter(), 0.0))
    return {**_counts(reasons), "total_ms": {"p50": float(np.percentile(totals, 50)),
                                             "p99": float(np.percentile(totals, 99))},
            "bytes_sent_mean": sent / ticks}


def _cpp(exe: Path, bundle, url: str, x_path: Path, ticks: int, rate: float, deadline_ms: float) -> dict:
    r = subprocess.run([str(exe), str(bundle.path), "--broker", url, "--input", str(x_path), "--ticks", str(ticks),
                        "--rate", str(rate), "--deadline-ms", str(deadline_ms), "--budget", "off", "--each"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"{exe} exited {r.returncode}: {r.stderr[-2000:]}")
    *lines, summary = [json.loads(ln) for ln in r.stdout.splitlines()]
    return {**_counts([t["reason"] for t in lines]),
            "total_ms": {k: summary["total_ms"][k] for k in ("p50", "p99")},
            "bytes_sent_mean": summary["bytes_sent_mean"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=60)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--deadline-ms", type=float, default=30.0)
    ap.add_argument("--delay-ms", type=float, default=40.0, help="one way: the round trip is twice this")
    ap.add_argument("--exe", type=Path, action="append", default=[],
                    help="an edgerun_control_loop to run (repeatable); default: build this checkout's")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    exes = list(args.exe)
    if not exes:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
        from cpp_device_build import build, control_loop, missing_tools

        if missing_tools():
            raise SystemExit(f"cannot build the C++ device: {missing_tools()}")
        exes = [control_loop(build(Path(tempfile.mkdtemp(prefix="edgerun-bench-slow-link-")) / "build"))]
    from edgerun.exporters.pipeline import ExportConfig, export

    rows = []
    with tempfile.TemporaryDirectory() as d:
        b = export("zoo:digits-cnn", ExportConfig(cut="block2", exits="auto", evaluate=False), Path(d) / "digits")
        x = np.asarray(b.samples()[:1], np.float32)
        np.save(Path(d) / "x.npy", x)
        with Mosquitto() as broker:
            server = procs.start_server(b.path, broker.url, Path(d) / "serve.log")
            try:
                with Device(b, broker=broker.url, budget="off") as dev:  # the server is online and answers
                    dev.infer(x, deadline_ms=60000)
                runs = [("python", None)] + [("cpp", exe) for exe in exes]
                for device, exe in runs:  # a fresh link each: nothing learnt carries over
                    with LinkEmulator(("127.0.0.1", broker.port), LinkConfig(delay_ms=args.delay_ms)) as emu:
                        if exe is None:
                            run = _python(b, emu.url, x, args.ticks, args.rate, args.deadline_ms)
                        else:
                            run = _cpp(exe, b, emu.url, Path(d) / "x.npy", args.ticks, args.rate, args.deadline_ms)
                    rows.append({"device": device, "exe": str(exe) if exe else None, **run})
                    print(json.dumps(rows[-1]), flush=True)
            finally:
                procs.stop(server)
    meta = {"machine": platform.machine(), "cpu": cpu_name(), "ticks": args.ticks, "rate_hz": args.rate,
            "deadline_ms": args.deadline_ms, "link_delay_ms_each_way": args.delay_ms,
            "model": "zoo:digits-cnn block2, --exits auto, budget off"}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
