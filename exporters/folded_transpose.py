"""A Transpose done on a tensor whose leading dims (the batch among them) were folded into one, rewritten
as the Transpose of the unfolded tensor.

torch's exporter writes ``scaled_dot_product_attention`` (timm's fused attention, and
``nn.MultiheadAttention`` with ``need_weights=False``) with the key's ``transpose(-2, -1)`` as
``Reshape([B, H, L, D] -> [B * H, L, D])``, ``Transpose(perm [0, 2, 1])``, ``Reshape(-> [B, H, D, L])``.
The native engine keeps the batch as the first dim of every tensor and refused the first Reshape ("it
folds the batch into another dim"). When the trailing dims pass through the first Reshape unchanged and
the second one splits the first dim back into the same leading dims, the three are one Transpose of the
original tensor (the same copy of the same values).
"""

from __future__ import annotations

import onnx
from onnx import helper

from edgerun.exporters.as_strided import drop_dead_nodes
from edgerun.exporters.pick_transpose import named_shapes, node_attr, readers_of


def fold_merged_transposes(model: onnx.ModelProto) -> int:
    """Rewrite each Reshape (fold leading dims) -> Transpose (dim 0 kept) -> Reshape (unfold them) of
    ``model`` (shapes inferred) as one Transpose, in place. Returns the number rewritten."""
    g = model.graph
    shapes = named_shapes(model)
    producer = {o: n for n in g.node for o in n.output}
    readers = readers_of(g)
    outputs = {o.name for o in g.output}
    done = 0
    for t in [n for n in g.node if n.op_type == "Transpose"]:
        fold = producer.get(t.input[0])
        unfold = readers.get(t.output[0], [])
        if fold is None or fold.op_type != "Reshape" or len(unfold) != 1 or unfold[0].op_type != "Reshape":
            continue
        unfold = unfold[0]
        if len(readers.get(fold.output[0], [])) != 1 or {fold.output[0], t.output[0]} & outputs:
            continue
        perm = _merged_perm(shapes.get(fold.input[0]), shapes.get(fold.output[0]), shapes.get(t.output[0]),
                            shapes.get(unfold.output[0]), [int(p) for p in node_attr(t, "perm", [])])
        if perm is None:
            continue
        new = helper.make_node("Transpose", [fold.input[0]], [unfold.output[0]], name=unfold.name, perm=perm)
        new.metadata_props.extend(unfold.metadata_props)
        unfold.CopyFrom(new)  # in the unfolding Reshape's place: its input's producer comes before it
        done += 1
    if done:
        drop_dead_nodes(g)
    return done


def _merged_perm(x: list | None, folded: list | None, moved: list | None, y: list | None,
                 perm: list[int]) -> list[int] | None:
    """The perm on ``x`` equal to folding its leading dims, ``perm``, and unfolding them, or None.

    ``x`` [*lead, *tail] -> ``folded`` [prod(lead), *tail] -> ``moved`` (``perm``, dim 0 kept) ->
    ``y`` [*lead, *moved[1:]]. Dims are ints or the name of a symbolic dim (the batch); None: unknown.
    """
    if x is None or folded is None or moved is None or y is None or not perm or perm[0] != 0:
        return None
    m = len(folded) - 1  # trailing dims that pass through
    k = len(x) - m  # leading dims folded into one
    if m < 1 or k < 2 or len(perm) != m + 1 or sorted(perm) != list(range(m + 1)) or len(y) != k + m:
        return None
    lead, tail = x[:k], x[k:]
    if None in x or None in y or tail != folded[1:] or y[:k] != lead or y[k:] != moved[1:] or \
            moved[1:] != [folded[p] for p in perm[1:]]:
        return None
    return list(range(k)) + [k - 1 + p for p in perm[1:]]
