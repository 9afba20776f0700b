"""Data-aware rounding of front-half weights: GPTQ + bias correction (numpy + onnxruntime).

Round-to-nearest per-channel int8 moves every weight by up to half a step, and on
EfficientNet-Lite0 that error alone flips near-tie crops. This module picks the
integer weights (and fixes the bias) with the calibration batch instead, keeping the
stored format of ``erg_quant`` exactly (only q, scales and the fp32 bias change):

* GPTQ (Frantar et al. 2022): per layer, ``H = E[x x^T]`` over the layer's real input
  columns (im2col; one H per group, so per channel for depthwise), dampened; columns are
  quantized in order and each one's error is pushed onto the not yet quantized columns
  through ``cholesky(H^-1)``. Scales are per output channel (int8) or per group (int4),
  each clip ratio searched to minimise the output error ``e H e^T`` of plain rounding.
* Bias correction (Nagel et al. 2019): ``b += W E[x_fp32] - W_q E[x_q]`` per channel,
  so the mean output of each quantized layer matches the fp32 network's.
* Sequential: layers are rounded in network order on the inputs ``x_q`` produced by
  the already quantized layers before them, and GPTQ fits the fp32 network's output
  ``W x_fp32`` from them (``fp32_target``), so later layers compensate earlier errors.
* The engine's run-time activation quantization of int8 GEMM Convs (per output pixel,
  asymmetric 8 bits over the pixel's min..max) is emulated (``act_quant_min_k``), so
  statistics and bias correction see what the engine computes.

Layer inputs come from running the front half in onnxruntime (1 thread) with the
needed intermediate tensors as outputs and the quantized weights substituted; on
EfficientNet-Lite0 this simulation matches the native engine's outputs to ~1e-4
relative logit error (benchmarks/results/quant.md has the measured effect).

Example:
    >>> r = FrontRounder(front, calib_x, group_size=32)                        # doctest: +SKIP
    >>> rounded = r.sequential({"conv1": "int8", "conv2": "int4"})             # doctest: +SKIP
    >>> write_erg(front, "front.erg", precisions=..., rounded=rounded)         # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgerun.errors import ConfigError, ExportError
from edgerun.exporters.erg_quant import PREC_DTYPE, _TINY, check_group_size, dequantize, pack_int4

METHODS = ("rtn", "gptq")
QMAX = {"int8": 127, "int4": 7}
# The engine's int8 GEMM quantizes each output pixel's K activations to u in [0, ACT_QMAX]:
# u = rne((x - min) * inv), inv = ACT_QMAX / max(max - min, ACT_MIN_RANGE), and multiplies
# x_hat = u * (max - min) / ACT_QMAX + min (kQMax / kQMinRange in cpp/src/qgemm_ukr.h).
ACT_QMAX = 255
ACT_MIN_RANGE = 1e-30


@dataclass(frozen=True)
class RoundingConfig:
    """How weights are rounded.

    Args:
        method: "gptq" (error-compensating, data-aware) or "rtn" (round to nearest;
            with ``bias_correction`` False this is exactly ``erg_quant.quantize``).
        bias_correction: add ``W E[x] - W_q E[x_q]`` to each quantized layer's bias.
        damp: GPTQ dampening, a fraction of the mean diagonal of H added to it.
        clip_ratios: candidate scale ratios (of max|w|) searched per channel / group.
        chunk: calibration inputs per onnxruntime run (bounds memory).
        fp32_target: GPTQ fits the fp32 network's layer output ``W x_fp32`` from the
            quantized inputs ``x_q`` (``W' = W E[x_fp32 x_q^T] H_q^-1`` is rounded) rather
            than ``W x_q``, so each layer also absorbs the error of the layers before it.
        act_quant_min_k: emulate the native engine's run-time activation quantization
            (per output pixel, asymmetric 8 bits) on the inputs of int8 non-depthwise
            Convs with K >= this (mirror of ``kS8MinK`` in ``cpp/include/edgerun/kernels.h``),
            so rounding and bias correction see the inputs those layers really multiply;
            None: no emulation.

    Raises:
        ConfigError: an unknown method or out-of-range numbers.
    """

    method: str = "gptq"
    bias_correction: bool = True
    damp: float = 0.01
    clip_ratios: tuple[float, ...] = (1.0, 0.96, 0.92, 0.88, 0.84, 0.8)
    chunk: int = 8
    fp32_target: bool = True
    act_quant_min_k: int | None = 40

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown rounding method {self.method!r}; use one of {', '.join(METHODS)}")
        if not 0.0 <= self.damp <= 1.0:
            raise ConfigError(f"damp must be in [0, 1], got {self.damp!r}")
        if not self.clip_ratios or any(not 0.0 < r <= 1.0 for r in self.clip_ratios):
            raise ConfigError(f"clip_ratios must be non-empty, each in (0, 1], got {self.clip_ratios!r}")
        if self.chunk < 1:
            raise ConfigError(f"chunk must be >= 1, got {self.chunk!r}")


@dataclass(frozen=True)
class RoundedLayer:
    """One layer's weights in the stored format of ``erg_quant`` plus its corrected bias."""

    prec: str
    q: np.ndarray            # int8 [rows, k] or packed int4 u8 [rows, groups * gs / 2]
    scales: np.ndarray       # f32 [rows] or [rows, groups]
    bias: np.ndarray | None  # f32 [rows]: replaces the layer's bias (None: keep it)
    k: int
    group_size: int

    def dequantized(self) -> np.ndarray:
        """The f32 [rows, k] weight the engine computes with."""
        return dequantize(PREC_DTYPE[self.prec], self.q, self.scales, k=self.k, group_size=self.group_size)


# ---------------------------------------------------------------------------
# numpy core: one weight matrix, its input statistics
# ---------------------------------------------------------------------------
def _rtn(w: np.ndarray, s: np.ndarray, qmax: int) -> np.ndarray:
    return np.clip(np.rint(w / s), -qmax, qmax)


def _search_scales(w: np.ndarray, h: np.ndarray, qmax: int, ratios) -> np.ndarray:
    """Per row of ``w`` [G, R, n] the scale (ratio x max|row| / qmax) whose plain rounding
    gives the least output error ``e H e^T`` (H [G, n, n]): f32 [G, R]."""
    amax = np.abs(w).max(axis=-1)
    best_s, best_e = None, None
    for r in ratios:
        s = np.maximum(amax * np.float32(r) / np.float32(qmax), _TINY).astype(np.float32)
        e = (w - _rtn(w, s[..., None], qmax) * s[..., None]).astype(np.float64)
        err = np.sum(np.matmul(e, h) * e, axis=-1)
        if best_s is None:
            best_s, best_e = s, err
        else:
            better = err < best_e
            best_s, best_e = np.where(better, s, best_s), np.where(better, err, best_e)
    return best_s


def _chol_inverse(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor U of (H + damp)^-1 (``H^-1 = U^T U``), batched over groups."""
    h = h.astype(np.float64).copy()
    k = h.shape[-1]
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0  # an input that is always 0 on calib data: keep its weight, no feedback
    for g, i in zip(*np.nonzero(dead)):
        h[g, i, :], h[g, :, i] = 0.0, 0.0
    diag = np.einsum("gii->gi", h)
    diag[dead] = 1.0
    mean = np.maximum(diag.mean(axis=1, keepdims=True), 1e-12)
    h[:, np.arange(k), np.arange(k)] = diag + damp * mean
    hinv = np.linalg.inv(h)
    hinv = (hinv + hinv.transpose(0, 2, 1)) / 2
    return np.linalg.cholesky(hinv).transpose(0, 2, 1)


def round_matrix(prec: str, w: np.ndarray, h: np.ndarray | None, group_size: int = 32,
                 cfg: RoundingConfig = RoundingConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Round a weight ``w`` [G, R, k] (G groups of R rows sharing an input) at ``prec``.

    Args:
        prec: "int8" (one scale per row) or "int4" (one per ``group_size`` values of a row).
        w: the f32 weights, grouped by which input statistics they see.
        h: ``E[x x^T]`` per group [G, k, k]; None (or ``cfg.method == "rtn"``) rounds to nearest.
        group_size: int4 group size.
        cfg: method, dampening and clip ratios.

    Returns:
        (integer values [G, R, k or padded k] as f32, scales [G, R] or [G, R, groups]).
    """
    qmax = QMAX[prec]
    gsz = w.shape[-1] if prec == "int8" else group_size
    n_groups = -(-w.shape[-1] // gsz)
    w = np.pad(np.asarray(w, np.float32), ((0, 0), (0, 0), (0, n_groups * gsz - w.shape[-1])))
    if h is None or cfg.method == "rtn":
        s = np.maximum(np.abs(w.reshape(*w.shape[:2], n_groups, gsz)).max(-1) / np.float32(qmax),
                       _TINY).astype(np.float32)
        q = _rtn(w, np.repeat(s, gsz, axis=-1), qmax)
        return q, (s[..., 0] if prec == "int8" else s)
    k0 = h.shape[-1]
    hp = np.zeros((h.shape[0], w.shape[-1], w.shape[-1]))
    hp[:, :k0, :k0] = h
    u = _chol_inverse(hp, cfg.damp)
    w = w.astype(np.float64)
    q = np.zeros_like(w, dtype=np.float32)
    s_all = np.zeros((*w.shape[:2], n_groups), np.float32)
    for j in range(w.shape[-1]):
        if j % gsz == 0:  # scale of the group from the already error-updated weights
            sl = slice(j, j + gsz)
            s_all[..., j // gsz] = _search_scales(w[..., sl].astype(np.float32), hp[:, sl, sl],
                                                  qmax, cfg.clip_ratios)
        s = s_all[..., j // gsz].astype(np.float64)
        qj = _rtn(w[..., j], s, qmax)
        q[..., j] = qj
        err = (w[..., j] - qj * s) / u[:, None, j, j]
        w[..., j + 1:] -= err[..., None] * u[:, None, j, j + 1:]
    return q, (s_all[..., 0] if prec == "int8" else s_all)


def to_stored(prec: str, q: np.ndarray, s: np.ndarray, k: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """[G, R, ...] integer values and scales -> the stored (q, scales) of ``erg_quant``."""
    rows = q.shape[0] * q.shape[1]
    q2 = q.reshape(rows, -1)
    if prec == "int8":
        return q2[:, :k].astype(np.int8), s.reshape(rows).astype(np.float32)
    return pack_int4(q2), s.reshape(rows, -1).astype(np.float32)


# ---------------------------------------------------------------------------
# Layers of the front half and their input statistics
# ---------------------------------------------------------------------------
@dataclass
class _Layer:
    name: str
    op: str                 # Conv | Gemm | MatMul (as lowered: Gemm covers MatMul)
    onnx_op: str
    x: str                  # input tensor name
    w2: np.ndarray          # f32 [rows, k]
    bias: np.ndarray | None
    wshape: tuple           # the engine weight's dims (Conv [O, C/g, kh, kw])
    geom: tuple             # Conv: (sh, sw, dh, dw, pt, pl, pb, pr, group)
    groups: int

    def grouped(self) -> np.ndarray:
        return self.w2.reshape(self.groups, -1, self.w2.shape[1])

    def act_quantized(self, prec: str, min_k: int | None) -> bool:
        """Whether the engine quantizes this layer's input at run time (int8 GEMM path)."""
        depthwise = self.groups > 1 and self.groups == self.wshape[0] and self.wshape[1] == 1
        return (min_k is not None and prec == "int8" and self.op == "Conv" and not depthwise
                and self.w2.shape[1] >= min_k)


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


def _front_layers(model: onnx.ModelProto):
    """The Conv / Gemm layers as lowered by ``erg`` (names, engine-layout weights), and the
    named, shape-inferred ONNX graph they come from."""
    from edgerun.exporters.erg import _PREC_SLOT, _lower_all, _prepare, _weight_rows

    ctx = _prepare(model, ())
    _lower_all(ctx, None)
    by_name = {n.name: n for n in ctx.graph.node}
    layers = []
    for e in ctx.nodes:
        if e.op not in _PREC_SLOT:
            continue
        w = ctx.weights[e.inputs[1]]
        bias = ctx.weights[e.inputs[2]] if len(e.inputs) > 2 and e.inputs[2] else None
        geom = tuple(e.iattr[:9]) if e.op == "Conv" else ()
        layers.append(_Layer(e.name, e.op, by_name[e.name].op_type, e.inputs[0], _weight_rows(e, w),
                             None if bias is None else np.asarray(bias, np.float32).copy(),
                             tuple(w.shape), geom, geom[8] if geom else 1))
    return layers, ctx.graph


class _Stats:
    """Running ``E[x x^T]`` per group and ``E[x]`` of a layer's input columns."""

    def __init__(self) -> None:
        self.h, self.mean, self.cross, self.n = None, None, None, 0

    def add(self, cols: np.ndarray, with_h: bool, cols_f: np.ndarray | None = None) -> None:
        c = cols.transpose(1, 0, 2)  # [G, P, k]
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


class FrontRounder:
    """Data-aware rounding of a front half's Conv / Gemm weights on a calibration batch.

    Args:
        front: the front half as ONNX (as given to ``write_erg``).
        calib_x: calibration inputs (float32, batch first), disjoint from eval data.
        group_size: int4 group size.
        cfg: the rounding method.

    Raises:
        ExportError: an empty calibration batch.
        UnsupportedOpError: the native engine cannot run ``front``.
    """

    def __init__(self, front: onnx.ModelProto, calib_x: np.ndarray, group_size: int = 32,
                 cfg: RoundingConfig = RoundingConfig()) -> None:
        self.x = np.ascontiguousarray(calib_x, np.float32)
        if self.x.ndim < 1 or len(self.x) == 0:
            raise ExportError("data-aware rounding needs a non-empty calibration batch; pass calib_x")
        self.gs, self.cfg = check_group_size(group_size), cfg
        self.layers, self.graph = _front_layers(front)
        self.by_name = {l.name: l for l in self.layers}
        self.opset = list(front.opset_import)
        self.opset_version = next((o.version for o in self.opset if o.domain in ("", "ai.onnx")), 18)
        self.input_name = next(i.name for i in self.graph.input
                               if i.name not in {t.name for t in self.graph.initializer})
        need_h = cfg.method == "gptq"
        self.fp32 = self._stats(self.layers, {}, need_h)  # fp32 inputs of every layer
        self._aq_alone: dict[str, _Stats] = {}  # engine-quantized fp32 inputs, on demand

    def _model(self, rounded: dict[str, RoundedLayer], outputs: list[str]) -> bytes:
        g = onnx.GraphProto()
        g.CopyFrom(self.graph)
        del g.output[:]
        g.output.extend(helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs)
        nodes = {n.name: n for n in g.node}
        for name, r in rounded.items():
            _substitute(g, nodes[name], self.by_name[name], r)
        aq = {n for n, r in rounded.items() if self.by_name[n].wshape[2:] == (1, 1)
              and self.by_name[n].act_quantized(r.prec, self.cfg.act_quant_min_k)}
        if aq:
            order = []
            for n in g.node:
                c = onnx.NodeProto()
                c.CopyFrom(n)
                if n.name in aq:
                    order += _act_quant_nodes(g, c, self.opset_version)
                order.append(c)
            del g.node[:]
            g.node.extend(order)
        m = helper.make_model(g, opset_imports=self.opset)
        m.ir_version = min(m.ir_version, 10)
        return m.SerializeToString()

    def _stats(self, layers: list[_Layer], rounded: dict, with_h: bool, cross: bool = False,
               aq: frozenset = frozenset()) -> dict[str, _Stats]:
        """Input statistics of ``layers`` with ``rounded`` substituted; for the layers in
        ``aq`` of the engine-quantized inputs; with ``cross``, also ``E[x_fp32 x^T]``."""
        import onnxruntime as ort

        outs = list(dict.fromkeys(l.x for l in layers))
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads, o.log_severity_level = 1, 1, 3
        sess = ort.InferenceSession(self._model(rounded, outs), o, providers=["CPUExecutionProvider"])
        ref = ort.InferenceSession(self._model({}, outs), o, providers=["CPUExecutionProvider"]) \
            if cross and rounded else None
        stats = {l.name: _Stats() for l in layers}
        for i in range(0, len(self.x), self.cfg.chunk):
            feed = {self.input_name: self.x[i:i + self.cfg.chunk]}
            vals = dict(zip(outs, sess.run(outs, feed)))
            fvals = dict(zip(outs, ref.run(outs, feed))) if ref is not None else vals
            for l in layers:
                cols = _columns(l, vals[l.x])
                cols_f = _columns(l, fvals[l.x]) if cross else None
                stats[l.name].add(_act_quant(cols) if l.name in aq else cols, with_h, cols_f)
        return {n: s.done() for n, s in stats.items()}

    def _round(self, layer: _Layer, prec: str, st: _Stats) -> RoundedLayer:
        w = layer.grouped()
        if st.cross is not None and st.h is not None:
            # W' = W + W (E[x_f x_q^T] - H_q) (H_q + damp)^-1 fits W x_f from x_q; only the
            # correction is dampened, so W' = W exactly when x_q = x_f.
            h = st.h.copy()
            k = h.shape[-1]
            h[:, np.arange(k), np.arange(k)] += self.cfg.damp * np.maximum(
                np.einsum("gii->gi", h).mean(axis=1, keepdims=True), 1e-12)
            w64 = w.astype(np.float64)
            w = (w64 + np.matmul(np.matmul(w64, st.cross - st.h), np.linalg.inv(h))).astype(np.float32)
        q, s = round_matrix(prec, w, st.h, self.gs, self.cfg)
        k = layer.w2.shape[1]
        qq, ss = to_stored(prec, q, s, k, self.gs)
        r = RoundedLayer(prec, qq, ss, None, k, self.gs)
        if not self.cfg.bias_correction or layer.onnx_op == "MatMul":
            return r  # a MatMul's bias lives in a separate Add: not corrected (not simulated)
        wq = r.dequantized().reshape(layer.groups, -1, k).astype(np.float64)
        shift = (np.einsum("grk,gk->gr", layer.grouped().astype(np.float64), self.fp32[layer.name].mean)
                 - np.einsum("grk,gk->gr", wq, st.mean)).reshape(-1)
        base = np.zeros(len(shift)) if layer.bias is None else layer.bias.astype(np.float64)
        return RoundedLayer(prec, qq, ss, (base + shift).astype(np.float32), k, self.gs)

    def alone(self, name: str, prec: str) -> RoundedLayer:
        """``name`` rounded at ``prec`` with every other layer fp32 (for sensitivities)."""
        layer = self.by_name[name]
        if not layer.act_quantized(prec, self.cfg.act_quant_min_k):
            return self._round(layer, prec, self.fp32[name])
        if name not in self._aq_alone:
            self._aq_alone.update(self._stats(
                [l for l in self.layers if l.act_quantized("int8", self.cfg.act_quant_min_k)], {},
                self.cfg.method == "gptq", self.cfg.method == "gptq" and self.cfg.fp32_target,
                frozenset(l.name for l in self.layers)))
        return self._round(layer, prec, self._aq_alone[name])

    def sequential(self, precisions: dict[str, str]) -> dict[str, RoundedLayer]:
        """Round every int8 / int4 layer of ``precisions`` in network order, each on the
        inputs produced by the already rounded layers before it.

        Returns:
            ``{layer: RoundedLayer}``; pass it as ``write_erg(..., rounded=...)``.
        """
        done: dict[str, RoundedLayer] = {}
        for l in self.layers:
            prec = precisions.get(l.name, "fp32")
            if prec == "fp32":
                continue
            if prec not in QMAX:
                raise ExportError(f"layer {l.name!r}: cannot round to {prec!r}; use int8 or int4")
            gptq = self.cfg.method == "gptq"
            aq = l.act_quantized(prec, self.cfg.act_quant_min_k)
            st = self.fp32[l.name] if not done and not aq else self._stats(
                [l], done, gptq, gptq and self.cfg.fp32_target,
                frozenset([l.name] if aq else []))[l.name]
            done[l.name] = self._round(l, prec, st)
        return done


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
        g.initializer.append(numpy_helper.from_array(w.reshape(layer.wshape), wname))
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


__all__ = ["FrontRounder", "RoundedLayer", "RoundingConfig", "round_matrix", "to_stored", "METHODS"]
