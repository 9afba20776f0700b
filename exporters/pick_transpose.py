"""A Transpose that moves the batch dim, read only one slice at a time, rewritten to keep the batch first.

timm-style attention (DeiT, DINOv2) writes ``qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)`` and
then ``q, k, v = qkv.unbind(0)`` (or ``qkv[0]``): the permute puts the 3 before the batch, and the
native engine, whose first dim is always the batch, refused it ("perm [2, 0, 3, 1, 4] moves the batch
dim"). Each consumer only picks index ``i`` along the new first dim, and picking first is the same
data: ``Transpose(x, perm)[i] == Transpose(x.take(i, axis=perm[0]), perm')`` with ``perm'`` the rest of
``perm`` renumbered, which keeps the batch first when ``perm[1] == 0``. The picks recognised: a Gather
of a constant scalar on axis 0, a Split along 0 into pieces of one, or a Slice of one along 0, the
last two each followed by a Squeeze (or Reshape) that drops that dim. The values are copied, never
computed: the rewritten graph gives the same bits.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgerun.exporters.as_strided import drop_dead_nodes


def fold_batch_transposes(model: onnx.ModelProto) -> int:
    """Rewrite each batch-moving Transpose of ``model`` (shapes inferred) whose readers each pick one
    slice along its first dim as picks on the original axis + batch-first Transposes, in place.

    Returns the number of Transposes rewritten (0: the model is unchanged).
    """
    g = model.graph
    shapes = named_shapes(model)
    consts = _constants(g)
    readers = readers_of(g)
    outputs = {o.name for o in g.output}
    done = 0
    for t in [n for n in g.node if n.op_type == "Transpose"]:
        rank = len(shapes.get(t.input[0]) or [])
        perm = [int(p) for p in node_attr(t, "perm", list(range(rank - 1, -1, -1)))]
        if rank < 2 or sorted(perm) != list(range(rank)) or perm[0] == 0 or perm[1] != 0:
            continue
        if t.output[0] in outputs or not readers.get(t.output[0]):
            continue
        picks = _picks(t.output[0], readers, shapes, consts, outputs)
        if picks is None:
            continue
        rest = [p - (p > perm[0]) for p in perm[1:]]
        for last, index in picks:  # each pick replaced, in its place: x comes before it
            _replace(g, last, t.input[0], perm[0], index, rest)
        done += 1
    if done:
        drop_dead_nodes(g)
    return done


def _picks(name: str, readers: dict, shapes: dict, consts: dict,
           outputs: set[str]) -> list[tuple[onnx.NodeProto, int]] | None:
    """[(the node whose output is the slice, the index picked)] for every reader of ``name``, or None when
    one of them reads more than one slice along dim 0 (or something else)."""
    dim0 = (shapes.get(name) or [None])[0]
    if not isinstance(dim0, int):
        return None
    rank = len(shapes[name])
    out = []
    for r in readers[name]:
        if r.input[0] != name:
            return None
        if r.op_type == "Gather" and node_attr(r, "axis", 0) % rank == 0:
            idx = consts.get(r.input[1])
            if idx is None or idx.ndim != 0 or not -dim0 <= int(idx) < dim0:
                return None
            out.append((r, int(idx) % dim0))
        elif r.op_type == "Split" and node_attr(r, "axis", 0) % rank == 0:
            if set(r.output) & outputs or len(r.output) != dim0 or \
                    any((shapes.get(o) or [None])[0] != 1 for o in r.output):
                return None  # a piece kept as it is, or pieces not of one slice each (piece i is not index i)
            for i, o in enumerate(r.output):
                if not o or not readers.get(o):
                    continue  # an unused piece
                squeeze = _drops_dim0(o, readers, shapes, consts)
                if squeeze is None:
                    return None
                out.append((squeeze, i))
        elif r.op_type == "Slice":
            start = None if r.output[0] in outputs else _one_row_slice(r, shapes, consts, dim0)
            squeeze = None if start is None else _drops_dim0(r.output[0], readers, shapes, consts)
            if squeeze is None:
                return None
            out.append((squeeze, start))
        else:
            return None
    return out


def _drops_dim0(name: str, readers: dict, shapes: dict, consts: dict) -> onnx.NodeProto | None:
    """The one reader of ``name`` ([1, ...]), when it is a Squeeze or Reshape that only drops dim 0."""
    rs = readers.get(name) or []
    if len(rs) != 1 or rs[0].input[0] != name or rs[0].op_type not in ("Squeeze", "Reshape"):
        return None
    r = rs[0]
    if r.op_type == "Squeeze":
        axes = consts.get(r.input[1]) if len(r.input) > 1 and r.input[1] else node_attr(r, "axes", None)
        if axes is None or [int(a) % len(shapes.get(name) or [0]) for a in np.ravel(axes)] != [0]:
            return None
    xs, ys = shapes.get(name), shapes.get(r.output[0])
    if xs is None or ys is None or xs[0] != 1 or xs[1:] != ys or None in ys or \
            sum(isinstance(d, str) for d in ys) != 1:
        return None  # one symbolic dim, the same one (by name) before and after
    return r


def _one_row_slice(node: onnx.NodeProto, shapes: dict, consts: dict, dim0: int) -> int | None:
    """The start of a Slice that takes one row along dim 0 and nothing off the other dims, else None."""
    vals = [consts.get(node.input[i]) if len(node.input) > i and node.input[i] else None for i in range(1, 5)]
    starts, ends, axes, steps = vals
    if starts is None or ends is None or (len(node.input) > 3 and node.input[3] and axes is None) or \
            (len(node.input) > 4 and node.input[4] and steps is None):
        return None
    rank = len(shapes.get(node.input[0]) or [])
    axes = [int(a) % rank for a in np.ravel(axes)] if axes is not None else list(range(np.size(starts)))
    steps = np.ravel(steps).tolist() if steps is not None else [1] * len(axes)
    if axes != [0] or steps != [1]:
        return None
    r = range(*slice(int(np.ravel(starts)[0]), int(np.ravel(ends)[0]), 1).indices(dim0))
    return r.start if len(r) == 1 else None


def _replace(g: onnx.GraphProto, last: onnx.NodeProto, x: str, axis: int, index: int, rest: list[int]) -> None:
    """``last``'s output becomes Transpose(Gather(x, index, axis), rest) (a Gather alone when ``rest`` is
    the identity), at ``last``'s place, with its name and metadata (the module it came from)."""
    out = last.output[0]
    idx = f"{out}__pick_index"
    g.initializer.append(numpy_helper.from_array(np.array(index, np.int64), idx))
    keep = rest == list(range(len(rest)))
    picked = out if keep else f"{out}__picked"
    nodes = [helper.make_node("Gather", [x, idx], [picked], name=f"{last.name}__pick", axis=axis)]
    if not keep:
        nodes.append(helper.make_node("Transpose", [picked], [out], name=last.name, perm=rest))
    for n in nodes:
        n.metadata_props.extend(last.metadata_props)
    at = list(g.node).index(last)
    g.node.remove(last)
    for k, n in enumerate(nodes):
        g.node.insert(at + k, n)


def readers_of(g: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor -> the nodes that read it, in graph order."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return readers


def node_attr(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def named_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Tensor -> dims: ints, the symbol's name for a named symbolic dim, None for an unknown one."""
    out = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return out


def _constants(g: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes' values (the indices, axes and bounds read here)."""
    out = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out
