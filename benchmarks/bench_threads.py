"""Latency and CPU per request of a front half at a control loop's request rate.

A device answers requests with idle time between them (a robot's loop: 20 ms at 50 Hz).
An engine whose worker threads keep spinning after a run burns that idle time as CPU the
rest of the robot needs. For EfficientNet-Lite0's front half (blocks.7, fp32 and int8) on
the native engine and on onnxruntime (fp32, and its static QDQ int8 model calibrated on the
same 64 images: the int8 peer), at 1 and 2 threads, with 0 / 5 / 20 ms idle
before each request: p50 and p95 latency, and the process CPU time per request (all
threads, ``getrusage``).

Every configuration runs in a fresh process, one after the other (no other runtime's
spinning threads share the cores), and the whole set is repeated ``--rounds`` times; the
table gives, per configuration, the median over rounds of each figure.

``--core PATH`` runs the native rows on another build of ``edgerun._core`` (A/B of two
builds in one run, e.g. the OpenMP build before the engine's own pool).

``--busy 0,1`` also runs every configuration with that many other processes burning a core
each (a busy loop) for the whole measurement: the rest of a robot's software on the same
small CPU. 0 alone (the default) is the quiet machine.

Run:  python benchmarks/bench_threads.py [--runs 100] [--rounds 3] [--busy 0,1] [--out benchmarks/results/threads.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from edgerun.procs import die_with_parent

GAPS_MS = (0.0, 5.0, 20.0)
THREADS = (1, 2)
CUT = "blocks.7"
WARMUP = 10

CHILD = r"""
import importlib.util, json, resource, statistics, sys, time
import numpy as np
cfg = json.loads(sys.argv[1])
x = np.load(cfg["x"])
if cfg["engine"] == "ort":
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = cfg["threads"]; so.log_severity_level = 3
    s = ort.InferenceSession(cfg["onnx"], so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    run = lambda: s.run(None, {name: x})
else:
    if cfg.get("core"):
        spec = importlib.util.spec_from_file_location("_core", cfg["core"])
        core = importlib.util.module_from_spec(spec); spec.loader.exec_module(core)
    else:
        from edgerun import _core as core
    e = core.Engine(cfg["erg"], 1, cfg["threads"])
    run = lambda: e.run([x], 1)
for _ in range(cfg["warmup"]):
    run()
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
ts, c0 = [], cpu()
for _ in range(cfg["runs"]):
    if cfg["gap_ms"]:
        time.sleep(cfg["gap_ms"] / 1e3)
    t0 = time.perf_counter(); run(); ts.append((time.perf_counter() - t0) * 1e3)
c = (cpu() - c0) * 1e3 / cfg["runs"]
ts.sort()
print(json.dumps({"p50": statistics.median(ts), "p95": ts[int(0.95 * (len(ts) - 1))], "cpu_ms": c}))
"""


def build_fronts(tmp: Path) -> dict[str, str]:
    import numpy as np
    import onnx

    from edgerun.exporters import zoo
    from edgerun.exporters.cuts import resolve_cut
    from edgerun.exporters.erg import write_erg
    from edgerun.exporters.pipeline import trace_model
    from edgerun.exporters.quantize_front import FrontPrecisionConfig, plan_front_precision
    from edgerun.exporters.split import split

    spec = "zoo:efficientnet-lite0"
    traced, z = trace_model(spec), zoo.load(spec)
    front, _ = split(traced.model, resolve_cut(traced.cuts, CUT))
    onnx.save(front, tmp / "front.onnx")
    write_erg(front, tmp / "fp32.erg")
    plan = plan_front_precision(front, z.calib_data(64).astype(np.float32), FrontPrecisionConfig("int8"))
    write_erg(front, tmp / "int8.erg", precisions=plan.precisions, rounded=plan.rounded, fp32_acts=plan.fp32_acts)
    np.save(tmp / "x.npy", z.eval_data()[0][:1].astype(np.float32))
    from bench_quant import _ort_quantized  # the same QDQ model bench_quant times

    qdq = _ort_quantized(tmp / "front.onnx", z.calib_data(64).astype(np.float32), tmp)["ort_static_qdq"]
    return {"onnx": str(tmp / "front.onnx"), "qdq": str(qdq), "fp32": str(tmp / "fp32.erg"),
            "int8": str(tmp / "int8.erg"), "x": str(tmp / "x.npy")}


def configs(files: dict[str, str], core: str | None) -> list[dict]:
    out = []
    for threads in THREADS:
        for gap in GAPS_MS:
            out.append({"name": "ort fp32", "engine": "ort", "onnx": files["onnx"], "threads": threads, "gap_ms": gap})
            out.append({"name": "ort int8 (QDQ)", "engine": "ort", "onnx": files["qdq"], "threads": threads,
                        "gap_ms": gap})
            for prec in ("fp32", "int8"):
                out.append({"name": f"native {prec}", "engine": "native", "erg": files[prec], "threads": threads,
                            "gap_ms": gap})
                if core:
                    out.append({"name": f"native {prec} (--core)", "engine": "native", "erg": files[prec],
                                "threads": threads, "gap_ms": gap, "core": core})
    return out


BUSY_LOOP = "while True: pass"


def run_child(child: dict, busy: int) -> dict:
    """One configuration in a fresh process, with `busy` core-burning processes beside it."""
    hogs = [subprocess.Popen(die_with_parent([sys.executable, "-c", BUSY_LOOP])) for _ in range(busy)]
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(child)], capture_output=True, text=True,
                           check=True)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--core", help="another build's _core .so for the native rows (A/B)")
    ap.add_argument("--busy", default="0", help="comma-separated counts of core-burning processes beside it")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/threads.json"))
    args = ap.parse_args()
    busies = [int(b) for b in args.busy.split(",")]
    with tempfile.TemporaryDirectory(prefix="edgerun-threads-") as d:
        files = build_fronts(Path(d))
        cfgs = configs(files, args.core)
        samples: dict[tuple, list[dict]] = {}
        for r in range(args.rounds):
            for busy in busies:
                for c in cfgs:
                    child = {**c, "x": files["x"], "runs": args.runs, "warmup": WARMUP}
                    key = (c["name"], c["threads"], c["gap_ms"], busy)
                    samples.setdefault(key, []).append(run_child(child, busy))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    rows = [{"config": k[0], "threads": k[1], "gap_ms": k[2], "busy_procs": k[3],
             **{f: round(statistics.median(s[f] for s in v), 3) for f in ("p50", "p95", "cpu_ms")}}
            for k, v in samples.items()]
    from edgerun.profiles import cpu_name

    rep = {"host": {"machine": platform.machine(), "cpu": cpu_name()}, "cut": CUT, "runs": args.runs,
           "rounds": args.rounds, "statistic": "median over rounds of each process's p50 / p95 / CPU ms per request",
           "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rep, indent=1) + "\n")
    print(f"{'config':24} {'thr':>3} {'gap ms':>6} {'busy':>4} {'p50 ms':>7} {'p95 ms':>7} {'CPU ms/req':>10}")
    for r in sorted(rows, key=lambda r: (r["busy_procs"], r["threads"], r["gap_ms"], r["config"])):
        print(f"{r['config']:24} {r['threads']:3d} {r['gap_ms']:6.0f} {r['busy_procs']:4d} {r['p50']:7.2f} "
              f"{r['p95']:7.2f} {r['cpu_ms']:10.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
