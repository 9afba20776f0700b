"""Residual Adds fused into the conv epilogue: A/B on the same build (EDGERUN_NO_FUSE_ADD=1 vs not).

Fronts (random weights for torchvision's, the zoo's EfficientNet-Lite0 weights): ResNet-18 at
224x224 up to layer2 / layer3, MobileNetV2 at 224x224 up to features.6 / features.13,
EfficientNet-Lite0 up to blocks.3 / blocks.7. Each front is loaded twice in one process, fused
and with EDGERUN_NO_FUSE_ADD=1 (read when an engine loads), beside onnxruntime on the same
front; the three are timed in alternating blocks (bench_engine.interleaved_ms: medians, the
order rotating, pauses between blocks), at batch 1. Also printed: the outputs of the two
native loads bit-identical or not, the Adds fused, each load's arena bytes.

    python benchmarks/bench_fuse_add.py --runs 60 --threads 1 2 --out benchmarks/results/xeon/fuse_add.json
    python benchmarks/bench_fuse_add.py --threads 0 --save-fronts /tmp/fronts   # the fronts for ab_builds.py
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
from edgerun.profiles import cpu_name  # noqa: E402

FRONTS = [("resnet18", "layer2"), ("resnet18", "layer3"), ("mobilenet_v2", "features.6"),
          ("mobilenet_v2", "features.13"), ("zoo:efficientnet-lite0", "blocks.3"), ("zoo:efficientnet-lite0", "blocks.7")]


def traced_model(name: str):
    import torch

    from edgerun.exporters.models import SourceModel
    from edgerun.exporters.pipeline import trace_model

    if name.startswith("zoo:"):
        return trace_model(name)
    from bench_gauntlet import build

    return trace_model(SourceModel(name, build(name), torch.randn(1, 3, 224, 224)))


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
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--save-fronts", type=Path, default=None,
                    help="also keep the .erg fronts here (for ab_builds.py), untimed with --threads 0")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        traced_by: dict = {}
        for name, scope in FRONTS:
            if args.only and name not in args.only.split(","):
                continue
            if name not in traced_by:
                traced_by[name] = traced_model(name)
            traced = traced_by[name]
            stem = f"{name.split(':')[-1]}_{scope}"
            full, f_onnx, f_erg = tmp / "full.onnx", tmp / f"{stem}.onnx", tmp / f"{stem}.erg"
            onnx.save(traced.model, full)
            onnx.utils.extract_model(str(full), str(f_onnx), [traced.model.graph.input[0].name],
                                     [cut_tensor(traced.model, scope, None)])
            from edgerun.exporters import erg

            erg.write_erg(onnx.shape_inference.infer_shapes(onnx.load(f_onnx)), f_erg)
            x = np.ascontiguousarray(traced.source.example.numpy()[:1].astype(np.float32))
            if args.save_fronts is not None:
                args.save_fronts.mkdir(parents=True, exist_ok=True)
                (args.save_fronts / f_erg.name).write_bytes(f_erg.read_bytes())
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
    print("| front | threads | Adds fused | fused ms | unfused ms | fused / unfused | ort ms | fused / ort | unfused / ort | arena fused / unfused (KiB) | bit-identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['front']} | {r['threads']} | {r['adds_fused']}/{r['adds']} | {r['fused_ms']:.3f} | {r['unfused_ms']:.3f} | "
              f"{r['fused_over_unfused']:.3f} | {r['ort_ms']:.3f} | {r['fused_over_ort']:.2f} | {r['unfused_over_ort']:.2f} | "
              f"{r['arena_fused'] >> 10} / {r['arena_unfused'] >> 10} | {r['bit_identical']} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": cpu_name(), "platform": platform.platform(), "runs": args.runs,
                                        "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
