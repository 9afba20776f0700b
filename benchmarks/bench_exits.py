"""Early exits on real test data: accuracy vs average front compute and vs share answered locally.

Exports digits-cnn cut at ``block2`` (the front half is ~all of the model, so exits can save
front compute) with ``--exits auto``, runs the exit segments as the device does (native engine
when available) on the 360 held-out test digits, and writes a table, JSON and a PNG.

    python benchmarks/bench_exits.py [--cut block2] [--exits auto] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:digits-cnn")
    ap.add_argument("--cut", default="block2")
    ap.add_argument("--exits", default="auto")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    from edgerun.bundle import Bundle
    from edgerun.exits import Segments
    from edgerun.exporters import ExportConfig, export
    from edgerun.exporters.exits_calib import plot
    from edgerun.report import table

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-exits-"))
    t0 = time.perf_counter()
    b: Bundle = export(args.model, ExportConfig(cut=args.cut, exits=args.exits, evaluate=False), work / "bundle")
    export_s = time.perf_counter() - t0
    rep = json.loads(b.file("report.json").read_text())["exits"]
    engine = rep["eval_engine"]

    # Per-segment latency on the device engine, batch 1 (median of repeats).
    seg = Segments(b, engine)
    x = b.samples()[:1]
    seg_ms, cur = [], x
    for i in range(len(seg.points)):
        ts = []
        for _ in range(200):
            t = time.perf_counter()
            nxt, _ = seg.run_one(i, cur)
            ts.append((time.perf_counter() - t) * 1e3)
        seg_ms.append(float(np.median(ts)))
        cur = nxt

    rows = [["no exits (front + server)", 1.0, 0.0, rep["metric_no_exits"]]]
    for i, (label, m) in enumerate(zip(rep["points"], rep["metric_per_exit"])):
        rows.append([f"always exit {i} ({label})", rep["compute_fraction"][i], 1.0, m])
    for name, r in rep["budgets"].items():
        rows.append([f"budget {name}", r["avg_front_compute_fraction"], r["local_fraction"], r["metric"]])
    print(f"{args.model} cut={b.cut_label} exits at {rep['points']} ({engine} engine), "
          f"{rep['n_test']} test samples, criterion {rep['criterion']}\n")
    print(table(["policy", "avg front compute", "answered locally", rep["metric"]],
                [[r[0], f"{r[1]:.3f}", f"{r[2]:.3f}", f"{r[3]:.4f}"] for r in rows]))
    print("\nsegment latency, batch 1 (median ms): " + ", ".join(f"{p}: {v:.3f}" for p, v in zip(rep["points"], seg_ms)))

    png = args.out / "exits.png"
    (args.out / "exits_bundle.png").write_bytes(b.file("exits.png").read_bytes())
    summary = {"model": args.model, "cut": b.cut_label, "engine": engine, "export_seconds": round(export_s, 1),
               "segment_ms_batch1": dict(zip(rep["points"], seg_ms)), "rows": [
                   {"policy": r[0], "avg_front_compute_fraction": r[1], "local_fraction": r[2], "metric": r[3]}
                   for r in rows], "report": rep}
    (args.out / "exits.json").write_text(json.dumps(summary, indent=2) + "\n")
    marks = {name: {"avg_compute": r["avg_front_compute_fraction"], "local_fraction": r["local_fraction"],
                    "value": r["metric"]} for name, r in rep["budgets"].items()}
    curve = [{"avg_compute": r[1], "local_fraction": r[2], "value": r[3]} for r in rows[:len(rep["points"]) + 1]]
    plot(curve, marks, png, metric=rep["metric"], title=f"{args.model} at {b.cut_label}: fixed exits vs budgets")
    print(f"\nwrote {args.out / 'exits.json'}, {png} and {args.out / 'exits_bundle.png'} (threshold sweep)")


if __name__ == "__main__":
    main()
