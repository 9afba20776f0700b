"""Lowering of the data-movement ONNX ops: Resize / Upsample, Transpose, Slice / Split,
Concat, reshapes and constant Pad (registered in ``erg_lower._LOWER``)."""

from __future__ import annotations

import numpy as np
import onnx

from edgerun.exporters.erg_lower import _Ctx, _ENode, _Unsupported, _attrs, _lowers
from edgerun.exporters.erg_write import MAX_DIMS


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
    if mode == "nearest":
        rounding = _text(a, "nearest_mode", "floor" if node.op_type == "Upsample" else "round_prefer_floor")
        if (coord, rounding) not in _NEAREST_FLOOR:
            raise _Unsupported(f"Resize nearest with coordinate_transformation_mode {coord!r} and "
                               f"nearest_mode {rounding!r}")
    elif coord not in _LINEAR_COORD:
        raise _Unsupported(f"Resize linear with coordinate_transformation_mode {coord!r}")
    xs, ys = ctx.shapes.get(node.input[0]), ctx.shapes.get(node.output[0])
    if xs is None or ys is None or len(xs) != 4 or len(ys) != 4 or xs[:2] != ys[:2]:
        raise _Unsupported("Resize other than of H and W of an NCHW tensor with known sizes")
    if mode == "nearest" and any(y % x for x, y in zip(xs[2:], ys[2:])):
        raise _Unsupported(f"Resize from {xs[2:]} to {ys[2:]}: only integer upsampling factors")
    if a.get("axes") is not None and list(a["axes"]) not in ([2, 3], [-2, -1]):
        raise _Unsupported(f"Resize over axes {list(a['axes'])} (only H and W)")
    scales = _resize_scales(ctx, node, a)
    if mode == "nearest":
        want = [ys[2] // xs[2], ys[3] // xs[3]]
        if scales is not None and [float(v) for v in scales[-2:]] != [float(v) for v in want]:
            # onnxruntime reads the scales, not the rounded output size: 2.1 from 4 rows is 8 rows
            # taken as floor(i / 2.1), not an integer x2
            raise _Unsupported(f"Resize scales {[float(v) for v in scales]}: only integer factors on H and W")
        ctx.nodes.append(_ENode("Resize", node.name, [node.input[0]], [node.output[0]], want))
        return
    if scales is None:  # sizes given: the output size, and onnxruntime takes the scale as out / in
        # (no floor check: 54 -> 113 rows is a scale of 2.0925925, and 54 x that rounds to 112.99999:
        # the sizes torch's interpolate(size=...) writes were refused)
        sh, sw = ys[2] / xs[2], ys[3] / xs[3]
    else:
        sh, sw = (float(v) for v in scales[-2:])
        if [int(np.floor(xs[2] * np.float32(sh))), int(np.floor(xs[3] * np.float32(sw)))] != ys[2:]:
            raise _Unsupported(f"Resize scales {[sh, sw]} do not give the output size {ys[2:]} from {xs[2:]}")
    ctx.nodes.append(_ENode("ResizeLinear", node.name, [node.input[0]], [node.output[0]], [_LINEAR_COORD[coord]],
                            [sh, sw]))


# Bilinear Resize (torch's interpolate(mode="bilinear"), any scale): ONNX coordinate mode -> engine code
_LINEAR_COORD = {"half_pixel": 0, "pytorch_half_pixel": 1, "align_corners": 2, "asymmetric": 3}


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


@_lowers("Gather")
def _gather(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """A constant index off the batch dim: ``x[:, 0]`` (a transformer's class token) is a Slice of one
    row and a zero-copy reshape that drops the dim; ``x[:, [2, 3, 4]]`` (evenly spaced) a Slice."""
    shape, out = ctx.shapes.get(node.input[0]), node.output[0]
    if not shape or out not in ctx.shapes:
        raise _Unsupported("a Gather whose input or output shape is not known")
    if node.input[1] not in ctx.consts:
        raise _Unsupported("a Gather with computed indices (only constant ones)")
    rank = len(shape)
    axis = int(_attrs(node).get("axis", 0)) % rank
    if axis == 0:
        raise _Unsupported("gathering along the batch dim")
    idx = ctx.consts[node.input[1]].astype(np.int64)
    flat = [int(i) % shape[axis] if -shape[axis] <= int(i) < shape[axis] else -1 for i in idx.reshape(-1)]
    if not flat or min(flat) < 0:
        raise _Unsupported("an index out of range or no index")
    step = flat[1] - flat[0] if len(flat) > 1 else 1
    if step < 1 or flat != list(range(flat[0], flat[0] + step * len(flat), step)) or idx.ndim > 1:
        raise _Unsupported("indices that are not evenly spaced and increasing (only a slice's)")
    starts, steps = [0] * rank, [1] * rank
    starts[axis], steps[axis] = flat[0], step
    if idx.ndim == 1:
        _emit_slice(ctx, node, out, starts, steps, "")
        return
    row = f"{out}::row"  # a scalar index: the slice keeps a dim of 1, the alias drops it
    ctx.shapes[row] = list(shape[:axis]) + [1] + list(shape[axis + 1:])
    _emit_slice(ctx, node, row, starts, steps, "")
    ctx.nodes.append(_ENode("Reshape", node.name + "::squeeze", [row], [out]))


@_lowers("Expand")
def _expand(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """A constant broadcast to the batch (torch's ``cls.expand(n, -1, -1)``): stored as one sample,
    copied to each. Expanding an activation falls back."""
    out = ctx.shapes.get(node.output[0])
    if node.input[0] not in ctx.consts:
        raise _Unsupported("an Expand of an activation (only of a constant)")
    if not out or out[0] != -1 or any(d < 1 for d in out[1:]):
        raise _Unsupported("an Expand whose output is not [batch, static dims]")
    # A dynamic first dim is not necessarily the batch (an expand to 2 * n): shape inference must
    # name it as the graph input's batch.
    batch = ctx.dim0.get(ctx.graph.input[0].name, "") if ctx.graph is not None and ctx.graph.input else ""
    if not batch or ctx.dim0.get(node.output[0], "") != batch:
        raise _Unsupported(f"an Expand whose first dim ({ctx.dim0.get(node.output[0]) or 'unnamed'}) is not the "
                           f"input's batch ({batch or 'unnamed'})")
    c = ctx.consts[node.input[0]].astype(np.float32)
    try:
        one = np.ascontiguousarray(np.broadcast_to(c.reshape((1,) * (len(out) - c.ndim) + c.shape), [1] + out[1:]))
    except ValueError:
        raise _Unsupported(f"a constant of shape {list(c.shape)} does not broadcast to {out}") from None
    ctx.nodes.append(_ENode("Expand", node.name, [ctx.weight(node.output[0] + "::one", one)], [node.output[0]]))


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


@_lowers("Concat")
def _concat(ctx: _Ctx, node: onnx.NodeProto) -> None:
    out = ctx.shapes.get(node.output[0])
    if not out:
        raise _Unsupported("a Concat whose output shape is not known")
    batched = any((ctx.shapes.get(n) or [0])[:1] == [-1] for n in node.input if n not in ctx.consts)
    if batched and any(n in ctx.consts for n in node.input):
        # The constant has one sample, the output one per batch entry: the file was written and
        # then refused at load as corrupt ("inputs differ off the axis"), after
        # check_native_support had passed it.
        raise _Unsupported("a constant concatenated to a batched tensor (Expand it to the batch first)")
    ins = [ctx.weight(n, ctx.consts[n]) if n in ctx.consts else n for n in node.input]
    axis = _attrs(node)["axis"] % len(out)
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
