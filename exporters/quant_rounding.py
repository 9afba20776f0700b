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
  int8 columns go in order of decreasing ``H_jj`` (act-order; the scale is per row, so
  the order does not touch the stored format). With bias correction ``H`` is centred
  (``Cov[x]``, ``center``): the mean part of the error is what bias correction removes,
  so GPTQ spends its freedom on the part that remains.
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
relative logit error (benchmarks/results/quant.md has the measured effect). There, at
blocks.7, the engine's activation quantization alone (fp32 weights, simulated) already
gives ~1.0 % of the ~1.3 % logit error of all-int8 on held-out calibration crops: most
of what is left comes from it, not from the weights (the project convs read ReLU6
outputs whose per-pixel range is ~6, so the step is ~6/255 whatever the weights do).

Example:
    >>> r = FrontRounder(front, calib_x, group_size=32)                        # doctest: +SKIP
    >>> rounded = r.sequential({"conv1": "int8", "conv2": "int4"})             # doctest: +SKIP
    >>> write_erg(front, "front.erg", precisions=..., rounded=rounded)         # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from edgerun.errors import ConfigError, ExportError
from edgerun.feeds import as_feeds, float32, n_samples
from edgerun.exporters.erg_quant import PREC_DTYPE, _TINY, check_group_size, dequantize, pack_int4
from edgerun.exporters.quant_stats import ACT_MIN_RANGE, ACT_QMAX  # noqa: F401 (re-exported)
from edgerun.exporters.quant_stats import (_act_quant, _act_quant_nodes, _centered, _columns, _Stats,
                                           _substitute)

METHODS = ("rtn", "gptq")
QMAX = {"int8": 127, "int4": 7}

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
        center: with bias correction, GPTQ (and the fp32 target fit) use
            ``E[x x^T] - center * E[x] E[x]^T``: 1 minimises the output error's covariance
            only (bias correction removes its mean on calibration data), 0 the full second
            moment; in between keeps a share of the mean direction so the rounding does not
            park large errors there.
        act_order: int8 GPTQ quantizes the columns in order of decreasing ``H_jj`` (the
            scale is per row, so the stored format is unchanged).

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
    center: float = 1.0
    act_order: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown rounding method {self.method!r}; use one of {', '.join(METHODS)}")
        if not 0.0 <= self.center <= 1.0:
            raise ConfigError(f"center must be in [0, 1], got {self.center!r}")
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
    # "gptq", or "rtn": rounded to nearest, as asked or because GPTQ's statistics of this layer
    # would exceed quant_stats.MAX_H_BYTES (the export reports those layers)
    method: str = "rtn"

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
    try:
        return _upper_chol_of_inverse(h)
    except np.linalg.LinAlgError:
        # H centred on the fp32 inputs' mean (RoundingConfig.center) is not a covariance
        # of the quantized inputs, so it can be indefinite; with few calibration pixels the
        # dampening did not cover its negative eigenvalues and the Cholesky raised out of
        # the exporter. Shift the diagonal past the most negative eigenvalue per group.
        low = np.linalg.eigvalsh(h)[:, :1]
        h[:, np.arange(k), np.arange(k)] += np.maximum(-low, 0.0) + damp * mean
        return _upper_chol_of_inverse(h)


def _upper_chol_of_inverse(h: np.ndarray) -> np.ndarray:
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
    if cfg.act_order and prec == "int8" and w.shape[-1] > 1:
        perm = np.argsort(-np.einsum("gii->gi", h), axis=1, kind="stable")  # [G, k]
        inv = np.argsort(perm, axis=1, kind="stable")
        wp = np.take_along_axis(w, perm[:, None, :], axis=-1)
        hp = np.take_along_axis(np.take_along_axis(h, perm[:, :, None], axis=1), perm[:, None, :], axis=2)
        q, s = round_matrix(prec, wp, hp, group_size, _no_act_order(cfg))
        return np.take_along_axis(q, inv[:, None, :], axis=-1), s
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


def _no_act_order(cfg: RoundingConfig) -> RoundingConfig:
    from dataclasses import replace

    return replace(cfg, act_order=False)


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
    onnx_wshape: tuple = ()  # Conv: the ONNX weight's dims ([O, C/g, k] for a Conv1d)

    def grouped(self) -> np.ndarray:
        return self.w2.reshape(self.groups, -1, self.w2.shape[1])

    def act_quantized(self, prec: str, min_k: int | None) -> bool:
        """Whether the engine quantizes this layer's input at run time (int8 GEMM path)."""
        depthwise = self.groups > 1 and self.groups == self.wshape[0] and self.wshape[1] == 1
        return (min_k is not None and prec == "int8" and self.op == "Conv" and not depthwise
                and self.w2.shape[1] >= min_k)



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
        src = by_name[e.name]  # its ONNX input: a Conv1d's engine input is a 2-D view of it
        layers.append(_Layer(e.name, e.op, src.op_type, src.input[0], _weight_rows(e, w),
                             None if bias is None else np.asarray(bias, np.float32).copy(),
                             tuple(w.shape), geom, geom[8] if geom else 1,
                             tuple(ctx.consts[src.input[1]].shape) if e.op == "Conv" else ()))
    return layers, ctx.graph


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

    def __init__(self, front: onnx.ModelProto, calib_x: np.ndarray | dict[str, np.ndarray], group_size: int = 32,
                 cfg: RoundingConfig = RoundingConfig()) -> None:
        self.x = float32(calib_x)  # one array, or {input name: array} for a front that reads several
        if any(a.ndim < 1 or len(a) == 0 for a in (self.x.values() if isinstance(self.x, dict) else [self.x])):
            raise ExportError("data-aware rounding needs a non-empty calibration batch; pass calib_x")
        self.gs, self.cfg = check_group_size(group_size), cfg
        self.layers, self.graph = _front_layers(front)
        self.by_name = {l.name: l for l in self.layers}
        self.opset = list(front.opset_import)
        self.opset_version = next((o.version for o in self.opset if o.domain in ("", "ai.onnx")), 18)
        self.input_names = [i.name for i in self.graph.input if i.name not in {t.name for t in self.graph.initializer}]
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
        x = as_feeds(self.x, self.input_names)
        for i in range(0, n_samples(x), self.cfg.chunk):
            feed = {k: v[i:i + self.cfg.chunk] for k, v in x.items()}
            vals = dict(zip(outs, sess.run(outs, feed)))
            fvals = dict(zip(outs, ref.run(outs, feed))) if ref is not None else vals
            for l in layers:
                cols = _columns(l, vals[l.x])
                cols_f = _columns(l, fvals[l.x]) if cross else None
                stats[l.name].add(_act_quant(cols) if l.name in aq else cols, with_h, cols_f)
        return {n: s.done() for n, s in stats.items()}

    def _round(self, layer: _Layer, prec: str, st: _Stats) -> RoundedLayer:
        w = layer.grouped()
        if (self.cfg.center > 0 and self.cfg.bias_correction and layer.onnx_op != "MatMul"
                and st.h is not None):
            st = _centered(st, self.fp32[layer.name].mean, self.cfg.center)
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
        method = "gptq" if self.cfg.method == "gptq" and st.h is not None else "rtn"  # see _Stats
        k = layer.w2.shape[1]
        qq, ss = to_stored(prec, q, s, k, self.gs)
        r = RoundedLayer(prec, qq, ss, None, k, self.gs, method)
        if not self.cfg.bias_correction or layer.onnx_op == "MatMul":
            return r  # a MatMul's bias lives in a separate Add: not corrected (not simulated)
        wq = r.dequantized().reshape(layer.groups, -1, k).astype(np.float64)
        shift = (np.einsum("grk,gk->gr", layer.grouped().astype(np.float64), self.fp32[layer.name].mean)
                 - np.einsum("grk,gk->gr", wq, st.mean)).reshape(-1)
        base = np.zeros(len(shift)) if layer.bias is None else layer.bias.astype(np.float64)
        return RoundedLayer(prec, qq, ss, (base + shift).astype(np.float32), k, self.gs, method)

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


__all__ = ["FrontRounder", "RoundedLayer", "RoundingConfig", "round_matrix", "to_stored", "METHODS"]
