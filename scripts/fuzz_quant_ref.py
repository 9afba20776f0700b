"""numpy reference of the native engine's quantized layers, for ``scripts/fuzz_quant.py``.

Independent of the engine: each node of a fuzz net is recomputed in float64 from the
engine's own input tensor to it (every intermediate is an extra output of the probe
file), with the weights the exporter stored (``erg_quant.fake_quantize`` or a
``RoundedLayer``) and, for an int8 GEMM Conv, the per-pixel asymmetric 8-bit activation
quantization documented in ``cpp/src/kernels_qgemm.cpp`` (float32 operations, so the
rounding of every activation falls the same way as in the engine).
"""

from __future__ import annotations

import numpy as np

from edgerun.exporters.erg_quant import fake_quantize

S8_MIN_K = 40          # edgerun::kernels::kS8MinK
ACT_QMAX = np.float32(255)
ACT_MIN_RANGE = np.float32(1e-30)


def act_quant(cols: np.ndarray) -> np.ndarray:
    """Per pixel (last axis = K) asymmetric 8 bits in float32, as the engine; a pixel
    holding a NaN becomes all NaN (what an fp32 Conv gives it)."""
    cols = cols.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        mn = cols.min(axis=-1, keepdims=True)
        d = cols.max(axis=-1, keepdims=True) - mn
        inv = ACT_QMAX / np.maximum(d, ACT_MIN_RANGE)
        u = np.clip(np.rint((cols - mn) * inv), 0, 255).astype(np.float64)
        xq = u * (d / ACT_QMAX).astype(np.float64) + mn.astype(np.float64)
    return xq


def im2col(x: np.ndarray, kh: int, kw: int, stride: int, pads: list[int], groups: int) -> np.ndarray:
    """x [N, C, H, W] -> columns [N, G, OH * OW, C / G * kh * kw] (channel-major K, as ONNX)."""
    n, c, h, w = x.shape
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh, ow = (h + pt + pb - kh) // stride + 1, (w + pl + pr - kw) // stride + 1
    cols = np.stack([xp[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
                     for i in range(kh) for j in range(kw)], 2)          # n, c, kh*kw, oh, ow
    cols = cols.reshape(n, groups, (c // groups) * kh * kw, oh * ow).transpose(0, 1, 3, 2)
    return cols, oh, ow


def layer_weight(prec: str, w2: np.ndarray, gs: int, rounded) -> np.ndarray:
    """The f32 [rows, k] weight the engine computes with."""
    if rounded is not None:
        return rounded.dequantized()
    return fake_quantize(prec, w2, gs)


def conv_ref(x, w, b, stride, pads, groups, prec, gs, s8, rounded=None):
    """One Conv (no activation): (float64 output, per-output error scale ||w||_1 ||x||_inf)."""
    co, cg, kh, kw = w.shape
    wq = layer_weight(prec, w.reshape(co, -1), gs, rounded).astype(np.float64)
    bias = (rounded.bias if rounded is not None and rounded.bias is not None else b)
    cols, oh, ow = im2col(x, kh, kw, stride, pads, groups)
    colsq = act_quant(cols) if s8 else cols.astype(np.float64)
    n = x.shape[0]
    out = np.zeros((n, co, oh * ow))
    scale = np.zeros((n, co, oh * ow))
    og = co // groups
    with np.errstate(invalid="ignore", over="ignore"):
        for g in range(groups):
            wg = wq[g * og:(g + 1) * og]
            out[:, g * og:(g + 1) * og] = np.einsum("ok,npk->nop", wg, colsq[:, g])
            xinf = np.nanmax(np.abs(cols[:, g].astype(np.float64)), axis=-1, initial=0.0)  # n, p
            scale[:, g * og:(g + 1) * og] = np.abs(wg).sum(1)[None, :, None] * xinf[:, None, :]
    if bias is not None:
        out += np.asarray(bias, np.float64)[None, :, None]
        scale += np.abs(np.asarray(bias, np.float64))[None, :, None]
    return out.reshape(n, co, oh, ow), scale.reshape(n, co, oh, ow)


def gemm_ref(x, bmat, c, trans_b, prec, gs, rounded=None):
    """Gemm (alpha = beta = 1): (output, error scale)."""
    w2 = bmat if trans_b else bmat.T                      # [N_out, K]
    wq = layer_weight(prec, w2, gs, rounded).astype(np.float64)
    bias = rounded.bias if rounded is not None and rounded.bias is not None else c
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        out = x64 @ wq.T
        xinf = np.nanmax(np.abs(x64), axis=-1, initial=0.0)
        scale = np.abs(wq).sum(1)[None, :] * xinf[:, None]
    if bias is not None:
        out = out + np.asarray(bias, np.float64)[None, :]
        scale = scale + np.abs(np.asarray(bias, np.float64))[None, :]
    return out, scale
