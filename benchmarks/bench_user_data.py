"""What `--data` changes for a model file: each lossy step calibrated on the user's own samples vs on
the example plus noise (what a model file gets without --data), both measured on the same held-out
real samples.

The model is benchmarks/models/digits_user.py (a small CNN trained on the first 1000 of scikit-learn's
digits, which are real scans); the --data file holds the other 797 (labels included). For each
configuration two bundles are exported, one per calibration source, and both are evaluated on the
--data file's held-out part (the samples neither calibration saw) as deployed: the native front, the
codec's C++ round trip, the back half at its precision.

    python benchmarks/bench_user_data.py --out benchmarks/results/xeon/user_data.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODEL = HERE / "models" / "digits_user.py"
CONFIGS = {  # name -> ExportConfig fields
    "int8 front": dict(front_precision="int8"),
    "int4 front": dict(front_precision="int4"),
    "tsq codec": dict(codec="tsq"),
    "int8 front + tsq": dict(front_precision="int8", codec="tsq"),
    "int8 back": dict(back_precision="int8"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cut", default="features.4", help="cut label (default: after the second conv block)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = ap.parse_args()

    from edgerun.exporters import stages
    from edgerun.exporters.evaluate import run_split, run_whole
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model

    tmp = Path(tempfile.mkdtemp(prefix="edgerun-bench-data-"))
    data = tmp / "digits_heldout.npz"
    subprocess.run([sys.executable, str(MODEL), str(data)], check=True)
    traced = trace_model(f"{MODEL}:make", data=data)
    x, y = traced.source.zoo.eval_data()
    rows = []
    for name, fields in CONFIGS.items():
        row = {"config": name}
        for source in ("data", "noise"):
            cfg = ExportConfig(cut=args.cut, data=data if source == "data" else None, **fields)
            spec = traced if source == "data" else f"{MODEL}:make"
            b = export(spec, cfg, tmp / f"{name}-{source}".replace(" ", "_").replace("+", ""))
            codec = b.manifest["codec"]
            roundtrip = stages.codec_roundtrip(codec) if codec["id"] != "none" else None
            whole = next(iter(run_whole(b.path / "whole.onnx", x).values()))
            parts, stats = run_split(b.path, x, traced.source.input_names, native=b.native_ok, codec=roundtrip)
            row[f"top1_{source}"] = float(np.mean(parts[0].argmax(-1) == y))
            row["top1_whole"] = float(np.mean(whole.argmax(-1) == y))
            row[f"agree_{source}"] = float(np.mean(parts[0].argmax(-1) == whole.argmax(-1)))
            if roundtrip is not None:
                row[f"bytes_{source}"] = round(stats["codec_bytes_mean"], 1)
            rep = json.loads((b.path / "report.json").read_text())  # what the export told the user
            row[f"reported_{source}"] = {k: rep[k] for k in ("metric", "metric_whole_fp32", "metric_split", "n_eval")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"model": "benchmarks/models/digits_user.py", "cut": args.cut, "n_heldout": int(len(y)),
              "n_calib_data": traced.source.zoo.n_calib, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'config':18} {'whole':>7} {'--data':>7} {'noise':>7}  (top-1 on {len(y)} held-out real digits)"
          "   | what each export reported")
    for r in rows:
        extra = f"  bytes {r['bytes_data']:.0f} vs {r['bytes_noise']:.0f}" if "bytes_data" in r else ""
        said = "; ".join(f"{src}: {r[f'reported_{src}']['metric']} {r[f'reported_{src}']['metric_split']:.4f}"
                         for src in ("data", "noise"))
        print(f"{r['config']:18} {r['top1_whole']:7.4f} {r['top1_data']:7.4f} {r['top1_noise']:7.4f}   | {said}{extra}")


if __name__ == "__main__":
    main()
