"""An ``as_strided`` that only restates a tensor's own layout, rewritten as the Reshape it is.

torch's exporter writes ``aten.as_strided`` as ``Reshape(x, [-1])`` then ``Gather`` with flat
indices computed from the input's batch size (``Shape -> Squeeze -> Range -> Mul -> Add``).
ConvNeXt and Swin end their features that way (the global average pool of a channels-last
tensor: ``[N, C, 1, 1]`` with strides ``(C, 1, C, C)``), so their default front half held a
``Shape`` node and ran on onnxruntime only. When the indices are ``0, 1, 2, ...`` in order at
every batch size and read every element of the flattened tensor once, the Gather is a Reshape of
that tensor to its output shape; the flattening and the index computation then feed nothing and
are dropped.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

# the index computations seen (torch 2.13): shapes, ranges, and integer arithmetic on them
_INDEX_OPS = {"Shape", "Squeeze", "Unsqueeze", "Range", "Mul", "Add", "Gather", "Constant", "Reshape",
              "Concat", "Cast", "Expand", "Slice"}
_BATCHES = (1, 2, 3, 7)  # the indices are affine in the batch size; checked at more points than that needs


def fold_identity_gathers(model: onnx.ModelProto) -> int:
    """Rewrite each identity flat Gather of ``model`` (shapes inferred) as a Reshape, in place.

    Returns the number rewritten (0: the model is unchanged).
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consts = {i.name for i in g.initializer}
    shapes = _static_shapes(model)
    done = 0
    for node in list(g.node):
        if node.op_type != "Gather" or _axis(node) != 0:
            continue
        flat = producer.get(node.input[0])
        out_shape = shapes.get(node.output[0])
        if flat is None or flat.op_type != "Reshape" or out_shape is None or out_shape[0] is not None:
            continue
        src = shapes.get(flat.input[0])  # the tensor flattened: the Gather must read all of it, each batch row
        if (src is None or src[0] is not None or None in src[1:] or None in out_shape[1:]
                or int(np.prod(src[1:], dtype=np.int64)) != int(np.prod(out_shape[1:], dtype=np.int64))):
            continue
        sub = _index_subgraph(node.input[1], producer, consts)
        if sub is None or not _is_identity(model, sub, node.input[1], out_shape, shapes):
            continue
        target = f"{node.output[0]}__identity_shape"
        g.initializer.append(numpy_helper.from_array(np.array([-1, *out_shape[1:]], np.int64), target))
        node.CopyFrom(helper.make_node("Reshape", [flat.input[0], target], list(node.output), name=node.name))
        done += 1
    if done:
        drop_dead_nodes(g)
    return done


def _axis(node: onnx.NodeProto) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Tensor -> dims, None for a symbolic dim (the batch)."""
    out = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def _index_subgraph(name: str, producer: dict, consts: set[str]) -> list[onnx.NodeProto] | None:
    """The nodes computing ``name`` from constants and ``Shape`` nodes only (topological order), or None."""
    seen: dict[int, onnx.NodeProto] = {}  # by id: nodes may be unnamed
    stack = [name]
    while stack:
        t = stack.pop()
        if not t or t in consts:
            continue
        n = producer.get(t)
        if n is None or n.op_type not in _INDEX_OPS:
            return None  # a graph input, or a value computed from data
        if id(n) in seen:
            continue
        seen[id(n)] = n
        if n.op_type != "Shape":  # a Shape's input is data; only its dims are read
            stack.extend(n.input)
    if not any(n.op_type == "Shape" for n in seen.values()):
        return None  # a constant index: folded elsewhere
    order = {id(n): i for i, n in enumerate(producer.values())}
    return sorted(seen.values(), key=lambda n: order.get(id(n), 0))


def _is_identity(model: onnx.ModelProto, sub: list[onnx.NodeProto], index: str, out_shape: list,
                 shapes: dict) -> bool:
    """The index tensor equals arange(N * prod(out_shape[1:])) in ``out_shape`` at several batch sizes."""
    inits = {i.name: i for i in model.graph.initializer}
    feeds_of = [n.input[0] for n in sub if n.op_type == "Shape"]
    if any(shapes.get(f) is None or shapes[f][0] is not None or None in shapes[f][1:] for f in feeds_of):
        return False
    used = {i for n in sub for i in n.input if i in inits}
    graph = helper.make_graph(sub, "index", [helper.make_tensor_value_info(f, onnx.TensorProto.FLOAT, None)
                                             for f in dict.fromkeys(feeds_of)],
                              [helper.make_tensor_value_info(index, onnx.TensorProto.INT64, None)],
                              [inits[u] for u in used])
    try:
        ev = ReferenceEvaluator(helper.make_model(graph, opset_imports=model.opset_import))
        for b in _BATCHES:
            feeds = {f: np.zeros([b, *shapes[f][1:]], np.float32) for f in dict.fromkeys(feeds_of)}
            got = np.asarray(ev.run(None, feeds)[0])
            want = np.arange(b * int(np.prod(out_shape[1:], dtype=np.int64))).reshape(b, *out_shape[1:])
            if got.shape != want.shape or not np.array_equal(got, want):
                return False
    except Exception:  # noqa: BLE001 - anything the evaluator cannot run is left as it was
        return False
    return True


def drop_dead_nodes(g: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nothing reads (the index computations), and the initializers only they read
    (also used by ``pick_transpose`` and ``folded_transpose``)."""
    outputs = {o.name for o in g.output}
    freed: set[str] = set()
    while True:
        read = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.output and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            freed.update(n.input)
            g.node.remove(n)
    read = {i for n in g.node for i in n.input} | outputs
    for init in [i for i in g.initializer if i.name in freed and i.name not in read]:
        g.initializer.remove(init)
    live = {o for n in g.node for o in n.output} | {i.name for i in g.input}
    for vi in [v for v in g.value_info if v.name not in live]:
        g.value_info.remove(vi)
