"""Per-op time of the ViT fronts: the native engine's step timer against onnxruntime's node profile.

The fronts are ``bench_vit_fronts.py``'s (the gauntlet's small torchvision ViT and timm-style ViT-S/16,
exported at the default cut). For each front and thread count: the native engine's ``profile_layers``
and onnxruntime's ``SessionOptions.enable_profiling`` (its ``*_kernel_time`` node events), each the mean
µs per run summed by op type, the two profiled alternately in one process (``--sets`` sets of
``--runs`` runs each; the figure is the median over the sets). onnxruntime fuses nodes (MatMul + Mul
into FusedMatMul, the Erf GELU into Gelu ...), so the ops are put in groups both sides share:
``linear`` (a Linear layer: MatMul / Gemm with a constant weight), ``act_matmul`` (attention's two
products of activations), ``softmax``, ``layernorm``, ``gelu``, ``conv``, ``layout`` (Transpose, Slice,
Reshape, Split, Squeeze, Concat, Gather, Expand) and ``other`` (onnxruntime's bias Adds of the Linears fall
here; the engine adds the bias in the GEMM: its ``linear`` includes them).

Run:  python benchmarks/profile_vit_ops.py [--threads 1,2] [--out benchmarks/results/xeon/vit_ops_after.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gauntlet as gauntlet  # noqa: E402 - the gauntlet's models

LAYOUT = {"Transpose", "Slice", "Reshape", "Split", "Squeeze", "Unsqueeze", "Concat", "Gather", "Expand",
          "Flatten", "Identity"}


def group(op: str, weight_matmul: bool) -> str:
    if op in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulAdd"):
        return "linear" if weight_matmul else "act_matmul"
    if op == "Softmax":
        return "softmax"
    if op in ("LayerNorm", "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization"):
        return "layernorm"
    if op in ("Gelu", "Erf", "BiasGelu", "FastGelu"):
        return "gelu"
    if op in ("Conv", "FusedConv"):
        return "conv"
    return "layout" if op in LAYOUT else "other"


def weight_matmuls(onnx_path: Path) -> set[str]:
    """Names of the MatMul / Gemm nodes whose second input is an initializer (a Linear layer)."""
    import onnx

    m = onnx.load(os.fspath(onnx_path))
    inits = {i.name for i in m.graph.initializer}
    return {n.name for n in m.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits}


def ort_profile(onnx_path: Path, x: np.ndarray, threads: int, runs: int, lin_names: set[str]) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    opts.enable_profiling = True
    opts.profile_file_prefix = os.fspath(onnx_path.parent / f"ortprof_{threads}")
    sess = ort.InferenceSession(os.fspath(onnx_path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(5 + runs):  # the 5 warm-up runs are profiled too: only the last `runs` are kept
        sess.run(None, feed)
    events = json.load(open(sess.end_profiling()))
    per_op: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            op = e["args"]["op_name"]
            # onnxruntime keeps the Linears' MatMul nodes (and names); their bias Add stays a node (other)
            per_op[group(op, node in lin_names)].append(e["dur"])
    total = 5 + runs
    out = {}
    for g, durs in per_op.items():
        nodes = len(durs) // total
        out[g] = sum(durs[-runs * nodes:]) / runs if nodes else 0.0
    return out


def native_profile(nat, x: np.ndarray, runs: int, lin_steps: set[str]) -> dict:
    out: dict[str, float] = defaultdict(float)
    for s in nat.profile_layers(x, runs=runs, warmup=3):
        out[group(s["op"], s["node"] in lin_steps)] += s["us"]
    return dict(out)


def front(name: str, d: Path, threads: list[int], runs: int, sets: int) -> list[dict]:
    import torch

    from edgerun.engine import NativeEngine
    from edgerun.exporters.models import SourceModel
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model

    side = gauntlet.ARCHS[name]
    traced = trace_model(SourceModel(name, gauntlet.build(name), torch.randn(1, 3, side, side)))
    b = export(traced, ExportConfig(evaluate=False, calib_samples=4), d / name)
    x = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
    onnx_path = Path(b.file("front.onnx"))
    lin = weight_matmuls(onnx_path)
    rows = []
    for th in threads:
        nat = NativeEngine(b.file("front.erg"), max_batch=1, threads=th)
        acc: dict[str, dict[str, list[float]]] = {"native": defaultdict(list), "ort": defaultdict(list)}
        for i in range(sets):
            order = (("native", 0), ("ort", 1)) if i % 2 == 0 else (("ort", 1), ("native", 0))
            for k, _ in order:
                r = native_profile(nat, x, runs, lin) if k == "native" else ort_profile(onnx_path, x, th, runs, lin)
                for g, us in r.items():
                    acc[k][g].append(us)
        groups = sorted(set(acc["native"]) | set(acc["ort"]))
        med = {k: {g: statistics.median(acc[k][g]) if acc[k][g] else 0.0 for g in groups} for k in acc}
        rows.append({"front": name, "threads": th, "groups": {
            g: {"native_us": round(med["native"][g], 1), "ort_us": round(med["ort"][g], 1)} for g in groups},
            "native_total_us": round(sum(med["native"].values()), 1),
            "ort_total_us": round(sum(med["ort"].values()), 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--runs", type=int, default=20, help="profiled runs per set")
    ap.add_argument("--sets", type=int, default=5, help="alternating native / onnxruntime sets")
    ap.add_argument("--fronts", default="vit_tiny,timm_vit_s16")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for n in args.fronts.split(",") for r in front(n, Path(tmp), threads, args.runs, args.sets)]
    for r in rows:
        print(f"{r['front']} threads={r['threads']}: native {r['native_total_us']} us, ort {r['ort_total_us']} us")
        for g, v in sorted(r["groups"].items(), key=lambda kv: -kv[1]["native_us"]):
            ratio = v["native_us"] / v["ort_us"] if v["ort_us"] else float("nan")
            print(f"  {g:11s} native {v['native_us']:9.1f}  ort {v['ort_us']:9.1f}  ratio {ratio:5.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
