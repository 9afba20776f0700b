"""Per-request latency of the C++-only device (cpp/examples: edgerun_device) vs the Python Device on
the same bundle, the same Mosquitto and the same `edgerun serve` worker, in one run.

    python benchmarks/bench_cpp_device.py --out benchmarks/results/xeon/cpp_device.json

Each device runs in its own process (as on a robot) and times its own requests, one after another,
batch 1, a sample of the bundle's: total (front half + encode + round trip + decode), the front half,
and the round trip (publish -> reply; the server's compute inside it). Rounds alternate C++ / Python so
that a burst of load on this shared machine hits both alike; medians over all rounds. Also the peak
resident memory of each device process (VmHWM). The C++ device is built like the tests build it
(tests/integration/cpp_device_build.py: the pip build's core + libmosquitto).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

PY_DEVICE = r"""
import json, sys, time
import numpy as np
from edgerun.device import Device
bundle, url, x_path, n, warmup = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
x = np.load(x_path)
total, front, rtt = [], [], []
with Device(bundle, broker=url, timeout_ms=20000) as dev:
    for i in range(warmup + n):
        r = dev.infer(x)
        if i >= warmup:
            t = r.timings_ms
            total.append(t["total"]); front.append(t["device"]); rtt.append(t["network"] + t["server"])
print(json.dumps({"total": total, "front": front, "round_trip": rtt}))
"""


def run_with_rss(cmd: list[str]) -> tuple[str, float]:
    """Run ``cmd``; return its stdout and its peak resident memory in MiB: the kernel's high-water mark
    of the program's own image (VmHWM, read every 10 ms while it runs; getrusage would count the pages of this
    benchmark process the child had before its exec)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def watch() -> None:
        while p.poll() is None:
            try:
                for ln in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if ln.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(ln.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.01)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    out, err = p.communicate(timeout=600)
    t.join()
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}):\n{err[-3000:]}")
    return out, peak[0] / 1024.0


def pct(v: list[float]) -> dict:
    return {f"p{q}": round(float(np.percentile(v, q)), 4) for q in (50, 90, 99)} | {"mean": round(float(np.mean(v)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="timed requests per device per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--model", default="zoo:digits-cnn")
    ap.add_argument("--cut", default=None)
    ap.add_argument("--machine", default=None, help="label of this machine (default: lscpu's model name)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--exe", type=Path, default=None,
                    help="an edgerun_device built elsewhere (another commit's, to compare) instead of this tree's")
    args = ap.parse_args()

    from cpp_device_build import build, missing_tools
    from edgerun import procs
    from edgerun.broker import Mosquitto
    from edgerun.device import Device
    from edgerun.exporters import ExportConfig, export

    why = missing_tools()
    if why:
        raise SystemExit(f"cannot build the C++ device: {why}")
    work = Path(tempfile.mkdtemp(prefix="bench_cpp_device_"))
    exe = args.exe.resolve() if args.exe else build(work / "build")
    bundle = export(args.model, ExportConfig(cut=args.cut, evaluate=False), work / "bundle")
    x = np.ascontiguousarray(bundle.samples()[:1], dtype=np.float32)
    np.save(work / "x.npy", x)
    res: dict = {"cpp": {"total": [], "front": [], "round_trip": []},
                 "python": {"total": [], "front": [], "round_trip": []}}
    rss: dict = {"cpp": [], "python": []}
    with Mosquitto() as broker:
        server = procs.start_server(bundle.path, broker.url, work / "serve.log", "--threads", "1")
        try:
            with Device(bundle, broker=broker.url, timeout_ms=20000) as dev:
                procs.first_server_answer(dev, x, server, work / "serve.log")
            for _ in range(args.rounds):
                out, mib = run_with_rss([str(exe), str(bundle.path), "--broker", broker.url, "--input",
                                         str(work / "x.npy"), "--repeat", str(args.requests), "--warmup",
                                         str(args.warmup), "--deadline-ms", "20000"])
                rec = json.loads(out)
                res["cpp"]["total"] += rec["repeat"]["each_total_ms"]
                rss["cpp"].append(mib)
                # The stages of the C++ run come as summaries; keep its per-round medians.
                res["cpp"]["front"].append(rec["repeat"]["front_ms"]["p50"])
                res["cpp"]["round_trip"].append(rec["repeat"]["round_trip_ms"]["p50"])
                out, mib = run_with_rss([sys.executable, "-c", PY_DEVICE, str(bundle.path), broker.url,
                                         str(work / "x.npy"), str(args.requests), str(args.warmup)])
                rec = json.loads(out)
                for k in ("total", "front", "round_trip"):
                    res["python"][k] += rec[k]
                rss["python"].append(mib)
        finally:
            procs.stop(server)
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    table = {
        "cpp": {"total_ms": pct(res["cpp"]["total"]), "front_ms_p50": round(float(np.median(res["cpp"]["front"])), 4),
                "round_trip_ms_p50": round(float(np.median(res["cpp"]["round_trip"])), 4),
                "peak_rss_mib": round(max(rss["cpp"]), 1)},
        "python": {"total_ms": pct(res["python"]["total"]),
                   "front_ms_p50": round(float(np.median(res["python"]["front"])), 4),
                   "round_trip_ms_p50": round(float(np.median(res["python"]["round_trip"])), 4),
                   "peak_rss_mib": round(max(rss["python"]), 1)},
    }
    ratio = table["python"]["total_ms"]["p50"] / table["cpp"]["total_ms"]["p50"]
    result = {"machine": args.machine or f"{cpu}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
              "model": args.model, "cut": bundle.cut_label, "bytes_per_request": int(x.nbytes),
              "requests_per_round": args.requests, "rounds": args.rounds, "warmup": args.warmup,
              "server": "one `edgerun serve --threads 1` worker, local Mosquitto, loopback",
              "devices": table, "python_over_cpp_p50_total": round(ratio, 3)}
    print(f"{args.model} (cut {bundle.cut_label}), batch 1, {args.rounds} x {args.requests} requests each, "
          f"{result['machine']}")
    print(f"{'device':8} {'p50 total':>10} {'p90':>8} {'p99':>8} {'front p50':>10} {'round trip p50':>15} {'peak RSS':>9}")
    for k, v in table.items():
        t = v["total_ms"]
        print(f"{k:8} {t['p50']:>9.3f}  {t['p90']:>7.3f}  {t['p99']:>7.3f}  {v['front_ms_p50']:>9.4f}  "
              f"{v['round_trip_ms_p50']:>14.3f}  {v['peak_rss_mib']:>6.1f} MiB")
    print(f"Python / C++ p50 total: {ratio:.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
