"""Layer input statistics and ONNX simulation helpers of ``quant_rounding``.

What the native engine computes with, emulated in numpy / ONNX so that data-aware
rounding sees it: the per-pixel run-time activation quantization of int8 GEMM Convs,
im2col columns of a layer's input, the running second moments GPTQ needs, and the
rewiring of an ONNX node onto rounded weights (and quantized inputs) for simulation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

if TYPE_CHECKING:  # only for annotations: quant_rounding imports this module
    from edgerun.exporters.quant_rounding import RoundedLayer, _Layer

# The engine's int8 GEMM quantizes each output pixel's K activations to u in [0, ACT_QMAX]:
# u = rne((x - min) * inv), inv = ACT_QMAX / max(max - min, ACT_MIN_RANGE), and multiplies
# x_hat = u * (max - min) / ACT_QMAX + min (kQMax / kQMinRange in cpp/src/qgemm_ukr.h).
ACT_QMAX = 255
ACT_MIN_RANGE = 1e-30


def _act_quant(cols: np.ndarray) -> np.ndarray:
    """The engine's dynamic activation quantization of GEMM columns [P, G, k]: per output
    pixel (row), asymmetric 8 bits over the row's min..max, in the engine's float32
    operations (see ``ACT_QMAX``)."""
    cols = cols.astype(np.float32, copy=False)
    mn = cols.min(axis=-1, keepdims=True)
    d = cols.max(axis=-1, keepdims=True) - mn
    inv = np.float32(ACT_QMAX) / np.maximum(d, np.float32(ACT_MIN_RANGE))
    u = np.clip(np.rint((cols - mn) * inv), 0, ACT_QMAX)
    return (u * (d / np.float32(ACT_QMAX)) + mn).astype(np.float32)


def _columns(layer: _Layer, x: np.ndarray) -> np.ndarray:
    """The layer's input as GEMM columns [P, G, k] (im2col for a Conv)."""
    if layer.op != "Conv":
        return x.reshape(-1, 1, x.shape[-1])
    _, _, kh, kw = layer.wshape
    if x.ndim == 3:  # Conv1d: the engine runs it on [N, C, 1, L]
        x = x[:, :, None, :]
    sh, sw, dh, dw, pt, pl, pb, pr, g = layer.geom
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, hp, wp = xp.shape
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    cols = np.empty((n, ho, wo, c, kh, kw), np.float32)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            cols[..., i, j] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(n * ho * wo, g, (c // g) * kh * kw)


# GPTQ's statistics are G x k x k float64 matrices (several live at once while rounding); above
# this size a layer is rounded to nearest instead (found by scripts/fuzz_quant.py: a 5x5 conv on
# ~600 channels, k = 14,950, took 19 GB). EfficientNet-Lite0's largest is 1 x 1,280 x 1,280 (13 MB).
MAX_H_BYTES = 256 * 2**20


class _Stats:
    """Running ``E[x x^T]`` per group and ``E[x]`` of a layer's input columns (``h`` stays None
    for a layer whose ``E[x x^T]`` would take more than MAX_H_BYTES: rounded to nearest)."""

    def __init__(self) -> None:
        self.h, self.mean, self.cross, self.n = None, None, None, 0

    def add(self, cols: np.ndarray, with_h: bool, cols_f: np.ndarray | None = None) -> None:
        c = cols.transpose(1, 0, 2)  # [G, P, k]
        if c.shape[0] * c.shape[2] ** 2 * 8 > MAX_H_BYTES:
            with_h, cols_f = False, None
        s = c.sum(axis=1, dtype=np.float64)
        self.mean = s if self.mean is None else self.mean + s
        if with_h:
            h = np.matmul(c.transpose(0, 2, 1), c).astype(np.float64)
            self.h = h if self.h is None else self.h + h
        if cols_f is not None:  # E[x_fp32 x_q^T]
            x = np.matmul(cols_f.transpose(1, 2, 0), c).astype(np.float64)
            self.cross = x if self.cross is None else self.cross + x
        self.n += cols.shape[0]

    def done(self) -> "_Stats":
        self.mean = self.mean / self.n
        if self.h is not None:
            self.h = self.h / self.n
        if self.cross is not None:
            self.cross = self.cross / self.n
        return self


def _centered(st: _Stats, mean_f: np.ndarray, frac: float) -> _Stats:
    """``st`` with ``frac`` of the mean outer products taken out of ``H`` and the cross term
    (``frac`` = 1: ``Cov[x_q]`` and ``Cov[x_f, x_q]``); the means are kept."""
    c = _Stats()
    c.mean, c.n = st.mean, st.n
    c.h = st.h - frac * st.mean[:, :, None] * st.mean[:, None, :]
    if st.cross is not None:
        c.cross = st.cross - frac * mean_f[:, :, None] * st.mean[:, None, :]
    return c


def _act_quant_nodes(g: onnx.GraphProto, node: onnx.NodeProto, opset: int) -> list[onnx.NodeProto]:
    """Nodes quantizing a 1x1 Conv's input per pixel as the engine does (for 1x1 the output
    pixel's column is the input pixel's channel vector), rewiring ``node`` to read it; larger
    kernels are not emulated in the graph. Same float32 operations as ``_act_quant`` (the
    clamp to [0, ACT_QMAX] is left out: (x - min) * inv never rounds past ACT_QMAX)."""
    x, p = node.input[0], f"{node.name}::aq"
    consts = {f"{p}_qmax": np.array(ACT_QMAX, np.float32), f"{p}_dmin": np.array(ACT_MIN_RANGE, np.float32)}
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    if opset >= 18:
        g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), f"{p}_axes"))
        red = [helper.make_node(op, [x, f"{p}_axes"], [f"{p}_{o}"], keepdims=1)
               for op, o in (("ReduceMin", "min"), ("ReduceMax", "max"))]
    else:
        red = [helper.make_node(op, [x], [f"{p}_{o}"], axes=[1], keepdims=1)
               for op, o in (("ReduceMin", "min"), ("ReduceMax", "max"))]
    new = red + [helper.make_node("Sub", [f"{p}_max", f"{p}_min"], [f"{p}_d"]),
                 helper.make_node("Max", [f"{p}_d", f"{p}_dmin"], [f"{p}_dc"]),
                 helper.make_node("Div", [f"{p}_qmax", f"{p}_dc"], [f"{p}_inv"]),
                 helper.make_node("Div", [f"{p}_d", f"{p}_qmax"], [f"{p}_s"]),
                 helper.make_node("Sub", [x, f"{p}_min"], [f"{p}_xm"]),
                 helper.make_node("Mul", [f"{p}_xm", f"{p}_inv"], [f"{p}_v"]),
                 helper.make_node("Round", [f"{p}_v"], [f"{p}_u"]),
                 helper.make_node("Mul", [f"{p}_u", f"{p}_s"], [f"{p}_us"]),
                 helper.make_node("Add", [f"{p}_us", f"{p}_min"], [f"{p}_q"])]
    for i, n in enumerate(new):
        n.name = f"{p}_{i}"
    node.input[0] = f"{p}_q"
    return new


def _substitute(g: onnx.GraphProto, node: onnx.NodeProto, layer: _Layer, r: RoundedLayer) -> None:
    """Make ONNX ``node`` compute with the rounded weight and bias (for simulation)."""
    w = r.dequantized()
    bias = r.bias if r.bias is not None else layer.bias
    wname, bname = f"{layer.name}::qsim_W", f"{layer.name}::qsim_B"
    if layer.onnx_op == "Conv":
        g.initializer.append(numpy_helper.from_array(w.reshape(layer.onnx_wshape or layer.wshape), wname))
        node.input[1] = wname
    elif layer.onnx_op == "Gemm":  # the engine's B is [K, N] with alpha and transB applied
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), wname))
        node.input[1] = wname
        keep = [a for a in node.attribute if a.name not in ("transB", "alpha", "beta")]
        del node.attribute[:]
        node.attribute.extend(keep + [helper.make_attribute("transB", 1), helper.make_attribute("alpha", 1.0),
                                      helper.make_attribute("beta", 1.0)])
    else:  # MatMul: the fused Add's bias is left as is (bias correction is not simulated)
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), wname))
        node.input[1] = wname
        return
    if bias is not None:
        g.initializer.append(numpy_helper.from_array(np.asarray(bias, np.float32), bname))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = bname
