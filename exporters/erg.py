"""ONNX -> engine graph (".erg") converter for the native engine.

The file layout is documented in ``cpp/include/edgerun/ERG.md``; the C++ loader
(``cpp/src/graph.cpp``) validates everything this module writes. Each ONNX op
is lowered by one function registered in ``_LOWER`` with ``@_lowers("Op")``;
supporting a new op is one new function.

Example:
    >>> import onnx
    >>> from edgerun.exporters.erg import check_native_support, write_erg
    >>> model = onnx.load("front.onnx")                      # doctest: +SKIP
    >>> assert not check_native_support(model)               # doctest: +SKIP
    >>> info = write_erg(model, "front.erg")                 # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from edgerun.errors import ExportError, UnsupportedOpError

from edgerun.exporters.erg_quant import PREC_CODE, PREC_DTYPE, check_group_size, quantize
from edgerun.exporters.erg_write import (  # noqa: F401 - re-exported format constants
    ACT_CLIP, ACT_NONE, ACT_RELU, ALIGN, FLT_MAX, HEADER_BYTES, KIND_ACT, KIND_INPUT, KIND_WEIGHT,
    MAGIC, MAX_DIMS, N_FATTR, N_IATTR, NO_TENSOR, NODE_BYTES, OP, TENSOR_BYTES, VERSION,
    VERSION_QUANT, read_erg_header, serialize)


class _Unsupported(Exception):
    """Raised by a lowering function: the engine cannot run this node (reason in args)."""


@dataclass
class _ENode:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    iattr: list[int] = field(default_factory=list)
    fattr: list[float] = field(default_factory=list)


@dataclass
class _Ctx:
    """Conversion state: constants, shapes, consumers and the engine nodes emitted so far."""

    consts: dict[str, np.ndarray]
    shapes: dict[str, list[int]]
    consumers: dict[str, list[onnx.NodeProto]]
    protected: set[str]
    nodes: list[_ENode] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    qmeta: dict[str, tuple[int, list[int], int]] = field(default_factory=dict)  # (dtype, dims, group)
    skip: set[int] = field(default_factory=set)  # ids of ONNX nodes fused into an earlier one
    onnx_nodes: list[onnx.NodeProto] = field(default_factory=list)  # left after folding
    graph: onnx.GraphProto | None = None
    opset: int = 20  # the model's default-domain opset

    def weight(self, name: str, array: np.ndarray) -> str:
        self.weights[name] = np.ascontiguousarray(array, dtype=np.float32)
        return name

    def const(self, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise _Unsupported(f"{what} must be a constant")
        return self.consts[name]

    def sole_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The only node reading ``tensor``, when it may be fused away (not an output)."""
        users = self.consumers.get(tensor, [])
        if tensor in self.protected or len(users) != 1:
            return None
        return users[0]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


_LOWER: dict[str, Callable[[_Ctx, onnx.NodeProto], None]] = {}


def _lowers(*op_types: str):
    def register(fn):
        for op in op_types:
            _LOWER[op] = fn
        return fn
    return register


# ---------------------------------------------------------------------------
# Lowering functions: one ONNX op -> engine node(s)
# ---------------------------------------------------------------------------
def _fused_act(ctx: _Ctx, out: str) -> tuple[int, float, float, str]:
    """Relu / Clip right after a Conv or Gemm folds into it: (act, lo, hi, final output)."""
    nxt = ctx.sole_consumer(out)
    if nxt is not None and nxt.op_type == "Relu":
        ctx.skip.add(id(nxt))
        return ACT_RELU, 0.0, 0.0, nxt.output[0]
    if nxt is not None and nxt.op_type == "Clip":
        try:
            lo, hi = _clip_bounds(ctx, nxt)
        except _Unsupported:
            return ACT_NONE, 0.0, 0.0, out
        ctx.skip.add(id(nxt))
        return ACT_CLIP, lo, hi, nxt.output[0]
    return ACT_NONE, 0.0, 0.0, out


@_lowers("Conv")
def _conv(ctx: _Ctx, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    w = ctx.const(node.input[1], "the Conv weight")
    if w.ndim not in (3, 4):
        raise _Unsupported("only 1-D and 2-D convolution (3-D or 4-D weight) is supported")
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        raise _Unsupported("auto_pad SAME_* is not supported (export with explicit pads)")
    s, d = a.get("strides", [1, 1]), a.get("dilations", [1, 1])
    p = a.get("pads", [0, 0, 0, 0])
    x = node.input[0]
    if w.ndim == 3:  # Conv1d [N, C, L] runs as a 2-D conv on [N, C, 1, L] (the same bytes)
        s, d = [1, a.get("strides", [1])[0]], [1, a.get("dilations", [1])[0]]
        p1 = a.get("pads", [0, 0])
        p = [0, p1[0], 0, p1[1]]
        w = w[:, :, None, :]
        if len(ctx.shapes.get(node.output[0], [])) != 3:
            raise _Unsupported("a Conv1d whose output is not [N, C, L] with known C and L")
        x = _as_2d(ctx, node, x)
    ins = [x, ctx.weight(node.input[1], w)]
    if len(node.input) > 2 and node.input[2]:
        ins.append(ctx.weight(node.input[2], ctx.const(node.input[2], "the Conv bias")))
    act, lo, hi, out = _fused_act(ctx, node.output[0])
    y = out
    if x != node.input[0]:
        y = f"{out}::2d"
        n, c, length = ctx.shapes[out]
        ctx.shapes[y] = [n, c, 1, length]
    ctx.nodes.append(_ENode("Conv", node.name, ins, [y],
                            [s[0], s[1], d[0], d[1], p[0], p[1], p[2], p[3], a.get("group", 1), act],
                            [lo, hi]))
    if y != out:
        ctx.nodes.append(_ENode("Reshape", f"{node.name}::1d", [y], [out]))


def _as_2d(ctx: _Ctx, node: onnx.NodeProto, x: str) -> str:
    """A zero-copy [N, C, 1, L] view of the 1-D input ``x`` of ``node`` (Conv1d, 1-D pooling)."""
    shape = ctx.shapes.get(x)
    if shape is None or len(shape) != 3:
        raise _Unsupported("a 1-D op whose input is not [N, C, L] with known C and L")
    view = f"{node.name}::x2d"
    ctx.shapes[view] = [shape[0], shape[1], 1, shape[2]]
    ctx.nodes.append(_ENode("Reshape", f"{node.name}::2d", [x], [view]))
    return view


@_lowers("Gemm")
def _gemm(ctx: _Ctx, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    if a.get("transA", 0):
        raise _Unsupported("transA=1 is not supported")
    b = ctx.const(node.input[1], "Gemm input B")
    b = (b.T if a.get("transB", 0) else b) * np.float32(a.get("alpha", 1.0))
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = ctx.const(node.input[2], "Gemm input C") * np.float32(a.get("beta", 1.0))
        if c.size not in (1, b.shape[1]):
            raise _Unsupported("a bias C other than a scalar or a row vector")
        bias = np.broadcast_to(c.reshape(-1), (b.shape[1],))
    _emit_gemm(ctx, node, node.input[0], b, bias, node.output[0])


@_lowers("MatMul")
def _matmul(ctx: _Ctx, node: onnx.NodeProto) -> None:
    if node.input[1] not in ctx.consts:  # two activations (attention): a batched product
        shapes = [ctx.shapes.get(n) for n in (node.input[0], node.input[1], node.output[0])]
        if any(sh is None for sh in shapes) or len({len(sh) for sh in shapes}) != 1 or len(shapes[0]) < 3 \
                or len({tuple(sh[:-2]) for sh in shapes}) != 1:
            raise _Unsupported("a product of two activations needs known shapes of one rank >= 3 and "
                               "equal leading dims (no broadcasting)")
        ctx.nodes.append(_ENode("MatMulAct", node.name, [node.input[0], node.input[1]], [node.output[0]]))
        return
    b = ctx.const(node.input[1], "MatMul input B (a weight)")
    if b.ndim != 2:
        raise _Unsupported("MatMul with a B that is not 2-D")
    bias, out = None, node.output[0]
    nxt = ctx.sole_consumer(out)
    if nxt is not None and nxt.op_type == "Add":
        other = nxt.input[1] if nxt.input[0] == out else nxt.input[0]
        c = ctx.consts.get(other)
        if c is not None and c.size == b.shape[1] and c.shape[-1:] == (b.shape[1],):
            bias, out = c.reshape(-1), nxt.output[0]
            ctx.skip.add(id(nxt))
    _emit_gemm(ctx, node, node.input[0], b, bias, out)


def _emit_gemm(ctx, node, x, b, bias, out) -> None:
    ins = [x, ctx.weight(node.name + "::B", b)]
    if bias is not None:
        ins.append(ctx.weight(node.name + "::C", bias))
    act, lo, hi, out = _fused_act(ctx, out)
    ctx.nodes.append(_ENode("Gemm", node.name, ins, [out], [act], [lo, hi]))


@_lowers("Add", "Sub", "Mul", "Div", "PRelu")
def _binary(ctx: _Ctx, node: onnx.NodeProto) -> None:
    ins = []
    for name in node.input:
        if name in ctx.consts:
            name = ctx.weight(name, ctx.consts[name])
        ins.append(name)
    ctx.nodes.append(_ENode(node.op_type, node.name, ins, [node.output[0]]))


@_lowers("Sigmoid")
def _sigmoid(ctx: _Ctx, node: onnx.NodeProto) -> None:
    x, s = node.input[0], node.output[0]
    nxt = ctx.sole_consumer(s)
    if nxt is not None and nxt.op_type == "Mul" and sorted(nxt.input) == sorted([x, s]):
        ctx.skip.add(id(nxt))
        ctx.nodes.append(_ENode("Silu", node.name, [x], [nxt.output[0]]))
        return
    ctx.nodes.append(_ENode("Sigmoid", node.name, [x], [s]))


@_lowers("Softplus")
def _softplus(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """torch's softplus(x, beta=1, threshold=t) exports as Where(Greater(x, t), x, Softplus(x)):
    above t >= 15, log(1 + exp(x)) equals x in float32, so the three nodes are one Softplus."""
    x, out = node.input[0], node.output[0]
    where = ctx.sole_consumer(out)
    if where is not None and where.op_type == "Where" and where.input[1] == x and where.input[2] == out:
        gt = next((n for n in ctx.onnx_nodes if where.input[0] in n.output), None)
        if gt is not None and gt.op_type == "Greater" and gt.input[0] == x and ctx.sole_consumer(gt.output[0]) is where:
            t = ctx.consts.get(gt.input[1])
            if t is not None and t.size == 1 and float(t.reshape(-1)[0]) >= 15.0:
                ctx.skip.update((id(gt), id(where)))
                out = where.output[0]
    ctx.nodes.append(_ENode("Softplus", node.name, [x], [out]))


@_lowers("Relu", "HardSwish", "Tanh", "Mish")
def _unary(ctx: _Ctx, node: onnx.NodeProto) -> None:
    ctx.nodes.append(_ENode(node.op_type, node.name, [node.input[0]], [node.output[0]]))


@_lowers("LeakyRelu")
def _leaky_relu(ctx: _Ctx, node: onnx.NodeProto) -> None:
    alpha = float(_attrs(node).get("alpha", 0.01))
    ctx.nodes.append(_ENode("LeakyRelu", node.name, [node.input[0]], [node.output[0]], [], [alpha]))


@_lowers("Elu")
def _elu(ctx: _Ctx, node: onnx.NodeProto) -> None:
    alpha = float(_attrs(node).get("alpha", 1.0))
    ctx.nodes.append(_ENode("Elu", node.name, [node.input[0]], [node.output[0]], [], [alpha]))


@_lowers("Gelu")
def _gelu(ctx: _Ctx, node: onnx.NodeProto) -> None:
    approx = _attrs(node).get("approximate", "none")
    approx = approx.decode("utf-8", "replace") if isinstance(approx, bytes) else approx
    if approx not in ("none", "tanh"):
        raise _Unsupported(f"Gelu approximate={approx!r} (only 'none' and 'tanh')")
    ctx.nodes.append(_ENode("Gelu", node.name, [node.input[0]], [node.output[0]], [int(approx == "tanh")]))


# Resize modes that, at an integer scale s, read input index floor(i / s) for output index i
# (half-pixel centres never land on a .5 tie, so either rounding gives the same index).
_NEAREST_FLOOR = {("asymmetric", "floor"), ("tf_half_pixel_for_nn", "floor")} | {
    (m, r) for m in ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric")
    for r in ("round_prefer_floor", "round_prefer_ceil")}


def _text(a: dict, key: str, default: str) -> str:
    v = a.get(key, default)
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


@_lowers("Resize", "Upsample")
def _resize(ctx: _Ctx, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    mode = _text(a, "mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise _Unsupported(f"Resize mode {mode!r} (only nearest by integer factors, and linear)")
    if a.get("antialias", 0):
        raise _Unsupported("Resize with antialias")
    if node.op_type == "Resize" and ctx.opset < 11:  # Resize-10: (X, scales), asymmetric coordinates
        raise _Unsupported(f"Resize at opset {ctx.opset} (export at opset 11 or later)")
    if _text(a, "keep_aspect_ratio_policy", "stretch") != "stretch":  # one scale for both axes
        raise _Unsupported(f"Resize keep_aspect_ratio_policy {_text(a, 'keep_aspect_ratio_policy', '')!r}")
    coord = _text(a, "coordinate_transformation_mode", "asymmetric" if node.op_type == "Upsample" else "half_pixel")
    if mode != "nearest":
        _resize_linear(ctx, node, a, coord)
        return
    rounding = _text(a, "nearest_mode", "floor" if node.op_type == "Upsample" else "round_prefer_floor")
    if (coord, rounding) not in _NEAREST_FLOOR:
        raise _Unsupported(f"Resize nearest with coordinate_transformation_mode {coord!r} and "
                           f"nearest_mode {rounding!r}")
    xs, ys = ctx.shapes.get(node.input[0]), ctx.shapes.get(node.output[0])
    if xs is None or ys is None or len(xs) != 4 or len(ys) != 4 or xs[:2] != ys[:2]:
        raise _Unsupported("Resize other than of H and W of an NCHW tensor with known sizes")
    if any(y % x for x, y in zip(xs[2:], ys[2:])):
        raise _Unsupported(f"Resize from {xs[2:]} to {ys[2:]}: only integer upsampling factors")
    if a.get("axes") is not None and list(a["axes"]) not in ([2, 3], [-2, -1]):
        raise _Unsupported(f"Resize over axes {list(a['axes'])} (only H and W)")
    scales = _resize_scales(ctx, node, a)
    want = [ys[2] // xs[2], ys[3] // xs[3]]
    if scales is not None and [float(v) for v in scales[-2:]] != [float(v) for v in want]:
        # onnxruntime reads the scales, not the rounded output size: 2.1 from 4 rows is 8 rows
        # taken as floor(i / 2.1), not an integer x2
        raise _Unsupported(f"Resize scales {[float(v) for v in scales]}: only integer factors on H and W")
    ctx.nodes.append(_ENode("Resize", node.name, [node.input[0]], [node.output[0]],
                            [ys[2] // xs[2], ys[3] // xs[3]]))


_LINEAR_COORD = {"half_pixel": 0, "pytorch_half_pixel": 1, "align_corners": 2, "asymmetric": 3}


def _resize_linear(ctx: _Ctx, node: onnx.NodeProto, a: dict, coord: str) -> None:
    """Bilinear Resize of H and W (torch's interpolate(mode="bilinear"), any scale)."""
    if coord not in _LINEAR_COORD:
        raise _Unsupported(f"Resize linear with coordinate_transformation_mode {coord!r}")
    xs, ys = ctx.shapes.get(node.input[0]), ctx.shapes.get(node.output[0])
    if xs is None or ys is None or len(xs) != 4 or len(ys) != 4 or xs[:2] != ys[:2]:
        raise _Unsupported("Resize other than of H and W of an NCHW tensor with known sizes")
    if a.get("axes") is not None and list(a["axes"]) not in ([2, 3], [-2, -1]):
        raise _Unsupported(f"Resize over axes {list(a['axes'])} (only H and W)")
    scales = _resize_scales(ctx, node, a)
    if scales is None:  # sizes given: onnxruntime takes the scale as out / in
        scales = [1.0, 1.0, ys[2] / xs[2], ys[3] / xs[3]]
    sh, sw = (float(v) for v in scales[-2:])
    if [int(np.floor(xs[2] * np.float32(sh))), int(np.floor(xs[3] * np.float32(sw)))] != ys[2:]:
        raise _Unsupported(f"Resize scales {[sh, sw]} do not give the output size {ys[2:]} from {xs[2:]}")
    ctx.nodes.append(_ENode("ResizeLinear", node.name, [node.input[0]], [node.output[0]], [_LINEAR_COORD[coord]],
                            [sh, sw]))


def _resize_scales(ctx: _Ctx, node: onnx.NodeProto, a: dict) -> list[float] | None:
    """The scales a Resize / Upsample gives (None when it gives output sizes instead)."""
    if node.op_type == "Upsample":
        if "scales" in a:  # opset 7
            return list(a["scales"])
        return ctx.const(node.input[1], "Upsample scales").reshape(-1).tolist()
    if len(node.input) > 2 and node.input[2] and ctx.const(node.input[2], "Resize scales").size:
        scales = ctx.consts[node.input[2]].reshape(-1).tolist()
        if len(scales) == 4 and scales[:2] != [1.0, 1.0]:
            raise _Unsupported(f"Resize scales {scales} change the batch or channel dim")
        return scales
    return None


@_lowers("Transpose")
def _transpose(ctx: _Ctx, node: onnx.NodeProto) -> None:
    rank = len(ctx.shapes.get(node.input[0]) or [])
    if rank == 0:
        raise _Unsupported("a Transpose of an input whose rank is not known")
    perm = [int(p) for p in _attrs(node).get("perm", range(rank - 1, -1, -1))]
    if perm == list(range(rank)):
        ctx.nodes.append(_ENode("Reshape", node.name, [node.input[0]], [node.output[0]]))
        return
    if perm[0] != 0:
        raise _Unsupported(f"perm {perm} moves the batch dim")
    ctx.nodes.append(_ENode("Transpose", node.name, [node.input[0]], [node.output[0]], perm))


def _emit_slice(ctx: _Ctx, node: onnx.NodeProto, out: str, starts: list[int], steps: list[int], tag: str) -> None:
    rank = len(starts)
    ctx.nodes.append(_ENode("Slice", node.name + tag, [node.input[0]], [out],
                            list(starts) + [0] * (MAX_DIMS - rank) + list(steps)))


@_lowers("Slice")
def _slice(ctx: _Ctx, node: onnx.NodeProto) -> None:
    shape = ctx.shapes.get(node.input[0])
    if not shape or node.output[0] not in ctx.shapes:
        raise _Unsupported("a Slice whose input or output shape is not known")
    if len(node.input) < 3:
        raise _Unsupported("a Slice with starts / ends as attributes (opset < 10: export at opset 10 or later)")
    rank = len(shape)
    begin = ctx.const(node.input[1], "Slice starts").reshape(-1).tolist()
    end = ctx.const(node.input[2], "Slice ends").reshape(-1).tolist()
    axes = list(range(len(begin)))
    if len(node.input) > 3 and node.input[3]:
        axes = [int(a) % rank for a in ctx.const(node.input[3], "Slice axes").reshape(-1)]
    steps = [1] * len(begin)
    if len(node.input) > 4 and node.input[4]:
        steps = [int(v) for v in ctx.const(node.input[4], "Slice steps").reshape(-1)]
    starts, strides = [0] * rank, [1] * rank
    for ax, b, e, st in zip(axes, begin, end, steps):
        if ax == 0:
            raise _Unsupported("slicing the batch dim")
        if st < 1:
            raise _Unsupported(f"a step of {st} (only positive steps)")
        r = range(*slice(int(b), int(e), st).indices(shape[ax]))
        if len(r) == 0:
            raise _Unsupported("an empty slice")
        starts[ax], strides[ax] = r.start, st
    _emit_slice(ctx, node, node.output[0], starts, strides, "")


@_lowers("Split")
def _split(ctx: _Ctx, node: onnx.NodeProto) -> None:
    shape = ctx.shapes.get(node.input[0])
    outs = [o for o in node.output]
    if not shape or any(o not in ctx.shapes for o in outs if o):
        raise _Unsupported("a Split whose input or output shapes are not known")
    axis = int(_attrs(node).get("axis", 0)) % len(shape)
    if axis == 0:
        raise _Unsupported("splitting the batch dim")
    at = 0
    for i, o in enumerate(outs):
        if not o:  # an unused output is not computed
            if any(outs[i + 1:]):
                raise _Unsupported("a Split with an unused output before a used one")
            break
        starts = [0] * len(shape)
        starts[axis] = at
        _emit_slice(ctx, node, o, starts, [1] * len(shape), f"::{i}")
        at += ctx.shapes[o][axis]


@_lowers("Softmax")
def _softmax(ctx: _Ctx, node: onnx.NodeProto) -> None:
    rank = len(ctx.shapes.get(node.input[0]) or [])
    if rank == 0:
        raise _Unsupported("a Softmax whose input rank is not known")
    axis = int(_attrs(node).get("axis", -1 if ctx.opset >= 13 else 1)) % rank
    if ctx.opset < 13 and axis != rank - 1:  # before opset 13: over all dims from axis on
        raise _Unsupported(f"opset {ctx.opset} Softmax over dims {axis}.. (export at opset 13 or later)")
    if axis == 0:
        raise _Unsupported("softmax along the batch dim")
    ctx.nodes.append(_ENode("Softmax", node.name, [node.input[0]], [node.output[0]], [axis]))


@_lowers("HardSigmoid")
def _hardsigmoid(ctx: _Ctx, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    ctx.nodes.append(_ENode("HardSigmoid", node.name, [node.input[0]], [node.output[0]], [],
                            [a.get("alpha", 0.2), a.get("beta", 0.5)]))


def _clip_bounds(ctx: _Ctx, node: onnx.NodeProto) -> tuple[float, float]:
    a = _attrs(node)
    lo, hi = a.get("min", -FLT_MAX), a.get("max", FLT_MAX)
    if len(node.input) > 1 and node.input[1]:
        lo = float(ctx.const(node.input[1], "Clip min"))
    if len(node.input) > 2 and node.input[2]:
        hi = float(ctx.const(node.input[2], "Clip max"))
    return float(lo), float(hi)


@_lowers("Clip")
def _clip(ctx: _Ctx, node: onnx.NodeProto) -> None:
    lo, hi = _clip_bounds(ctx, node)
    ctx.nodes.append(_ENode("Clip", node.name, [node.input[0]], [node.output[0]], [], [lo, hi]))


@_lowers("MaxPool", "AveragePool")
def _pool(ctx: _Ctx, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    if len(node.output) > 1 and node.output[1] and ctx.consumers.get(node.output[1]):
        raise _Unsupported("MaxPool indices output is not supported")
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        raise _Unsupported("auto_pad SAME_* is not supported")
    k = a["kernel_shape"]
    if len(k) not in (1, 2):
        raise _Unsupported("only 1-D and 2-D pooling is supported")
    s, d, p = a.get("strides", [1, 1]), a.get("dilations", [1, 1]), a.get("pads", [0, 0, 0, 0])
    x, out = node.input[0], node.output[0]
    if len(k) == 1:  # as 2-D pooling over [N, C, 1, L]
        k, s, d = [1, k[0]], [1, a.get("strides", [1])[0]], [1, a.get("dilations", [1])[0]]
        p1 = a.get("pads", [0, 0])
        p = [0, p1[0], 0, p1[1]]
        if len(ctx.shapes.get(out, [])) != 3:
            raise _Unsupported("1-D pooling whose output is not [N, C, L] with known C and L")
        x = _as_2d(ctx, node, x)
        n, c, length = ctx.shapes[out]
        out = f"{out}::2d"
        ctx.shapes[out] = [n, c, 1, length]
    xs, ys = ctx.shapes.get(x), ctx.shapes.get(out)
    if xs is not None and ys is not None and len(xs) == len(ys) == 4:
        for i in (0, 1):
            got = _pool_out(xs[2 + i], k[i], s[i], d[i], p[i], p[i + 2], bool(a.get("ceil_mode", 0)))
            if ys[2 + i] != got:  # onnx's shape inference keeps a last ceil window that starts in the
                raise _Unsupported(  # padding; onnxruntime and torch drop it
                    f"the pooled size {ys[2 + i]} (axis {2 + i}) is not onnxruntime's {got}: ceil_mode with a "
                    "last window in the padding; export from torch, or without ceil_mode")
    ctx.nodes.append(_ENode(node.op_type, node.name, [x], [out],
                            [k[0], k[1], s[0], s[1], d[0], d[1], p[0], p[1], p[2], p[3],
                             a.get("count_include_pad", 0)]))
    if out != node.output[0]:
        ctx.nodes.append(_ENode("Reshape", f"{node.name}::1d", [out], [node.output[0]]))


def _pool_out(n: int, k: int, s: int, d: int, pad_begin: int, pad_end: int, ceil: bool) -> int:
    """Pooled size as onnxruntime and torch compute it: with ceil_mode, a last window that would
    start in the end padding is dropped."""
    span = n + pad_begin + pad_end - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + pad_begin:
        out -= 1
    return out


@_lowers("GlobalAveragePool")
def _gap(ctx: _Ctx, node: onnx.NodeProto) -> None:
    ctx.nodes.append(_ENode("GlobalAveragePool", node.name, [node.input[0]], [node.output[0]]))


@_lowers("ReduceMean")
def _reduce_mean(ctx: _Ctx, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    rank = len(ctx.shapes[node.input[0]])
    axes = a.get("axes")
    if len(node.input) > 1 and node.input[1]:
        axes = ctx.const(node.input[1], "ReduceMean axes").reshape(-1).tolist()
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            ctx.nodes.append(_ENode("Reshape", node.name, [node.input[0]], [node.output[0]]))
            return
        axes = list(range(rank))
    mask = sum(1 << (int(ax) % rank) for ax in axes)
    ctx.nodes.append(_ENode("ReduceMean", node.name, [node.input[0]], [node.output[0]],
                            [mask, a.get("keepdims", 1)]))


@_lowers("Concat")
def _concat(ctx: _Ctx, node: onnx.NodeProto) -> None:
    ins = [ctx.weight(n, ctx.consts[n]) if n in ctx.consts else n for n in node.input]
    axis = _attrs(node)["axis"] % len(ctx.shapes[node.output[0]])
    ctx.nodes.append(_ENode("Concat", node.name, ins, [node.output[0]], [axis]))


@_lowers("Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze", "Dropout")
def _alias(ctx: _Ctx, node: onnx.NodeProto) -> None:
    # Layout is unchanged: the engine makes the output a zero-copy alias.
    xs, ys = ctx.shapes.get(node.input[0]), ctx.shapes.get(node.output[0])
    if ys is None and node.output[0] not in ctx.consts:
        raise _Unsupported("its output shape is not static but for the batch (onnx shape inference)")
    if xs is not None and ys is not None and xs[:1] == [-1] and \
            (ys[:1] != [-1] or int(np.prod(xs[1:])) != int(np.prod(ys[1:]))):
        # e.g. reshape(n * h * w, c): the engine's first dim is the batch, so a file written
        # for it was refused at load as corrupt
        raise _Unsupported(f"it folds the batch into another dim ({xs} -> {ys})")
    ctx.nodes.append(_ENode("Reshape", node.name, [node.input[0]], [node.output[0]]))


@_lowers("LayerNormalization")
def _layer_norm(ctx: _Ctx, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    shape = ctx.shapes.get(node.input[0])
    if not shape:
        raise _Unsupported("a LayerNormalization whose input shape is not known")
    if any(o and (ctx.consumers.get(o) or o in ctx.protected) for o in node.output[1:]):
        raise _Unsupported("LayerNormalization's Mean / InvStdDev outputs are used")
    axis = int(a.get("axis", -1)) % len(shape)
    if axis == 0:
        raise _Unsupported("normalizing over the batch dim")
    inner = int(np.prod(shape[axis:]))
    ins = [node.input[0]]
    for i, what in ((1, "scale"), (2, "bias")):
        if len(node.input) > i and node.input[i]:
            v = ctx.const(node.input[i], f"LayerNormalization {what}").astype(np.float32)
            try:
                v = np.broadcast_to(v, shape[axis:]).reshape(inner)
            except ValueError:
                raise _Unsupported(f"a {what} of shape {list(v.shape)} for normalized dims {shape[axis:]}") from None
            ins.append(ctx.weight(f"{node.name}::{what}", v))
    ctx.nodes.append(_ENode("LayerNorm", node.name, ins, [node.output[0]], [axis], [a.get("epsilon", 1e-5)]))


@_lowers("InstanceNormalization")
def _instance_norm(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """Per sample and channel over the spatial dims: a LayerNorm from axis 2, then the channels'
    scale and bias (also GroupNorm, which torch writes as a reshape around this)."""
    shape = ctx.shapes.get(node.input[0])
    if not shape or len(shape) < 3:
        raise _Unsupported("an InstanceNormalization whose input is not [N, C, ...] with known dims")
    inner = int(np.prod(shape[2:]))
    scale = ctx.const(node.input[1], "InstanceNormalization scale").astype(np.float32).reshape(-1)
    bias = ctx.const(node.input[2], "InstanceNormalization bias").astype(np.float32).reshape(-1)
    if scale.size != shape[1] or bias.size != shape[1]:
        raise _Unsupported(f"scale / bias of {scale.size} / {bias.size} values for {shape[1]} channels")
    normed = f"{node.output[0]}::normed"
    ctx.shapes[normed] = list(shape)
    ctx.nodes.append(_ENode("LayerNorm", node.name, [node.input[0], ctx.weight(f"{node.name}::ones", np.ones(inner, np.float32))],
                            [normed], [2], [_attrs(node).get("epsilon", 1e-5)]))
    ctx.nodes.append(_ENode("ChannelAffine", f"{node.name}::affine",
                            [normed, ctx.weight(f"{node.name}::scale", scale), ctx.weight(f"{node.name}::bias", bias)],
                            [node.output[0]]))


@_lowers("BatchNormalization")
def _batchnorm(ctx: _Ctx, node: onnx.NodeProto) -> None:
    eps = _attrs(node).get("epsilon", 1e-5)
    g, b, m, v = (ctx.const(n, "BatchNormalization statistics") for n in node.input[1:5])
    scale = g / np.sqrt(v + eps)
    ins = [node.input[0], ctx.weight(node.name + "::scale", scale),
           ctx.weight(node.name + "::shift", b - m * scale)]
    ctx.nodes.append(_ENode("ChannelAffine", node.name, ins, [node.output[0]]))


@_lowers("Pad")
def _pad(ctx: _Ctx, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    mode = a.get("mode", b"constant")
    if isinstance(mode, bytes):  # onnx gives string attributes as bytes: the message showed b'edge'
        mode = mode.decode("utf-8", "replace")
    if mode != "constant":
        raise _Unsupported(f"Pad mode {mode!r} (only constant)")
    if len(node.input) < 2 or node.input[0] not in ctx.shapes:
        raise _Unsupported("a Pad with pads as an attribute (opset < 11), or of unknown rank")
    rank = len(ctx.shapes[node.input[0]])
    pads = ctx.const(node.input[1], "Pad pads").astype(np.int64).reshape(-1).tolist()
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        value = float(ctx.const(node.input[2], "Pad constant_value").reshape(-1)[0])
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = [int(x) % rank for x in ctx.const(node.input[3], "Pad axes").reshape(-1)]
    begin, end = [0] * rank, [0] * rank
    for i, ax in enumerate(axes):
        begin[ax], end[ax] = pads[i], pads[i + len(axes)]
    ctx.nodes.append(_ENode("Pad", node.name, [node.input[0]], [node.output[0]], begin + end, [value]))


# ---------------------------------------------------------------------------
# Preparation: shapes, constant folding, consumers
# ---------------------------------------------------------------------------
def _dims(vi: onnx.ValueInfoProto) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        elif i == 0:
            out.append(-1)  # the batch dim, set per run by the engine
        else:
            return None
    return out


def _fold_constants(graph: onnx.GraphProto) -> tuple[dict[str, np.ndarray], list[onnx.NodeProto]]:
    """Initializers and Constant nodes become arrays; nodes with only constant inputs are
    evaluated once here with onnx's reference evaluator. Returns (consts, remaining nodes)."""
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    rest = []
    for node in graph.node:
        ins = [n for n in node.input if n]
        if node.op_type != "Shape" and all(n in consts for n in ins):
            try:
                values = ReferenceEvaluator(node).run(None, {n: consts[n] for n in ins})
            except Exception as exc:  # noqa: BLE001 - surfaced as an ExportError with context
                raise ExportError(
                    f"cannot fold constant node {node.name!r} ({node.op_type}): {exc}; "
                    "simplify the graph before converting") from exc
            consts.update({o: np.asarray(v) for o, v in zip(node.output, values) if o})
        else:
            rest.append(node)
    return consts, rest


def _prepare(model: onnx.ModelProto, extra_outputs: Sequence[str]) -> _Ctx:
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    for i, node in enumerate(g.node):  # synthetic weight names derive from node names
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    consts, nodes = _fold_constants(g)
    shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = _dims(vi)
        if dims is not None:
            shapes[vi.name] = dims
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for n in node.input:
            consumers.setdefault(n, []).append(node)
    protected = {o.name for o in g.output} | set(extra_outputs)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 20)
    return _Ctx(consts, shapes, consumers, protected, onnx_nodes=nodes, graph=g, opset=opset)


# Inputs that only carry a target shape: the engine takes output shapes from the file instead.
_SHAPE_SINKS = {"Reshape": (1,), "Resize": (1, 2, 3), "Upsample": (1,)}


def _shape_only_nodes(ctx: _Ctx) -> set[int]:
    """ONNX nodes that compute nothing but a shape for a Reshape or Resize (torch writes
    ``Shape -> Slice -> Concat -> Resize(sizes)`` for ``interpolate(size=...)`` and GroupNorm's
    reshape back to ``Shape(x)``): ids of nodes the engine need not run."""
    produced = {o: n for n in ctx.onnx_nodes for o in n.output}
    cand = {id(n) for n in ctx.onnx_nodes if n.op_type == "Shape"}
    grew = True
    while grew:  # forward: nodes fed only by shape nodes and constants
        grew = False
        for n in ctx.onnx_nodes:
            if id(n) in cand or n.op_type in _SHAPE_SINKS:
                continue
            srcs = [produced.get(i) for i in n.input if i and i not in ctx.consts]
            if srcs and all(src is not None and id(src) in cand for src in srcs):
                cand.add(id(n))
                grew = True

    def sink_only(n: onnx.NodeProto) -> bool:
        for o in n.output:
            if o in ctx.protected:
                return False
            for u in ctx.consumers.get(o, []):
                slots = [k for k, i in enumerate(u.input) if i == o]
                if id(u) in cand or (u.op_type in _SHAPE_SINKS and all(k in _SHAPE_SINKS[u.op_type] for k in slots)):
                    continue
                return False
        return True

    shrunk = True
    while shrunk:  # backward: drop any whose value reaches something other than a shape input
        shrunk = False
        for n in ctx.onnx_nodes:
            if id(n) in cand and not sink_only(n):
                cand.discard(id(n))
                shrunk = True
    return cand


def _lower_all(ctx: _Ctx, collect: list | None) -> None:
    ctx.skip |= _shape_only_nodes(ctx)
    for node in ctx.onnx_nodes:
        if id(node) in ctx.skip:
            continue
        fn = _LOWER.get(node.op_type)
        try:
            if fn is None or node.domain not in ("", "ai.onnx"):
                raise _Unsupported("op not implemented by the native engine")
            fn(ctx, node)
        except _Unsupported as exc:
            if collect is None:
                raise UnsupportedOpError(
                    f"the native engine cannot run node {node.name!r} (op {node.op_type}): {exc}; "
                    "run this front half on onnxruntime with `--engine ort`") from None
            collect.append((node.name, node.op_type))


def check_native_support(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """List the nodes the native engine cannot run.

    Args:
        model: the front half as ONNX (after the exporter's passes).

    Returns:
        ``(node_name, op_type)`` per unsupported node; empty when the engine runs it all.
    """
    ctx = _prepare(model, ())
    bad: list[tuple[str, str]] = []
    _lower_all(ctx, bad)
    return bad


# ---------------------------------------------------------------------------
# Per-layer weight precision
# ---------------------------------------------------------------------------
_PREC_SLOT = {"Conv": 10, "Gemm": 1}  # iattr slot "prec" (ERG.md)
_ACT_SLOT = 11  # Conv iattr "act_prec": 1 = fp32 activations on int8 weights (ERG.md)


def _weight_rows(e: _ENode, w: np.ndarray) -> np.ndarray:
    """The weight as [rows = output channels, k]; Gemm's B [K, N] is stored transposed."""
    return w.reshape(w.shape[0], -1) if e.op == "Conv" else np.ascontiguousarray(w.T)


def weight_layers(model: onnx.ModelProto) -> list[dict]:
    """The Conv / Gemm layers whose weights may be quantized, in graph order.

    Returns:
        ``{"name", "op", "rows", "k", "depthwise", "params"}`` per layer (``name`` is the key
        of ``write_erg``'s ``precisions``).

    Raises:
        UnsupportedOpError: the engine cannot run the model at all.
    """
    ctx = _prepare(model, ())
    _lower_all(ctx, None)
    out = []
    for e in ctx.nodes:
        if e.op not in _PREC_SLOT:
            continue
        w2 = _weight_rows(e, ctx.weights[e.inputs[1]])
        group = e.iattr[8] if e.op == "Conv" else 1
        out.append({"name": e.name, "op": e.op, "rows": int(w2.shape[0]), "k": int(w2.shape[1]),
                    "depthwise": bool(e.op == "Conv" and group > 1 and group == w2.shape[0]
                                      and ctx.weights[e.inputs[1]].shape[1] == 1),
                    "params": int(w2.size)})
    return out


def _rounded_weights(e: _ENode, prec: str, w2: np.ndarray, r, group_size: int):
    """(q, scales) of a precomputed data-aware rounding, checked against the layer."""
    if r.prec != prec or r.k != w2.shape[1] or r.q.shape[0] != w2.shape[0] \
            or (prec == "int4" and r.group_size != group_size) \
            or (r.bias is not None and r.bias.shape != (w2.shape[0],)):
        raise ExportError(f"layer {e.name!r}: the rounded weights do not match (precision {r.prec} "
                          f"vs {prec}, k {r.k} vs {w2.shape[1]}, group {r.group_size} vs {group_size}); "
                          "round again with the same precisions and group_size")
    return r.q, r.scales


def _apply_precisions(ctx: _Ctx, precisions: dict[str, str], group_size: int,
                      rounded: dict | None = None) -> None:
    """Replace the weights of the named Conv / Gemm nodes by int8 / int4 + scales (from
    ``rounded`` where given: q, scales and the corrected bias of ``quant_rounding``)."""
    rounded = rounded or {}
    stray = sorted(set(rounded) - {n for n, p in precisions.items() if p != "fp32"})
    if stray:
        raise ExportError(f"rounded weights given for layers not quantized by precisions: {stray[:5]}; "
                          "round with the same precisions you write")
    layers = {e.name: e for e in ctx.nodes if e.op in _PREC_SLOT}
    unknown = sorted(set(precisions) - set(layers))
    if unknown:
        raise ExportError(f"precisions name nodes that are not Conv/Gemm layers of this graph: "
                          f"{unknown[:5]}; use the names from weight_layers(model)")
    for name, prec in precisions.items():
        if prec not in PREC_CODE:
            raise ExportError(f"layer {name!r}: unknown precision {prec!r}; use fp32, int8 or int4")
        if prec == "fp32":
            continue
        e = layers[name]
        w = ctx.weights[e.inputs[1]]
        w2 = _weight_rows(e, w)
        r = rounded.get(name)
        q, sc = quantize(prec, w2, group_size) if r is None else \
            _rounded_weights(e, prec, w2, r, group_size)
        qname, sname = f"{e.name}::W{prec}", f"{e.name}::Wscale"
        ctx.weights[qname] = np.ascontiguousarray(q)
        ctx.qmeta[qname] = (PREC_DTYPE[prec], list(w.shape) if e.op == "Conv" else list(w2.shape),
                            group_size if prec == "int4" else 0)
        ctx.weights[sname] = np.ascontiguousarray(sc, np.float32)
        old = e.inputs[1]
        e.inputs[1] = qname
        e.inputs += [""] * (3 - len(e.inputs)) + [sname]
        slot = _PREC_SLOT[e.op]
        e.iattr += [0] * (slot + 1 - len(e.iattr))
        e.iattr[slot] = PREC_CODE[prec]
        if not any(old in n.inputs for n in ctx.nodes):
            del ctx.weights[old]  # no fp32 copy left behind
        if r is not None and r.bias is not None:
            old_b, e.inputs[2] = e.inputs[2], ctx.weight(f"{e.name}::Bcorr", r.bias)
            if old_b and not any(old_b in n.inputs for n in ctx.nodes):
                del ctx.weights[old_b]


def _apply_fp32_acts(ctx: _Ctx, names: Sequence[str]) -> None:
    """Mark int8 Conv layers whose activations the engine keeps in fp32 (iattr 11)."""
    convs = {e.name: e for e in ctx.nodes if e.op == "Conv"}
    for name in names:
        e = convs.get(name)
        if e is None or (e.iattr + [0] * 11)[_PREC_SLOT["Conv"]] != PREC_CODE["int8"]:
            raise ExportError(f"fp32_acts names {name!r}, which is not an int8 Conv layer of this graph; "
                              "fp32 activations apply to int8 Conv layers (see weight_layers and precisions)")
        e.iattr += [0] * (_ACT_SLOT + 1 - len(e.iattr))
        e.iattr[_ACT_SLOT] = 1


def write_erg(model: onnx.ModelProto, path: str | os.PathLike, *,
              precisions: dict[str, str] | None = None, group_size: int = 32,
              extra_outputs: Sequence[str] = (), rounded: dict | None = None,
              fp32_acts: Sequence[str] = ()) -> dict:
    """Convert an ONNX front half into an engine graph file.

    Args:
        model: the front half (torch.onnx.export output after the exporter's passes).
        path: where to write the ``.erg`` file.
        precisions: ``{layer name: "fp32" | "int8" | "int4"}`` for Conv / Gemm layers
            (names from ``weight_layers``; see ``exporters.quantize_front``). Layers not
            named stay fp32. Any int8 / int4 layer makes the file format version 2.
        group_size: int4 group size along K (even, 2..4096).
        extra_outputs: intermediate tensors to expose as outputs too (kept alive by the
            engine's memory plan; they are never fused away).
        rounded: ``{layer name: quant_rounding.RoundedLayer}`` precomputed data-aware
            rounding (``FrontRounder.sequential(precisions)``) used instead of round to
            nearest for those layers (q, scales and the corrected bias); same file format.
        fp32_acts: int8 Conv layers that run on fp32 activations (weights dequantized per
            run) instead of the engine's int8 GEMM with 8-bit activations: more accurate,
            not faster (``FrontPrecisionConfig.act``).

    Returns:
        ``{"nodes", "tensors", "weight_bytes", "file_bytes", "version", "ops", "fused",
        "inputs", "outputs"}``.

    Raises:
        UnsupportedOpError: a node the engine cannot run (message names op and node).
        ExportError: the graph lacks shapes, an output is not computed, ``precisions``
            names an unknown layer or precision, or ``rounded`` does not match it.
        ConfigError: an invalid ``group_size``.

    Example:
        >>> info = write_erg(onnx.load("front.onnx"), "front.erg")  # doctest: +SKIP
    """
    group_size = check_group_size(group_size)
    ctx = _prepare(model, extra_outputs)
    _lower_all(ctx, None)
    _apply_precisions(ctx, dict(precisions or {}), group_size, rounded)
    _apply_fp32_acts(ctx, list(fp32_acts))
    inits = {i.name for i in ctx.graph.initializer}
    inputs = [i.name for i in ctx.graph.input if i.name not in inits]
    outputs = [o.name for o in ctx.graph.output] + [o for o in extra_outputs
                                                    if o not in {x.name for x in ctx.graph.output}]
    for vi in ctx.graph.input:
        if vi.name in inputs and vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise UnsupportedOpError(f"graph input {vi.name!r} is not float32; the native engine "
                                     "runs fp32 front halves only; use `--engine ort`")
    data, n_tensors = serialize(ctx, inputs, outputs)
    with open(path, "wb") as f:
        f.write(data)
    return {
        "nodes": len(ctx.nodes), "tensors": n_tensors, "weight_bytes": sum(w.nbytes for w in ctx.weights.values()),
        "file_bytes": len(data), "version": VERSION_QUANT if ctx.qmeta else VERSION, "ops": dict(Counter(e.op for e in ctx.nodes)),
        "fused": len(ctx.skip), "inputs": inputs, "outputs": outputs,
        "precisions": {e.name: next((p for p, c in PREC_CODE.items()
                                     if c == (e.iattr + [0] * 11)[_PREC_SLOT[e.op]]), "fp32")
                       for e in ctx.nodes if e.op in _PREC_SLOT},
        "fp32_acts": sorted(fp32_acts),
    }


