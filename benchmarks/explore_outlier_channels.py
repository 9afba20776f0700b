"""Would LLM.int8()-style outlier channels bring the 8-bit-activation int8 front to 99 %? (a study).

The native engine's int8 front quantizes each int8 1x1 conv's input per pixel at run time
(asymmetric 8 bits over the pixel's K channels, ``quant_stats._act_quant``). Here, a few input
channels of each such conv (chosen on the calibration crops) would stay fp32 and go through a
small fp32 product, the other channels quantized per pixel as today over their own, smaller,
min..max; the partial products summed. Simulated exactly as the exporter simulates the engine
(``quant_rounding.FrontRounder``: onnxruntime with the engine's float32 quantization nodes, which
matches the engine to ~1e-4 logit error): EfficientNet-Lite0's front at the cut, weights GPTQ-rounded
(int8, per output channel, bias correction) by the exporter's own rounding with the outlier-aware
quantization emulated (so the rounding fits what would run), the fp32 back half in onnxruntime.

Schemes (rows):

* ``int8-a32``: int8 weights, fp32 activations (``--front-act fp32``);
* ``int8``: today's engine scheme (k = 0); the engine's own int8 front (``write_erg`` +
  ``NativeEngine``) is run on the same crops too (``int8 engine``) to check the simulation;
* ``range kN``: N channels per int8 conv left fp32, chosen greedily to minimise the mean squared
  per-pixel range of the remaining channels (the quantization step's square) on calibration data;
* ``maxabs kN``: the N channels with the largest max |x| on calibration data.

Printed per row: top-1 flips against the fp32 whole model and the logit relative L2 error on the
138 eval crops and the 828 ``extra`` views (exporters/data.py), the bar being <= 1 and <= 8 flips.

Run:
    python benchmarks/explore_outlier_channels.py [--cut blocks.7] [--ks 1,2,4,8]
        [--out benchmarks/results/explore_outlier_channels.json]
    python benchmarks/explore_outlier_channels.py --ranges-only \
        --out benchmarks/results/explore_outlier_channels_ranges.json
(the first takes ~50 min on the 2-core Xeon: one GPTQ rounding of the front per row)
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
from onnx import helper, numpy_helper

from edgerun.engine import NativeEngine
from edgerun.exporters import data, zoo
from edgerun.exporters.cuts import resolve_cut
from edgerun.exporters.erg import write_erg
from edgerun.exporters.pipeline import trace_model
from edgerun.exporters.quant_rounding import FrontRounder, RoundingConfig
from edgerun.exporters.quant_stats import ACT_MIN_RANGE, ACT_QMAX, _columns, _Stats, _substitute
from edgerun.exporters.split import split
from edgerun.feeds import as_feeds, n_samples

SPEC = "zoo:efficientnet-lite0"
N_CALIB = 64  # the exporter's default calib_samples
BIG = np.float32(1e30)


def act_quant(cols: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """``quant_stats._act_quant`` with the channels ``keep`` (indices along the last axis) left
    fp32 and out of the pixel's min..max (same float32 operations as the engine)."""
    cols = cols.astype(np.float32, copy=False)
    if keep is None or len(keep) == 0:
        lo_in, hi_in = cols, cols
    else:
        m = np.zeros(cols.shape[-1], np.float32)
        m[keep] = BIG
        lo_in, hi_in = cols + m, cols - m
    mn = lo_in.min(axis=-1, keepdims=True)
    d = hi_in.max(axis=-1, keepdims=True) - mn
    inv = np.float32(ACT_QMAX) / np.maximum(d, np.float32(ACT_MIN_RANGE))
    u = np.clip(np.rint((cols - mn) * inv), 0, ACT_QMAX)
    q = (u * (d / np.float32(ACT_QMAX)) + mn).astype(np.float32)
    if keep is not None and len(keep):
        q[..., keep] = cols[..., keep]
    return q


def act_quant_nodes(g: onnx.GraphProto, node: onnx.NodeProto, channels: int, keep: np.ndarray | None,
                    opset: int) -> list:
    """ONNX nodes computing ``act_quant`` on a 1x1 Conv's NCHW input (``channels`` of them),
    rewiring ``node`` to them."""
    x, p = node.input[0], f"{node.name}::oq"
    c = {f"{p}_qmax": np.array(ACT_QMAX, np.float32), f"{p}_dmin": np.array(ACT_MIN_RANGE, np.float32)}
    nodes, lo, hi = [], x, x
    if keep is not None and len(keep):
        m = np.zeros((1, channels, 1, 1), np.float32)
        m[0, keep] = BIG
        c[f"{p}_big"], c[f"{p}_mask"] = m, m > 0
        nodes += [helper.make_node("Add", [x, f"{p}_big"], [f"{p}_lo"]),
                  helper.make_node("Sub", [x, f"{p}_big"], [f"{p}_hi"])]
        lo, hi = f"{p}_lo", f"{p}_hi"
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in c.items())
    if opset >= 18:
        g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), f"{p}_axes"))
        nodes += [helper.make_node("ReduceMin", [lo, f"{p}_axes"], [f"{p}_min"], keepdims=1),
                  helper.make_node("ReduceMax", [hi, f"{p}_axes"], [f"{p}_max"], keepdims=1)]
    else:
        nodes += [helper.make_node("ReduceMin", [lo], [f"{p}_min"], axes=[1], keepdims=1),
                  helper.make_node("ReduceMax", [hi], [f"{p}_max"], axes=[1], keepdims=1)]
    nodes += [helper.make_node("Sub", [f"{p}_max", f"{p}_min"], [f"{p}_d"]),
              helper.make_node("Max", [f"{p}_d", f"{p}_dmin"], [f"{p}_dc"]),
              helper.make_node("Div", [f"{p}_qmax", f"{p}_dc"], [f"{p}_inv"]),
              helper.make_node("Div", [f"{p}_d", f"{p}_qmax"], [f"{p}_s"]),
              helper.make_node("Sub", [x, f"{p}_min"], [f"{p}_xm"]),
              helper.make_node("Mul", [f"{p}_xm", f"{p}_inv"], [f"{p}_v"]),
              helper.make_node("Round", [f"{p}_v"], [f"{p}_u"]),
              helper.make_node("Mul", [f"{p}_u", f"{p}_s"], [f"{p}_us"]),
              helper.make_node("Add", [f"{p}_us", f"{p}_min"], [f"{p}_q"])]
    out = f"{p}_q"
    if keep is not None and len(keep):
        nodes.append(helper.make_node("Where", [f"{p}_mask", x, f"{p}_q"], [f"{p}_qo"]))
        out = f"{p}_qo"
    for i, n in enumerate(nodes):
        n.name = f"{p}_{i}"
    node.input[0] = out
    return nodes


class OutlierRounder(FrontRounder):
    """The exporter's rounder and simulation, with the engine's activation quantization of each
    int8 1x1 conv replaced by ``act_quant`` with that conv's ``keep`` channels (``{}``: today's)."""

    def __init__(self, front, calib_x, keep: dict[str, np.ndarray], cfg: RoundingConfig) -> None:
        self.keep = keep
        super().__init__(front, calib_x, 32, cfg)

    def aq_layers(self, rounded: dict) -> set[str]:
        return {n for n, r in rounded.items() if self.by_name[n].wshape[2:] == (1, 1)
                and self.by_name[n].act_quantized(r.prec, self.cfg.act_quant_min_k)}

    def graph_with(self, rounded: dict, outputs: list[str]) -> bytes:
        g = onnx.GraphProto()
        g.CopyFrom(self.graph)
        del g.output[:]
        g.output.extend(helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs)
        nodes = {n.name: n for n in g.node}
        for name, r in rounded.items():
            _substitute(g, nodes[name], self.by_name[name], r)
        aq, order = self.aq_layers(rounded), []
        for n in g.node:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            if n.name in aq:
                order += act_quant_nodes(g, c, self.by_name[n.name].wshape[1], self.keep.get(n.name),
                                         self.opset_version)
            order.append(c)
        del g.node[:]
        g.node.extend(order)
        m = helper.make_model(g, opset_imports=self.opset)
        m.ir_version = min(m.ir_version, 10)
        return m.SerializeToString()

    _model = graph_with

    def _stats(self, layers, rounded, with_h, cross=False, aq=frozenset()):
        outs = list(dict.fromkeys(l.x for l in layers))
        sess = session(self._model(rounded, outs))
        ref = session(self._model({}, outs)) if cross and rounded else None
        stats = {l.name: _Stats() for l in layers}
        x = as_feeds(self.x, self.input_names)
        for i in range(0, n_samples(x), self.cfg.chunk):
            feed = {k: v[i:i + self.cfg.chunk] for k, v in x.items()}
            vals = dict(zip(outs, sess.run(outs, feed)))
            fvals = dict(zip(outs, ref.run(outs, feed))) if ref is not None else vals
            for l in layers:
                cols = _columns(l, vals[l.x])
                cols_f = _columns(l, fvals[l.x]) if cross else None
                stats[l.name].add(act_quant(cols, self.keep.get(l.name)) if l.name in aq else cols,
                                  with_h, cols_f)
        return {n: s.done() for n, s in stats.items()}


def session(model: bytes | onnx.ModelProto) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads, o.log_severity_level = 2, 1, 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(src, o, providers=["CPUExecutionProvider"])


def pick_range(x: np.ndarray, k: int) -> np.ndarray:
    """Greedy: the ``k`` channels of ``x`` [P, K] whose removal lowers the mean squared per-pixel
    range (max - min) of the remaining channels most, one at a time."""
    x = x.astype(np.float64)
    chosen: list[int] = []
    rows = np.arange(len(x))
    for _ in range(k):
        hi, lo = x.copy(), x.copy()
        hi[:, chosen], lo[:, chosen] = -np.inf, np.inf
        a1 = hi.argmax(1)
        m1 = hi[rows, a1]
        hi[rows, a1] = -np.inf
        m2 = hi.max(1)
        b1 = lo.argmin(1)
        n1 = lo[rows, b1]
        lo[rows, b1] = np.inf
        n2 = lo.min(1)
        r2 = (m1 - n1) ** 2
        gain = np.bincount(a1, r2 - (m2 - n1) ** 2, x.shape[1]) + np.bincount(b1, r2 - (m1 - n2) ** 2, x.shape[1])
        gain[chosen] = -np.inf
        chosen.append(int(gain.argmax()))
    return np.array(sorted(chosen), np.int64)


def pick_maxabs(x: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` channels of ``x`` [P, K] with the largest max |x| (ties: lowest index first)."""
    return np.array(sorted(np.argsort(-np.abs(x).max(0), kind="stable")[:k]), np.int64)


def int8_inputs(rounder: FrontRounder) -> dict[str, np.ndarray]:
    """Each int8 1x1 conv's fp32 input on the calibration crops, as [pixels, K]."""
    layers = [l for l in rounder.layers if l.wshape[2:] == (1, 1) and l.act_quantized("int8", 40)]
    outs = list(dict.fromkeys(l.x for l in layers))
    vals = session(rounder._model({}, outs)).run(outs, {rounder.input_names[0]: rounder.x})
    by = dict(zip(outs, vals))
    return {l.name: _columns(l, by[l.x])[:, 0, :] for l in layers}


def range_table(inputs: dict[str, np.ndarray], ks: list[int], pickers: dict) -> list[dict]:
    """Per int8 conv: its input's value span and the RMS per-pixel range (the quantization step
    x 255) of the channels left to quantize, as a fraction of today's, per picker and k."""
    rows = []
    for name, x in inputs.items():
        r0 = float(np.mean((x.max(1) - x.min(1)).astype(np.float64) ** 2))
        row = {"layer": name, "k_channels": x.shape[1], "min": float(x.min()), "max": float(x.max()),
               "rms_range": round(r0 ** 0.5, 3)}
        for pname, pick in pickers.items():
            for k in ks:
                rest = np.delete(x, pick(x, k), axis=1)
                r = float(np.mean((rest.max(1) - rest.min(1)).astype(np.float64) ** 2))
                row[f"{pname}_k{k}"] = round((r / r0) ** 0.5, 2)
        rows.append(row)
        print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cut", default="blocks.7")
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--pickers", default="range,maxabs")
    ap.add_argument("--out", default="benchmarks/results/explore_outlier_channels.json")
    ap.add_argument("--ranges-only", action="store_true",
                    help="only print (and write) how much of each int8 conv's per-pixel range the picked "
                         "channels remove, on the calibration crops (no rounding, no evaluation)")
    args = ap.parse_args()
    ks, pickers = [int(v) for v in args.ks.split(",")], {"range": pick_range, "maxabs": pick_maxabs}
    pickers = {p: pickers[p] for p in args.pickers.split(",")}
    if args.ranges_only:
        traced = trace_model(SPEC)
        front, _ = split(traced.model, resolve_cut(traced.cuts, args.cut))
        calib = zoo.load(SPEC).calib_data(N_CALIB).astype(np.float32)
        table = range_table(int8_inputs(FrontRounder(front, calib, 32, RoundingConfig(method="rtn"))), ks, pickers)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": "efficientnet-lite0", "cut": args.cut, "n_calib": N_CALIB,
                                              "ranges": table}, indent=1))
        return
    traced = trace_model(SPEC)
    front, back = split(traced.model, resolve_cut(traced.cuts, args.cut))
    calib = zoo.load(SPEC).calib_data(N_CALIB).astype(np.float32)
    splits = {s: data.photo_crops(s)[0].astype(np.float32) for s in ("eval", "extra")}
    whole, back_s = session(traced.model), session(back)
    back_names = [i.name for i in back_s.get_inputs()]

    def logits(run_front, x: np.ndarray) -> np.ndarray:  # in batches of 32: 828 crops at once take ~10 GB
        return np.concatenate([back_s.run(None, dict(zip(back_names, run_front(x[i:i + 32]))))[0]
                               for i in range(0, len(x), 32)]).astype(np.float64)

    wname = whole.get_inputs()[0].name
    ref = {s: np.concatenate([whole.run(None, {wname: x[i:i + 32]})[0] for i in range(0, len(x), 32)])
           .astype(np.float64) for s, x in splits.items()}

    rows = []

    def record(name: str, run_front, extra: dict) -> None:
        row = {"scheme": name, **extra}
        for s, x in splits.items():
            z = logits(run_front, x)
            row[f"{s}_n"] = len(x)
            row[f"{s}_flips"] = int((z.argmax(1) != ref[s].argmax(1)).sum())
            row[f"{s}_logit_rel_err"] = round(float(np.linalg.norm(z - ref[s]) / np.linalg.norm(ref[s])), 5)
        rows.append(row)
        print(f"{name:14s} eval flips {row['eval_flips']:2d}/{row['eval_n']} err {100 * row['eval_logit_rel_err']:.2f}%"
              f"  |  extra flips {row['extra_flips']:2d}/{row['extra_n']} err {100 * row['extra_logit_rel_err']:.2f}%"
              f"  ({time.strftime('%H:%M:%S')})", flush=True)

    def simulated(keep: dict, cfg: RoundingConfig):
        r = OutlierRounder(front, calib, keep, cfg)
        rounded = r.sequential({l.name: "int8" for l in r.layers})
        out_names = [o.name for o in front.graph.output]
        sess = session(r._model(rounded, out_names))
        return r, rounded, (lambda b: sess.run(out_names, {r.input_names[0]: b}))

    _, _, run = simulated({}, RoundingConfig(act_quant_min_k=None))
    record("int8-a32", run, {"k": None})
    base, rounded, run = simulated({}, RoundingConfig())
    record("int8", run, {"k": 0})
    with tempfile.TemporaryDirectory() as d:  # the engine itself on today's scheme, same weights
        path = Path(d) / "front.erg"
        write_erg(front, path, precisions={l.name: "int8" for l in base.layers}, group_size=32, rounded=rounded)
        eng = NativeEngine(path, max_batch=32, threads=2)
        record("int8 engine", lambda b: list(eng.run(b).values()), {"k": 0})
    inputs = int8_inputs(base)
    print("int8 1x1 convs with run-time quantized inputs:", {n: v.shape[1] for n, v in inputs.items()})
    for pname, pick in pickers.items():
        for k in ks:
            keep = {n: pick(v, k) for n, v in inputs.items()}
            _, _, run = simulated(keep, RoundingConfig())
            record(f"{pname} k{k}", run, {"k": k, "picker": pname,
                                          "channels": {n: c.tolist() for n, c in keep.items()}})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": "efficientnet-lite0", "cut": args.cut, "n_calib": N_CALIB,
                                          "weights": "int8 gptq", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
