"""Native engine vs onnxruntime on the user-model shapes that the engine's newer ops cover
(the models of tests/runtime/test_engine_ops.py, defined in tests/runtime/_models.py: a detector-style conv net with LeakyReLU, GELU and
nearest upsampling; an IMU Conv1d net; a ShuffleNet-style net with Transpose / Slice / Softmax;
the other activations; a two-block vision transformer with LayerNorm and attention; GroupNorm and
InstanceNorm; a segmentation head with bilinear resizing).

Both engines run the same ONNX / .erg at batch 1 and the same thread count, timed in one
interleaved loop (each round calls both, order alternating), median of ``--runs`` rounds after
20 untimed ones. The new ops' kernels are plain portable C++ (no SIMD of their own), so this is
what a user's model that leans on them can expect, not a tuned figure.

Run:  python benchmarks/bench_engine_ops.py --out benchmarks/results/zen5/engine_ops.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgerun.engine import NativeEngine, OrtEngine
from edgerun.profiles import cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "runtime"))
import _models as models  # noqa: E402 - tests/runtime/_models.py: the test models, one definition

import torch  # noqa: E402

CASES = {"detector": (models.Detector, (3, 96, 96)), "imu": (models.ImuNet, (6, 400)),
         "shuffle": (models.Shuffle, (8, 48, 48)), "activations": (models.Activations, (3, 64, 64)),
         "vit": (models.TinyViT, (3, 16, 16)), "norms": (models.Norms, (3, 64, 64)),
         "seg": (models.Seg, (3, 96, 96)), "clsvit": (models.ClsViT, (3, 16, 16)),
         "sumpool": (models.SumPool, (3, 64, 64))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/engine_ops.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, (cls, shape) in CASES.items():
            ex = torch.randn(2, *shape)
            models.perturbed_export(cls(), ex, Path(d), name)
            nat = NativeEngine(Path(d) / f"{name}.erg", max_batch=1, threads=args.threads)
            ort = OrtEngine(Path(d) / f"{name}.onnx", threads=args.threads)
            x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
            times = {"native": [], "ort": []}
            for r in range(args.runs + 20):
                for k, eng in (("native", nat), ("ort", ort)) if r % 2 == 0 else (("ort", ort), ("native", nat)):
                    t0 = time.perf_counter()
                    eng.run(x)
                    if r >= 20:
                        times[k].append((time.perf_counter() - t0) * 1e3)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"model": name, "input": [1, *shape], "native_ms": med["native"], "ort_ms": med["ort"],
                         "ratio_native_over_ort": med["native"] / med["ort"]})
            print(f"| {name} | {list(shape)} | {med['native']:.3f} | {med['ort']:.3f} | "
                  f"{med['native'] / med['ort']:.2f} |", flush=True)
    meta = {"machine": platform.machine(), "cpu": cpu_name(), "threads": args.threads, "runs": args.runs,
            "batch": 1, "statistic": "median of an interleaved loop"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
