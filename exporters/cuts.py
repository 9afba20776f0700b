"""Stage 2 of export: the valid cut points of a (DAG) ONNX graph and their cost.

A cut after position ``i`` of the topological order is *valid* when the non-constant tensors
produced at or before ``i`` and still needed after it (the "crossing set") are few (``max_tensors``,
1 by default) and are not all raw model inputs, the front half computes something (a reshape of the
input alone is no split: ``LAYOUT_OPS``) and the back half does not start after a model output; a
``--cut`` at either end is told what it is (``cut_at_an_end``). A model input that the front half
does not read to the end (a robot's joint state, concatenated with the image features deep in the
model) passes through: the device sends it as it came, beside what the front computed, and it does
not count towards ``max_tensors``. With residual blocks the graph is a DAG, not a chain: inside a
block the skip tensor is live next to the main path, so a single-tensor cut only exists at block
boundaries. A tensor that every path from input to output passes through (a separator) is always
found this way: any non-constant node ordered after it must depend on it. Only float32 tensors of
shape [batch, static dims] cross (the wire frame and the codec carry float32, batch first).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import onnx

from edgerun.errors import ExportError
from edgerun.exporters.trace import module_scopes

# Ops that only reorder or relabel a tensor's values: a front half of these alone computes nothing (it sends
# the raw input, all its bytes, in another shape), so a cut after them is no split, and an exit head there
# would read the raw input. (Slice / Gather are not here: a crop sends fewer bytes than it was given.)
LAYOUT_OPS = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"})


@dataclass(frozen=True)
class Cut:
    """One valid cut: what crosses it, and what each side costs (batch 1)."""

    index: int                      # position in the list of valid cuts
    after_node: int                 # the cut lies after this node of the topological order
    label: str                      # readable name (module path the crossing tensor leaves)
    tensors: tuple[str, ...]        # names of the crossing tensors
    shapes: tuple[tuple[int, ...], ...]  # their shapes at batch 1
    crossing_bytes: int             # fp32 bytes per sample that cross
    front_macs: int
    back_macs: int

    @property
    def front_fraction(self) -> float:
        total = self.front_macs + self.back_macs
        return self.front_macs / total if total else 0.0


def shapes_of(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor at batch 1 (symbolic dims read as 1)."""
    out: dict[str, tuple[int, ...]] = {}
    vis = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    for vi in vis:
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)
    for init in model.graph.initializer:
        out[init.name] = tuple(init.dims)
    return out


def node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one node at batch 1 (elementwise ops count one per output value)."""
    out = shapes.get(node.output[0]) if node.output else None
    n_out = int(np.prod(out)) if out else 0
    if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in shapes:
        w = shapes[node.input[1]]  # (M, C/group, kh, kw)
        return n_out * int(np.prod(w[1:]))
    if node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in shapes:
        a = shapes.get(node.input[0], ())
        k = a[-1] if a else 1
        if node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute):
            k = a[0]
        return n_out * int(k)
    return n_out


def constant_tensors(model: onnx.ModelProto) -> set[str]:
    """Initializers and every tensor computed from constants only."""
    const = {i.name for i in model.graph.initializer} | {""}
    for node in model.graph.node:
        if all(i in const for i in node.input):
            const.update(node.output)
    return const


def find_cuts(model: onnx.ModelProto, *, max_tensors: int = 1) -> list[Cut]:
    """All valid cuts of ``model`` in topological order.

    Args:
        model: a traced model (see ``trace.to_onnx``), shapes inferred.
        max_tensors: most tensors allowed to cross a cut (1 = single-tensor cuts).

    Returns:
        The valid cuts, shallowest first; each with a unique label.

    Raises:
        ExportError: ``max_tensors`` < 1.
    """
    if max_tensors < 1:
        raise ExportError(f"max_tensors must be >= 1, got {max_tensors}")
    g = model.graph
    nodes = list(g.node)
    shapes = shapes_of(model)
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in g.value_info if vi.type.tensor_type.elem_type}
    batch_first = _batch_first_tensors(model)
    const = constant_tensors(model)
    inputs = {i.name for i in g.input}
    outputs = {o.name for o in g.output}
    last_use = _last_use(nodes, outputs)
    macs = [0 if all(i in const for i in n.input) else node_macs(n, shapes) for n in nodes]
    computes = _computes(nodes, macs)
    total = sum(macs)
    cuts: list[Cut] = []
    live: dict[str, int] = {name: -1 for name in inputs}
    prefix, front_computes = 0, False
    for i, node in enumerate(nodes[:-1]):
        prefix += macs[i]
        front_computes |= computes[i]
        for out in node.output:
            if out not in const:
                live[out] = i
        for name in [t for t, _ in live.items() if last_use.get(t, -1) <= i]:
            del live[name]
        crossing = tuple(live)
        computed = [t for t in crossing if t not in inputs]
        if not computed or len(computed) > max_tensors or outputs & set(crossing):
            continue
        if any(elem.get(t, onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT for t in crossing):
            continue  # the wire carries float32: an int64 crossing (ids.long()) exported, then every request failed
        if batch_first is not None and not all(t in batch_first for t in crossing):
            continue  # a GRU's [seq, dirs, batch, hidden]: the codec and server batching split it on axis 0
        if not front_computes:  # the raw input, reshaped at most: all on the server, not a split
            continue
        tshapes = tuple(shapes.get(t, ()) for t in crossing)
        nbytes = sum(4 * int(np.prod(s)) for s in tshapes)
        label = _label(nodes, i, crossing)
        cuts.append(Cut(len(cuts), i, label, crossing, tshapes, nbytes, prefix, total - prefix))
    return _unique_labels(cuts)


def _computes(nodes: list[onnx.NodeProto], macs: list[int]) -> list[bool]:
    """Per node: does it compute (not constant, not a mere reshape of its input: ``LAYOUT_OPS``)."""
    return [m > 0 and n.op_type not in LAYOUT_OPS for n, m in zip(nodes, macs)]


def _batch_first_tensors(model: onnx.ModelProto) -> set[str] | None:
    """Tensors shaped [batch, static dims...] (the input's batch symbol on axis 0 only), the inputs
    included, or None when the input has no batch symbol.

    The device, the codec and the server (its batching) all take axis 0 of a crossing as the batch:
    a cut inside a GRU crossed [20 steps, 1, batch, 24], was written as shape [None, 1, 1, 24], and
    the codec's calibration then died in onnxruntime ("Got: 40 Expected: 20").
    """
    dims0 = model.graph.input[0].type.tensor_type.shape.dim
    batch = dims0[0].dim_param if dims0 else ""
    if not batch:
        return None
    out = {i.name for i in model.graph.input}  # trace gives every input the batch symbol on axis 0
    for vi in model.graph.value_info:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_param == batch and all(d.HasField("dim_value") for d in dims[1:]):
            out.add(vi.name)
    return out


def _last_use(nodes: list[onnx.NodeProto], outputs: set[str]) -> dict[str, int]:
    last: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            last[name] = i
    for name in outputs:
        last[name] = len(nodes)
    return last


def _label(nodes: list[onnx.NodeProto], i: int, crossing: tuple[str, ...]) -> str:
    """Name a cut after the biggest torch module that ends at node ``i``.

    Falls back to ``<innermost module>/<op>`` for a cut inside a module (e.g. after
    a residual Add but before the block's last ReLU).
    """
    scopes, op = module_scopes(nodes[i])
    later = {s for n in nodes[i + 1 :] for s in module_scopes(n)[0]}
    for scope in scopes:
        if scope not in later:
            return scope
    return f"{scopes[-1]}/{op}" if scopes else op


def _unique_labels(cuts: list[Cut]) -> list[Cut]:
    seen: dict[str, int] = {}
    out = []
    for c in cuts:
        n = seen.get(c.label, 0)
        seen[c.label] = n + 1
        label = c.label if n == 0 else f"{c.label}#{n}"
        out.append(Cut(c.index, c.after_node, label, c.tensors, c.shapes, c.crossing_bytes, c.front_macs, c.back_macs))
    return out


def resolve_cut(cuts: list[Cut], spec: str | int | None, *, inputs: Collection[str] = ()) -> Cut:
    """Pick a cut by index, label or crossing tensor name; None -> the default cut.

    ``inputs``: the model's input names. A model input that passes through cuts names none of them
    (`--cut joints` picked the first cut the joint state crosses).

    The default (until the planner chooses from a device profile) is the cut with
    the fewest crossing bytes among those that leave 20-60% of the compute on the
    device; ties go to the deeper cut (after the activation, not before it). A model
    with no cut in that band gets the cut nearest 40 % (the fewest bytes overall put
    100 % of a model with reflect padding on the device, leaving the server one Linear).

    Raises:
        ExportError: no cut matches; the message lists the valid cuts.
    """
    if not cuts:
        raise ExportError("this model has no valid cut point: no tensor between two of its layers carries all that "
                          "the rest needs (a one-layer model has none; residual skips: allow more with "
                          "--max-cut-tensors 2); edgerun splits models of two or more layers")
    if spec is None:
        mid = [c for c in cuts if 0.2 <= c.front_fraction <= 0.6]
        if not mid:
            return min(cuts, key=lambda c: (abs(c.front_fraction - 0.4), c.crossing_bytes, -c.index))
        return min(mid, key=lambda c: (c.crossing_bytes, -c.index))
    s = str(spec)
    by_index = cuts[int(s)] if s.isdigit() and int(s) < len(cuts) else None
    by_name = next((c for c in cuts if s == c.label), None)
    if by_name is None and s in inputs:
        raise ExportError(f"--cut {s}: {s!r} is a model input: it crosses every cut before the model reads it to the "
                          "end, as it came, so it names none of them; give a cut's label, index or computed tensor "
                          "(`--list-cuts`)")
    by_name = by_name or next((c for c in cuts if s in c.tensors), None)
    if by_index is not None and by_name is not None and by_index is not by_name:
        # nn.Sequential names its layers 0, 1, 2...: `--cut 2` picked the cut labelled "2", not index 2
        def computed(c: Cut) -> str:
            return next(t for t in c.tensors if t not in inputs)

        raise ExportError(f"--cut {s} is ambiguous: cut index {s} is {by_index.label!r}, and cut index {by_name.index} "
                          f"is labelled {s!r}; give the crossing tensor instead: --cut {computed(by_index)} "
                          f"(index {s}) or --cut {computed(by_name)} (index {by_name.index})")
    if by_name is not None or by_index is not None:
        return by_name or by_index
    listing = ", ".join(c.label for c in cuts[:40]) + (" ..." if len(cuts) > 40 else "")
    indices = f" (indices 0..{len(cuts) - 1})" if s.isdigit() else ""
    raise ExportError(f"no valid cut named {s!r}. Valid cuts{indices} (see `--list-cuts`): {listing}")


def cut_at_an_end(model: onnx.ModelProto, cuts: list[Cut], spec: str | int) -> str | None:
    """Why ``spec`` (a ``--cut`` that names no valid cut) is no split, when it lies at an end of the model:
    at or after its output (nothing left for the server) or at its input (nothing computed on the device).

    ``spec`` is matched as a tensor name, a module's label (the cut after its last node) or a
    ``<module>/<op>`` label, as ``find_cuts`` names cuts. Returns the message for the user, or None
    (``spec`` names no such point: the caller's generic error lists the valid cuts).
    """
    g = model.graph
    nodes, s = list(g.node), str(spec)
    outputs = [o.name for o in g.output]
    inputs = [i.name for i in g.input]
    pos = _position(nodes, s)
    if s not in outputs and pos is None and not (len(inputs) == 1 and s in inputs):
        return None
    const, shapes = constant_tensors(model), shapes_of(model)
    computes = _computes(nodes, [0 if all(i in const for i in n.input) else node_macs(n, shapes) for n in nodes])
    made = {t: i for i, n in enumerate(nodes) for t in n.output}
    pos = made.get(s, len(nodes) - 1) if s in outputs else (-1 if s in inputs else pos)
    done = [o for o in outputs if made.get(o, len(nodes)) <= pos]
    deepest = f"`--list-cuts`; the deepest is {cuts[-1].label!r}"
    if not any(computes[pos + 1:]):
        at = f" {done[-1]!r}" if done and done[-1] != s else ""
        return (f"--cut {s}: that is at the model's output{at}: the device would compute all of the model and leave "
                f"nothing for the server. Choose an earlier cut ({deepest}), or, to run the model whole on the "
                "device, split nothing: a bundle's whole.onnx is the whole model (onnxruntime)")
    if done:  # a model of several outputs, cut after one of them is made
        what = "that is a model output" if s == done[0] else f"the model's output {done[0]!r} is made before it"
        return (f"--cut {s}: {what}: it would be computed on the device, and the server gives every output; "
                f"choose a cut before {done[0]!r} is made ({deepest})")
    if not any(computes[:pos + 1]):
        what = "nothing" if pos < 0 else "nothing but a reshape of the input"
        return (f"--cut {s}: that is at the model's input: the device would compute {what} and send the raw "
                "input, which is all on the server, not a split (`edgerun serve BUNDLE --with-whole` serves the "
                "whole model beside a split, and `edgerun bench` compares the two). Choose a later cut "
                f"(`--list-cuts`; the first is {cuts[0].label!r})")
    return None


def _position(nodes: list[onnx.NodeProto], s: str) -> int | None:
    """The node after which ``s`` would cut: the node making the tensor ``s``, the last node of the module
    ``s``, or the node ``<module>/<op>``; None when ``s`` names none of these."""
    last: dict[str, int] = {}
    for i, n in enumerate(nodes):
        if s in n.output:
            return i
        scopes, op = module_scopes(n)
        for scope in scopes:
            last[scope] = i
        if scopes and s == f"{scopes[-1]}/{op}":
            return i
    return last.get(s)
