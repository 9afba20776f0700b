"""Vision-transformer fronts, native vs onnxruntime: a row Softmax alone and two ViT fronts.

The row Softmax is a ViT-S/16 block's attention scores (6 x 197 rows of 197); the fronts are the
gauntlet's small torchvision ViT and timm-style ViT-S/16 (``bench_gauntlet.py``: built, exported at the
default cut). Each line: native and onnxruntime median ms at batch 1, 1 thread, one interleaved loop
(order alternating), and the front's Softmax layers (``profile_layers``). For an A/B of two builds, run
it once per build's ``_core`` (copied in turn over the installed one), alternating.

Run:  python benchmarks/bench_vit_fronts.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gauntlet as gauntlet  # noqa: E402 - the gauntlet's models and its interleaved timer


def softmax_rows(d: Path, rounds: int) -> dict:
    import onnx
    from onnx import TensorProto, helper

    from edgerun.engine import NativeEngine, OrtEngine
    from edgerun.exporters import erg

    shape = [6, 197, 197]
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *shape])])
    m = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    onnx.save(m, d / "softmax.onnx")
    erg.write_erg(m, d / "softmax.erg")
    x = (np.random.default_rng(0).standard_normal((1, *shape)) * 3).astype(np.float32)
    nat, ort = NativeEngine(d / "softmax.erg", max_batch=1), OrtEngine(d / "softmax.onnx")
    n, o = gauntlet.time_fronts(nat, ort, x, rounds)
    return {"what": "softmax 6x197x197", "native_ms": n, "ort_ms": o,
            "max_abs": float(np.abs(nat.run(x)["y"] - ort.run(x)["y"]).max())}


def front(name: str, d: Path, rounds: int) -> dict:
    import torch

    from edgerun.engine import NativeEngine, OrtEngine
    from edgerun.exporters.models import SourceModel
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model

    side = gauntlet.ARCHS[name]
    traced = trace_model(SourceModel(name, gauntlet.build(name), torch.randn(1, 3, side, side)))
    b = export(traced, ExportConfig(evaluate=False, calib_samples=4), d / name)
    x = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
    nat, ort = NativeEngine(b.file("front.erg"), max_batch=1), OrtEngine(b.file("front.onnx"))
    n, o = gauntlet.time_fronts(nat, ort, x, rounds)
    soft = sum(s["us"] for s in nat.profile_layers(x, runs=20) if s["op"] == "Softmax")
    diff = max(float(np.abs(v - ort.run(x)[k]).max()) for k, v in nat.run(x).items())
    return {"what": name, "cut": b.cut_label, "native_ms": n, "ort_ms": o, "max_abs": diff, "softmax_us": soft}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds per engine")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        rows = [softmax_rows(d, args.rounds)] + [front(n, d, args.rounds) for n in ("vit_tiny", "timm_vit_s16")]
    for r in rows:
        r["ratio"] = r["native_ms"] / r["ort_ms"]
        print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
