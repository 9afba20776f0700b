"""Lowering ONNX ops to engine nodes: the conversion state, the op registry and the compute ops.

Each ONNX op is lowered by one function registered in ``_LOWER`` with ``@_lowers("Op")``;
supporting a new op is one new function (data-movement ops: ``erg_lower_data.py``). A function
raises ``_Unsupported`` with the reason when the engine cannot run the node; ``erg.py`` turns
that into ``UnsupportedOpError`` (or a listed node in ``check_native_support``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from edgerun.exporters.erg_write import ACT_CLIP, ACT_NONE, ACT_RELU, FLT_MAX


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
    dim0: dict[str, str] = field(default_factory=dict)  # tensor -> symbol of its dynamic first dim

    def weight(self, name: str, array: np.ndarray) -> str:
        """Store a constant under ``name``, or under ``name#k`` when ``name`` already holds a
        different array (one constant expanded to two shapes, an initializer named like a
        synthetic weight): the name returned is the one to use."""
        a = np.ascontiguousarray(array, dtype=np.float32)
        base, k = name, 1
        while name in self.weights and not (self.weights[name].shape == a.shape
                                            and np.array_equal(self.weights[name], a)):
            name, k = f"{base}#{k}", k + 1
        self.weights[name] = a
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
        s, d, p = _geom_1d(a)
        w = w[:, :, None, :]
        if len(ctx.shapes.get(node.output[0], [])) != 3:
            raise _Unsupported("a Conv1d whose output is not [N, C, L] with known C and L")
        x = _as_2d(ctx, node, x)
    ins = [x, ctx.weight(node.input[1], w)]
    if len(node.input) > 2 and node.input[2]:
        ins.append(ctx.weight(node.input[2], ctx.const(node.input[2], "the Conv bias")))
    act, lo, hi, out = _fused_act(ctx, node.output[0])
    y = out if x == node.input[0] else _view_2d(ctx, out)
    ctx.nodes.append(_ENode("Conv", node.name, ins, [y],
                            [s[0], s[1], d[0], d[1], p[0], p[1], p[2], p[3], a.get("group", 1), act],
                            [lo, hi]))
    if y != out:
        ctx.nodes.append(_ENode("Reshape", f"{node.name}::1d", [y], [out]))


def _geom_1d(a: dict) -> tuple[list[int], list[int], list[int]]:
    """Strides, dilations and pads of a 1-D Conv / pooling as those of the 2-D op on [N, C, 1, L]."""
    p1 = a.get("pads", [0, 0])
    return [1, a.get("strides", [1])[0]], [1, a.get("dilations", [1])[0]], [0, p1[0], 0, p1[1]]


def _view_2d(ctx: _Ctx, out: str) -> str:
    """The [N, C, 1, L] tensor a 1-D op writes; a Reshape after it gives ``out`` [N, C, L]."""
    n, c, length = ctx.shapes[out]
    ctx.shapes[f"{out}::2d"] = [n, c, 1, length]
    return f"{out}::2d"


def _as_2d(ctx: _Ctx, node: onnx.NodeProto, x: str) -> str:
    """A zero-copy [N, C, 1, L] view of the 1-D input ``x`` of ``node`` (Conv1d, 1-D pooling)."""
    shape = ctx.shapes.get(x)
    if shape is None or len(shape) != 3:
        raise _Unsupported("a 1-D op whose input is not [N, C, L] with known C and L")
    view = f"{node.name}::x2d"
    ctx.shapes[view] = [shape[0], shape[1], 1, shape[2]]
    ctx.nodes.append(_ENode("Reshape", f"{node.name}::2d", [x], [view]))
    return view


def _refuse_weight_on_the_left(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """y = W @ x with W a constant: the engine's Gemm multiplies by a constant on the right only.
    Such a MatMul used to be refused as "a product of two activations" (W is not one)."""
    if node.input[0] in ctx.consts and node.input[1] not in ctx.consts:
        raise _Unsupported(
            f"its first operand A ({node.input[0]!r}) is a constant: a weight on the left (y = W @ x) is not "
            "supported natively, only on the right (y = x @ W); write it as x @ W.T (torch.nn.functional.linear"
            "(x, W) or an nn.Linear layer, transposing x's last two dims around it), or for x of shape [N, C, L] "
            "as a 1x1 Conv1d (torch.nn.functional.conv1d(x, W[:, :, None]))")


@_lowers("Gemm")
def _gemm(ctx: _Ctx, node: onnx.NodeProto) -> None:
    _refuse_weight_on_the_left(ctx, node)
    a = _attrs(node)
    if a.get("transA", 0):
        raise _Unsupported("transA=1 is not supported")
    b = ctx.const(node.input[1], "Gemm input B")
    b = (b.T if a.get("transB", 0) else b) * np.float32(a.get("alpha", 1.0))
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = ctx.const(node.input[2], "Gemm input C") * np.float32(a.get("beta", 1.0))
        # A row vector is [N] or [1, N]. A column [M, 1] adds one value per row: with M == N its
        # size matched and it was added per column instead (wrong values, no error).
        if c.size != 1 and (c.shape[-1:] != (b.shape[1],) or c.size != b.shape[1]):
            raise _Unsupported(f"a bias C of shape {list(c.shape)} (only a scalar or a row vector of "
                               f"{b.shape[1]} values)")
        bias = np.broadcast_to(c.reshape(-1), (b.shape[1],))
    _emit_gemm(ctx, node, node.input[0], b, bias, node.output[0])


@_lowers("MatMul")
def _matmul(ctx: _Ctx, node: onnx.NodeProto) -> None:
    _refuse_weight_on_the_left(ctx, node)
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
        k = [1, k[0]]
        s, d, p = _geom_1d(a)
        if len(ctx.shapes.get(out, [])) != 3:
            raise _Unsupported("1-D pooling whose output is not [N, C, L] with known C and L")
        x = _as_2d(ctx, node, x)
        out = _view_2d(ctx, out)
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


@_lowers("ReduceMean", "ReduceSum")
def _reduce_mean(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """ReduceSum is the mean times the count of the reduced values (a constant Mul after it)."""
    a = _attrs(node)
    shape = ctx.shapes[node.input[0]]
    rank = len(shape)
    axes = a.get("axes")
    if len(node.input) > 1 and node.input[1]:
        axes = ctx.const(node.input[1], f"{node.op_type} axes").reshape(-1).tolist()
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            ctx.nodes.append(_ENode("Reshape", node.name, [node.input[0]], [node.output[0]]))
            return
        axes = list(range(rank))
    axes = sorted({int(ax) % rank for ax in axes})
    mask = sum(1 << ax for ax in axes)
    out = node.output[0]
    if node.op_type == "ReduceSum":
        if 0 in axes or any(shape[ax] < 1 for ax in axes):
            raise _Unsupported("a ReduceSum over the batch dim or a dim that is not static")
        if out not in ctx.shapes:
            raise _Unsupported("a ReduceSum whose output shape is not known")
        out = f"{node.output[0]}::mean"
        ctx.shapes[out] = list(ctx.shapes[node.output[0]])
    ctx.nodes.append(_ENode("ReduceMean", node.name, [node.input[0]], [out], [mask, a.get("keepdims", 1)]))
    if node.op_type == "ReduceSum":
        count = np.array(float(np.prod([shape[ax] for ax in axes])), np.float32)
        ctx.nodes.append(_ENode("Mul", node.name + "::count", [out, ctx.weight(node.output[0] + "::count", count)],
                                [node.output[0]]))


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
