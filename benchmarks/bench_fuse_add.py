"""Residual Adds fused into the conv epilogue: A/B on the same build (EDGERUN_NO_FUSE_ADD=1 vs not).

Fronts (random weights for torchvision's, the zoo's EfficientNet-Lite0 weights): ResNet-18 at
224x224 (``--size``) up to layer2 / layer3, MobileNetV2 at 224x224 up to features.6 / features.13,
EfficientNet-Lite0 up to blocks.3 / blocks.7. Each front is loaded twice in one process, fused
and with EDGERUN_NO_FUSE_ADD=1 (read when an engine loads), beside onnxruntime on the same
front; the three are timed in alternating blocks (bench_engine.interleaved_ms: medians, the
order rotating, pauses between blocks), at batch 1. Also printed: the outputs of the two
native loads bit-identical or not, the Adds fused, each load's arena bytes.

    python benchmarks/bench_fuse_add.py --runs 60 --threads 1 2 --out benchmarks/results/xeon/fuse_add/fronts.json
    python benchmarks/bench_fuse_add.py --threads 0 --save-fronts /tmp/fronts   # the fronts for ab_builds.py
    python benchmarks/bench_fuse_add.py --blocks --runs 300 --out benchmarks/results/xeon/fuse_add/blocks.json

``--blocks``: single residual blocks (BLOCKS: ResNet basic blocks, MobileNetV2 inverted residuals)
at their ResNet-18 / MobileNetV2 224x224 sizes instead of the fronts (``--size`` is ignored there).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import cut_tensor, interleaved_ms  # noqa: E402

from edgerun.engine import NativeEngine, OrtEngine  # noqa: E402
from edgerun.exporters import erg  # noqa: E402
from edgerun.profiles import cpu_name  # noqa: E402

FRONTS = [("resnet18", "layer2"), ("resnet18", "layer3"), ("mobilenet_v2", "features.6"),
          ("mobilenet_v2", "features.13"), ("zoo:efficientnet-lite0", "blocks.3"), ("zoo:efficientnet-lite0", "blocks.7")]


def traced_model(name: str, side: int):
    import torch

    from edgerun.exporters.models import SourceModel
    from edgerun.exporters.pipeline import trace_model

    if name.startswith("zoo:"):
        return trace_model(name)
    from bench_gauntlet import build

    return trace_model(SourceModel(name, build(name), torch.randn(1, 3, side, side)))


def block_model(kind: str, c: int, side: int) -> onnx.ModelProto:
    """One residual block, random weights: "basic" (ResNet: 3x3 + Relu, 3x3, + x, Relu) or
    "inverted" (1x1 expand x6 + ReLU6, 3x3 depthwise + ReLU6, 1x1 project, + x)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(c)
    inits, nodes = {"lo": np.float32(0), "hi": np.float32(6)}, []

    def conv(x, cin, cout, k, group=1):
        name = f"c{len(nodes)}"
        inits[name + "_w"] = rng.standard_normal((cout, cin // group, k, k)).astype(np.float32) / np.sqrt(cin * k * k / group)
        inits[name + "_b"] = rng.standard_normal(cout).astype(np.float32) * 0.1
        nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], kernel_shape=[k, k],
                                      pads=[k // 2] * 4, group=group))
        return name

    def act(op, x):
        y = f"a{len(nodes)}"
        nodes.append(helper.make_node(op, [x] + (["lo", "hi"] if op == "Clip" else []), [y]))
        return y

    if kind == "basic":
        y = conv(act("Relu", conv("x", c, c, 3)), c, c, 3)
        nodes.append(helper.make_node("Add", [y, "x"], ["s"]))
        out = act("Relu", "s")
    else:
        e = act("Clip", conv("x", c, 6 * c, 1))
        y = conv(act("Clip", conv(e, 6 * c, 6 * c, 3, group=6 * c)), 6 * c, c, 1)
        nodes.append(helper.make_node("Add", [y, "x"], ["s"]))
        out = "s"
    g = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c, side, side])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in inits.items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8))


# (kind, channels) -> plane side: ResNet-18's stages at 224x224 (and layer1 at 64x64), MobileNetV2's.
BLOCK_SIDES = {("basic", 64): 56, ("basic", 128): 28, ("basic", 256): 14, ("basic", 32): 16,
               ("inverted", 24): 56, ("inverted", 32): 28, ("inverted", 96): 14, ("inverted", 160): 7}
BLOCKS = list(BLOCK_SIDES)


def load(path: Path, threads: int, fuse: bool) -> NativeEngine:
    if fuse:
        os.environ.pop("EDGERUN_NO_FUSE_ADD", None)
    else:
        os.environ["EDGERUN_NO_FUSE_ADD"] = "1"
    try:
        return NativeEngine(path, max_batch=1, threads=threads)
    finally:
        os.environ.pop("EDGERUN_NO_FUSE_ADD", None)


def digest(outs: dict) -> str:
    return hashlib.sha1(b"".join(v.tobytes() for v in outs.values())).hexdigest()[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--only", default="", help="comma-separated model names")
    ap.add_argument("--size", type=int, default=224, help="input side of the torchvision models")
    ap.add_argument("--blocks", action="store_true", help="single residual blocks (BLOCKS) instead of the fronts")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--save-fronts", type=Path, default=None,
                    help="also keep the .erg fronts here (for ab_builds.py), untimed with --threads 0")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        traced_by: dict = {}
        for name, scope in FRONTS if not args.blocks else BLOCKS:
            if args.blocks:
                f_onnx, f_erg = tmp / "block.onnx", tmp / "block.erg"
                side = BLOCK_SIDES[(name, scope)]
                model = block_model(name, scope, side)
                onnx.save(model, f_onnx)
                erg.write_erg(model, f_erg)
                x = np.random.default_rng(0).standard_normal((1, scope, side, side)).astype(np.float32)
                name, scope = f"{name} block", f"{scope}x{side}x{side}"
                run_front(rows, args, name, scope, f_erg, f_onnx, x)
                continue
            if args.only and name not in args.only.split(","):
                continue
            if name not in traced_by:
                traced_by[name] = traced_model(name, args.size)
            traced = traced_by[name]
            stem = f"{name.split(':')[-1]}_{scope}" + ("" if name.startswith("zoo:") else f"_{args.size}")
            full, f_onnx, f_erg = tmp / "full.onnx", tmp / f"{stem}.onnx", tmp / f"{stem}.erg"
            onnx.save(traced.model, full)
            onnx.utils.extract_model(str(full), str(f_onnx), [traced.model.graph.input[0].name],
                                     [cut_tensor(traced.model, scope, None)])
            erg.write_erg(onnx.shape_inference.infer_shapes(onnx.load(f_onnx)), f_erg)
            x = np.ascontiguousarray(traced.source.example.numpy()[:1].astype(np.float32))
            if args.save_fronts is not None:
                args.save_fronts.mkdir(parents=True, exist_ok=True)
                (args.save_fronts / f_erg.name).write_bytes(f_erg.read_bytes())
            run_front(rows, args, name, scope, f_erg, f_onnx, x)
    print_table(rows)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": cpu_name(), "platform": platform.platform(), "runs": args.runs,
                                        "rows": rows}, indent=1) + "\n")


def run_front(rows: list, args, name: str, scope: str, f_erg: Path, f_onnx: Path, x: np.ndarray) -> None:
    """Times one front (fused, unfused, onnxruntime interleaved) at each thread count into rows."""
    for th in [t for t in args.threads if t > 0]:
        fused, plain, ort = load(f_erg, th, True), load(f_erg, th, False), OrtEngine(f_onnx, threads=th)
        steps = fused.profile_layers(x, runs=1, warmup=0)
        n_adds = sum(s["op"] == "Add" for s in steps)
        n_fused = sum(s["op"] == "Add" and s["kernel"] == "(fused)" for s in steps)
        same = digest(fused.run(x)) == digest(plain.run(x))
        f_ms, p_ms, o_ms = interleaved_ms([fused.run, plain.run, ort.run], x, args.runs, args.warmup)
        row = {"front": f"{name} {scope}", "input": list(x.shape), "threads": th, "adds": n_adds,
               "adds_fused": n_fused, "bit_identical": same, "fused_ms": round(f_ms, 4),
               "unfused_ms": round(p_ms, 4), "ort_ms": round(o_ms, 4),
               "fused_over_unfused": round(f_ms / p_ms, 3), "fused_over_ort": round(f_ms / o_ms, 3),
               "unfused_over_ort": round(p_ms / o_ms, 3), "arena_fused": fused.arena_bytes,
               "arena_unfused": plain.arena_bytes}
        rows.append(row)
        print(json.dumps(row), flush=True)


def print_table(rows: list) -> None:
    print("| front | threads | Adds fused | fused ms | unfused ms | fused / unfused | ort ms | fused / ort | unfused / ort | arena fused / unfused (KiB) | bit-identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['front']} | {r['threads']} | {r['adds_fused']}/{r['adds']} | {r['fused_ms']:.3f} | {r['unfused_ms']:.3f} | "
              f"{r['fused_over_unfused']:.3f} | {r['ort_ms']:.3f} | {r['fused_over_ort']:.2f} | {r['unfused_over_ort']:.2f} | "
              f"{r['arena_fused'] >> 10} / {r['arena_unfused'] >> 10} | {r['bit_identical']} |")


if __name__ == "__main__":
    main()
