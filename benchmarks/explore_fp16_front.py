"""Would fp16 arithmetic in the int8 front's fp32 layers keep its accuracy? (a study, not the engine).

The native engine's int8 front of EfficientNet-Lite0 runs the 1x1 convs with K >= 40 as int8
GEMMs (inputs quantized per pixel at run time) and everything else in fp32: the stem, every
depthwise conv and the 1x1 convs with K < 40 (blocks.0's project, the expands of blocks.1-3),
all with the int8-rounded (GPTQ) weights dequantized. Here those fp32 layers are run in fp16
instead, the int8 layers as the exporter simulates the engine (``quant_rounding.FrontRounder``:
its ONNX graph with the rounded weights and the engine's float32 per-pixel quantization nodes),
interpreted op by op in torch so that single Convs can be swapped for fp16 emulations:

* ``int8 ort``: the exporter's onnxruntime simulation of today's engine (the reference row);
* ``int8 engine``: the native engine itself on the same weights (``write_erg`` + ``NativeEngine``);
* ``int8 torch``: the same graph in this script's torch interpreter, all fp32 (checks it);
* ``fp16 storage``: the fp32 layers' inputs, weights, biases and outputs rounded to fp16, the
  products summed in fp32 (what fp16 tensors with fp32 accumulation would give);
* ``fp16 arith``: fp16 arithmetic as an AVX512-FP16 / NEON fp16 kernel would do it: inputs,
  weights and bias in fp16, the accumulator fp16 and rounded to fp16 after every FMA, in the
  engine's order (depthwise: bias first, then the taps in (row, column) order; 1x1 and stem:
  0, then the K products in K order, then + bias). Emulated in float32 (the product of two
  fp16 values is exact there; the sum is rounded to float32 and then to fp16, which differs
  from one fused rounding only in rare ties).

The int8 layers read the fp16 layers' outputs (their per-pixel quantization stays float32);
residual adds stay float32. Printed per row: top-1 flips against the fp32 whole model and the
logit relative L2 error on the 138 eval crops and the 828 ``extra`` views (exporters/data.py).

Run:
    python benchmarks/explore_fp16_front.py [--cuts blocks.3,blocks.7] [--limit N]
        [--classes all,stem,dw,pw] [--out benchmarks/results/xeon/explore_fp16_front.json]
(--classes: which of the fp32 layers go fp16, one set of rows each: the stem, the depthwise convs,
the 1x1 convs with K < 40, or all; ~25 min on the 2-core Xeon: one GPTQ rounding per cut, five passes over 966 crops)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from edgerun.engine import NativeEngine
from edgerun.exporters import data, zoo
from edgerun.exporters.cuts import resolve_cut
from edgerun.exporters.erg import write_erg
from edgerun.exporters.pipeline import trace_model
from edgerun.exporters.quant_rounding import FrontRounder, RoundingConfig
from edgerun.exporters.split import split

SPEC = "zoo:efficientnet-lite0"
N_CALIB = 64  # the exporter's default calib_samples
BATCH = 16
MODES = ("fp32", "storage", "arith")


def r16(t: torch.Tensor) -> torch.Tensor:
    """Round float32 values to the nearest fp16 (kept as float32)."""
    return t.half().float()


def conv_arith16(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: int,
                 pads: tuple[int, int, int, int], groups: int) -> torch.Tensor:
    """Conv2d with fp16 inputs, weights and bias and an fp16 accumulator rounded after every
    FMA (x, w, b already fp16 values). Depthwise: acc = bias, then taps in (row, column)
    order; otherwise acc = 0, then (input channel, row, column) order, then + bias."""
    pt, pl, pb, pr = pads
    xp = F.pad(x, (pl, pr, pt, pb))
    n, c, hp, wp = xp.shape
    co, ci, kh, kw = w.shape
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    bias = torch.zeros(co) if b is None else b
    depthwise = groups == c and ci == 1 and groups > 1
    if not depthwise and groups != 1:
        raise ValueError(f"grouped conv with groups={groups} is not emulated")
    acc = bias.view(1, co, 1, 1).expand(n, co, ho, wo).clone() if depthwise else torch.zeros(n, co, ho, wo)

    def tap(k: int, i: int, j: int) -> torch.Tensor:  # input channel k's (i, j) tap window
        return xp[:, k:k + 1 if not depthwise else c, i:i + stride * (ho - 1) + 1:stride,
                  j:j + stride * (wo - 1) + 1:stride]

    for k in range(1 if depthwise else ci):
        for i in range(kh):
            for j in range(kw):
                wk = w[:, 0 if depthwise else k, i, j].view(1, co, 1, 1)
                acc = r16(torch.addcmul(acc, tap(k, i, j), wk))
    return acc if depthwise else r16(acc + bias.view(1, co, 1, 1))


class Interp:
    """Runs an ONNX graph of Conv / Clip / Add and the per-pixel quantization ops in torch;
    the Convs in ``fp16`` are computed in fp16 (``mode`` storage or arith), the rest fp32."""

    def __init__(self, model: bytes, fp16: set[str], mode: str) -> None:
        m = onnx.load_from_string(model)
        self.g, self.fp16, self.mode = m.graph, fp16, mode
        self.consts = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in self.g.initializer}
        self.max_abs16 = 0.0  # largest |value| an fp16 layer produced (fp16 overflows past 65504)

    def conv(self, node, x, w, b):
        a = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
        s, pads, groups = a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0]), a.get("group", 1)
        if s[0] != s[1] or list(a.get("dilations", [1, 1])) != [1, 1]:
            raise ValueError(f"{node.name}: unsupported stride / dilation")
        pads4 = (pads[0], pads[1], pads[2], pads[3])  # ONNX: top, left, bottom, right
        if node.name in self.fp16 and self.mode != "fp32":
            x, w = r16(x), r16(w)
            b = None if b is None else r16(b)
            if self.mode == "arith":
                y = conv_arith16(x, w, b, s[0], pads4, groups)
            else:
                y = r16(F.conv2d(F.pad(x, (pads4[1], pads4[3], pads4[0], pads4[2])), w, b, s[0], 0, 1, groups))
            self.max_abs16 = max(self.max_abs16, float(y.abs().max()))
            return y
        return F.conv2d(F.pad(x, (pads4[1], pads4[3], pads4[0], pads4[2])), w, b, s[0], 0, 1, groups)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        v = dict(self.consts)
        v[self.g.input[0].name] = torch.from_numpy(x)
        for n in self.g.node:
            i = [v[name] if name else None for name in n.input]
            op = n.op_type
            if op == "Conv":
                y = self.conv(n, i[0], i[1], i[2] if len(i) > 2 else None)
            elif op == "Clip":
                y = torch.clamp(i[0], i[1], i[2])
            elif op in ("Add", "Sub", "Mul", "Div", "Max"):
                y = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div,
                     "Max": torch.maximum}[op](i[0], i[1])
            elif op in ("ReduceMin", "ReduceMax"):
                axes = [int(a) for a in i[1].tolist()] if len(i) > 1 else \
                    list(next(at.ints for at in n.attribute if at.name == "axes"))
                y = (torch.amin if op == "ReduceMin" else torch.amax)(i[0], dim=axes, keepdim=True)
            elif op == "Round":
                y = torch.round(i[0])  # half to even, as ONNX
            else:
                raise ValueError(f"op {op} is not interpreted")
            v[n.output[0]] = y
        return [v[o.name].numpy() for o in self.g.output]


def session(model: bytes | onnx.ModelProto) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads, o.log_severity_level = 2, 1, 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(src, o, providers=["CPUExecutionProvider"])


def layer_class(layer) -> str:
    """``stem`` (3 input channels), ``dw`` (depthwise) or ``pw`` (1x1) of a FrontRounder layer."""
    return "dw" if layer.geom[-1] > 1 else "pw" if layer.wshape[2:] == (1, 1) else "stem"


def study_cut(traced, cut: str, splits: dict, ref: dict, modes: list[str], classes: list[str]) -> dict:
    front, back = split(traced.model, resolve_cut(traced.cuts, cut))
    calib = zoo.load(SPEC).calib_data(N_CALIB).astype(np.float32)
    t0 = time.time()
    rounder = FrontRounder(front, calib, 32, RoundingConfig(method="gptq"))
    rounded = rounder.sequential({l.name: "int8" for l in rounder.layers})
    print(f"{cut}: GPTQ rounding {time.time() - t0:.0f} s", flush=True)
    int8 = {l.name for l in rounder.layers if l.wshape[2:] == (1, 1) and l.act_quantized("int8", 40)}
    fp16 = {l.name: layer_class(l) for l in rounder.layers if l.name not in int8}
    out_names = [o.name for o in front.graph.output]
    sim = rounder._model(rounded, out_names)
    back_s = session(back)
    back_names = [i.name for i in back_s.get_inputs()]
    rows = []

    def record(name: str, run_front, extra=None) -> None:
        """One row; ``extra``: a function giving more fields, called after the runs."""
        row, t = {"scheme": name}, time.time()
        for s, x in splits.items():
            z = np.concatenate([back_s.run(None, dict(zip(back_names, run_front(x[i:i + BATCH]))))[0]
                                for i in range(0, len(x), BATCH)]).astype(np.float64)
            row[f"{s}_n"] = len(x)
            row[f"{s}_flips"] = int((z.argmax(1) != ref[s].argmax(1)).sum())
            row[f"{s}_logit_rel_err"] = round(float(np.linalg.norm(z - ref[s]) / np.linalg.norm(ref[s])), 5)
        row.update(extra() if extra else {})
        rows.append(row)
        print(f"{cut} {name:13s} eval flips {row['eval_flips']:2d}/{row['eval_n']} err "
              f"{100 * row['eval_logit_rel_err']:.2f}%  |  extra flips {row['extra_flips']:2d}/{row['extra_n']} "
              f"err {100 * row['extra_logit_rel_err']:.2f}%  ({time.time() - t:.0f} s)", flush=True)

    sim_s = session(sim)
    record("int8 ort", lambda b: sim_s.run(out_names, {rounder.input_names[0]: b}))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "front.erg"
        write_erg(front, path, precisions={l.name: "int8" for l in rounder.layers}, group_size=32, rounded=rounded)
        eng = NativeEngine(path, max_batch=BATCH, threads=2)
        record("int8 engine", lambda b: list(eng.run(b).values()))
    with torch.no_grad():
        for mode in modes:
            for cls in classes if mode != "fp32" else ["all"]:
                layers = {n for n, c in fp16.items() if cls == "all" or c in cls.split("+")}
                it = Interp(sim, layers, mode)
                name = {"fp32": "int8 torch", "storage": "fp16 storage", "arith": "fp16 arith"}[mode]
                name += f" ({cls})" if cls != "all" else ""
                record(name, it.run, (lambda it=it, cls=cls: {"fp16_classes": cls,
                                                              "max_abs_fp16_layer_output": round(it.max_abs16, 2)})
                       if mode != "fp32" else None)
    return {"cut": cut, "fp16_layers": fp16, "int8_layers": sorted(int8), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuts", default="blocks.3,blocks.7")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--classes", default="all",
                    help="comma-separated sets of fp32 layers put in fp16: all, or stem / dw / pw joined by +")
    ap.add_argument("--limit", type=int, default=None, help="at most this many crops per split (a quick check)")
    ap.add_argument("--out", default="benchmarks/results/xeon/explore_fp16_front.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    traced = trace_model(SPEC)
    splits = {s: data.photo_crops(s, args.limit)[0].astype(np.float32) for s in ("eval", "extra")}
    whole = session(traced.model)
    wname = whole.get_inputs()[0].name
    ref = {s: np.concatenate([whole.run(None, {wname: x[i:i + BATCH]})[0] for i in range(0, len(x), BATCH)])
           .astype(np.float64) for s, x in splits.items()}
    cuts = [study_cut(traced, c, splits, ref, args.modes.split(","), args.classes.split(","))
            for c in args.cuts.split(",")]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": "efficientnet-lite0", "weights": "int8 gptq (exporter default)",
                                          "n_calib": N_CALIB, "limit": args.limit, "cuts": cuts}, indent=1))


if __name__ == "__main__":
    main()
