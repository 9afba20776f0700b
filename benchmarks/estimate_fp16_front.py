"""How fast would the int8 EfficientNet-Lite0 front be with its fp32 layers in fp16? (an estimate).

Built from two measurements on this machine, nothing else:

1. the native engine's per-step times (``profile_layers``, 1 thread, batch 1) of the int8 front
   at the cut (round-to-nearest weights: the times do not depend on the rounding), fused as the
   engine runs it and with ``EDGERUN_NO_FUSE=1`` (to split each fused 1x1 -> depthwise -> 1x1
   chain into its expand, depthwise and project), and of the fp32 front; the three engines
   alternate, ``--rounds`` profiles of ``--runs`` runs each, the median of the per-round means;
2. the fp32 / fp16 time ratio of each layer shape from ``benchmarks/fp16_kernels`` (its JSON:
   ``f32_over_cvt``, activations fp32 between layers and converted at each fp16 layer, and
   ``f32_over_h16``, fp16 tensors between layers).

Each fp32 layer (depthwise, 1x1 with K < 40) is divided by its shape's ratio; a fused chain's
time less its int8 project (as measured unfused) is divided by the expand's and depthwise's
ratios averaged with the bench's fp32 times of the two as weights; int8 layers, adds and the rest are unchanged. The stem (3x3 stride 2, 3 input
channels) has no fp16 kernel in the bench: it is estimated at 1.0x (no gain) and 2.0x (the lane
count's bound). Also estimated: only the depthwise convs in fp16 (``dw``). A ratio above 2 (fp16 lanes) comes from fp32's doubled memory traffic, which a
fused chain's in-cache strips do not have: every estimate is also given with the ratios capped at
``--cap`` (2). Printed: the estimated int8 front against the measured fp32 front, and the engine's
fp32 time of each layer next to the bench's fp32 kernel (how well the bench stands for the engine).

Run:
    bash benchmarks/fp16_kernels/build.sh --run 51 benchmarks/results/xeon/fp16_kernels.json
    python benchmarks/estimate_fp16_front.py --kernels benchmarks/results/xeon/fp16_kernels.json \
        [--cuts blocks.3,blocks.7] [--out benchmarks/results/xeon/estimate_fp16_front.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgerun.engine import NativeEngine
from edgerun.exporters import zoo
from edgerun.exporters.cuts import resolve_cut
from edgerun.exporters.erg import write_erg
from edgerun.exporters.pipeline import trace_model
from edgerun.exporters.quant_rounding import FrontRounder, RoundingConfig
from edgerun.exporters.split import split

SPEC = "zoo:efficientnet-lite0"
STEM_RATIOS = (1.0, 2.0)


def conv_keys(front: onnx.ModelProto) -> dict[str, str]:
    """The kernel bench's key of each fp32-in-the-int8-front Conv: ``dw C H k s`` for a
    depthwise, ``pw K N H`` for a 1x1 (input plane H x H), ``stem`` for the first conv."""
    m = onnx.shape_inference.infer_shapes(front)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    w = {t.name: list(t.dims) for t in m.graph.initializer}
    keys = {}
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        a = {at.name: onnx.helper.get_attribute_value(at) for at in n.attribute}
        co, ci, kh, _ = w[n.input[1]]
        h = dims[n.input[0]][2]
        if n.input[0] == m.graph.input[0].name:
            keys[n.name] = "stem"
        elif a.get("group", 1) > 1:
            keys[n.name] = f"dw {co} {h} {kh} {a.get('strides', [1, 1])[0]}"
        else:
            keys[n.name] = f"pw {ci} {co} {h}"
    return keys


def profile(engines: dict[str, NativeEngine], x: np.ndarray, rounds: int, runs: int) -> dict[str, list[dict]]:
    """Per engine, its steps with ``us`` the median over ``rounds`` alternating profiles."""
    per = {k: [] for k in engines}
    for _ in range(rounds):
        for k, e in engines.items():
            per[k].append(e.profile_layers({e.input_names[0]: x}, runs=runs))
    out = {}
    for k, profs in per.items():
        steps = [dict(s) for s in profs[0]]
        for i, s in enumerate(steps):
            s["us"] = float(np.median([p[i]["us"] for p in profs]))
        out[k] = steps
    return out


def estimate(steps: dict[str, list[dict]], keys: dict[str, str], int8: set[str], ratio: dict[str, float],
             bench_us: dict[str, float], stem: float) -> tuple[float, dict[str, float]]:
    """The int8 front's time with every fp32 layer at its fp16 ratio, and the fp16 time per class."""
    unfused = {s["node"]: s["us"] for s in steps["int8_nofuse"]}
    fused = steps["int8"]
    total, by = 0.0, {}

    def r(node: str) -> float:
        k = keys.get(node)
        return stem if k == "stem" else ratio.get(k, 1.0) if node not in int8 else 1.0

    for i, s in enumerate(fused):
        if s["kernel"] == "(fused)":
            continue
        if s["kernel"].startswith("fused"):  # this step and the next two (fused) nodes
            parts = [s["node"]] + [fused[i + j]["node"] for j in (1, 2)]
            # the int8 project as measured unfused; the rest of the fused time is the fp32
            # expand + depthwise, sped up by their ratios weighted by the bench's fp32 times
            # (the engine's unfused expand also writes its whole output to memory, which the
            # fused strips do not)
            proj = sum(unfused[p] for p in parts if p in int8)
            fp = [p for p in parts if p not in int8]
            b = [bench_us[keys[p]] for p in fp]
            t16 = proj + (s["us"] - proj) * sum(bi / r(p) for bi, p in zip(b, fp)) / sum(b)
            cls = "fused chains"
        else:
            t16 = s["us"] / r(s["node"]) if s["op"] == "Conv" else s["us"]
            k = keys.get(s["node"], "")
            cls = ("stem" if k == "stem" else "int8 1x1" if s["node"] in int8 else
                   "depthwise" if k.startswith("dw") else "fp32 1x1" if k.startswith("pw") else "other")
        by[cls] = by.get(cls, 0.0) + t16
        total += t16
    return total, by


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", required=True, help="the JSON of benchmarks/fp16_kernels/build.sh --run")
    ap.add_argument("--cuts", default="blocks.3,blocks.7")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cap", type=float, default=2.0,
                    help="second set of estimates with every kernel ratio capped here (2: the lane count's bound, "
                         "for layers whose bench ratio also has fp32's doubled memory traffic in it)")
    ap.add_argument("--out", default="benchmarks/results/xeon/estimate_fp16_front.json")
    args = ap.parse_args()
    kb = json.loads(Path(args.kernels).read_text())
    ratios = {v: {e["key"]: e[f"f32_over_{v}"] for e in kb["depthwise"] + kb["pointwise"]} for v in ("cvt", "h16")}
    traced = trace_model(SPEC)
    calib = zoo.load(SPEC).calib_data(8).astype(np.float32)
    out = {"model": "efficientnet-lite0", "threads": 1, "batch": 1, "rounds": args.rounds, "runs": args.runs,
           "kernels": args.kernels, "cuts": []}
    for cut in args.cuts.split(","):
        front, _ = split(traced.model, resolve_cut(traced.cuts, cut))
        r = FrontRounder(front, calib, 32, RoundingConfig(method="rtn", bias_correction=False))
        rounded = r.sequential({l.name: "int8" for l in r.layers})
        int8 = {l.name for l in r.layers if l.wshape[2:] == (1, 1) and l.act_quantized("int8", 40)}
        keys = conv_keys(front)
        with tempfile.TemporaryDirectory() as d:
            q, f = Path(d) / "int8.erg", Path(d) / "fp32.erg"
            write_erg(front, q, precisions={l.name: "int8" for l in r.layers}, group_size=32, rounded=rounded)
            write_erg(front, f)
            engines = {"int8": NativeEngine(q, max_batch=1, threads=1), "fp32": NativeEngine(f, max_batch=1, threads=1)}
            os.environ["EDGERUN_NO_FUSE"] = "1"  # read when the engine loads
            try:
                engines["int8_nofuse"] = NativeEngine(q, max_batch=1, threads=1)
            finally:
                del os.environ["EDGERUN_NO_FUSE"]
            steps = profile(engines, calib[:1], args.rounds, args.runs)
        t = {k: sum(s["us"] for s in v) for k, v in steps.items()}
        row = {"cut": cut, "measured_us": {k: round(v, 1) for k, v in t.items()},
               "int8_over_fp32_measured": round(t["fp32"] / t["int8"], 3), "estimates": []}
        print(f"{cut}: measured fp32 {t['fp32']:.0f} us, int8 {t['int8']:.0f} us ({t['fp32'] / t['int8']:.2f}x), "
              f"int8 unfused {t['int8_nofuse']:.0f} us (1 thread, medians)", flush=True)
        bench = {e["key"]: e["f32_us"] for e in kb["depthwise"] + kb["pointwise"]}
        row["engine_vs_bench_f32_us"] = {n: [round(s["us"], 1), bench[keys[n]]] for s in steps["int8_nofuse"]
                                         if (n := s["node"]) in keys and keys[n] in bench and n not in int8}
        print("  fp32 layers, engine unfused us / bench f32 us: " + ", ".join(
            f"{keys[n]} {a:.0f}/{b:.0f}" for n, (a, b) in row["engine_vs_bench_f32_us"].items()))
        for cap in (None, args.cap):
            for variant in ("cvt", "h16"):
                for layers, stem in [("all", st) for st in STEM_RATIOS] + [("dw", 1.0)]:
                    rv = {k: (min(v, cap) if cap else v) if layers == "all" or k.startswith(layers) else 1.0
                          for k, v in ratios[variant].items()}
                    est, by = estimate(steps, keys, int8, rv, bench, stem)
                    row["estimates"].append({"fp16_layers": layers, "activations": variant, "ratio_cap": cap,
                                             "stem_ratio": stem, "int8_fp16_us": round(est, 1),
                                             "speedup_vs_fp32": round(t["fp32"] / est, 3),
                                             "by_class_us": {k: round(v, 1) for k, v in by.items()}})
                    print(f"  fp16 {layers} ({variant}, ratios capped at {cap}, stem {stem:.1f}x): {est:.0f} us -> "
                          f"{t['fp32'] / est:.2f}x fp32  " + ", ".join(f"{k} {v:.0f}" for k, v in by.items()), flush=True)
        row["steps"] = steps
        row["keys"] = keys
        out["cuts"].append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
