"""Stage 3 of export: cut one ONNX graph into a front half and a back half.

Uses onnx's own ``Extractor`` (it walks back from the requested outputs and
keeps only the nodes and initializers they need). The back half keeps the
dynamic batch dimension on its inputs, so a server can batch requests.

A model input that crosses the cut (see ``cuts``: a joint state the front half does not
read to the end) is an input of the back half under its own name; the front half neither
takes nor gives it, and the device sends it as it came (``passthrough``).
"""

from __future__ import annotations

import onnx
from onnx.utils import Extractor

from edgerun.errors import ExportError
from edgerun.exporters.cuts import Cut


def split(model: onnx.ModelProto, cut: Cut) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Return ``(front, back)`` for ``cut``.

    Args:
        model: the traced whole model (shapes inferred).
        cut: a valid cut of ``model`` (see ``cuts.find_cuts``).

    Returns:
        front: graph input(s) -> the crossing tensors; back: crossing tensors -> graph output(s).

    Raises:
        ExportError: the cut does not separate the graph (a bug in the cut finder).
    """
    ins = [i.name for i in model.graph.input]
    outs = [o.name for o in model.graph.output]
    ex = Extractor(model)
    front = ex.extract_model(ins, [t for t in cut.tensors if t not in ins])
    _drop_unread_inputs(front)
    back = ex.extract_model(list(cut.tensors), outs)
    _check_separates(front, back, model, passthrough(model, cut.tensors))
    for half, name in ((front, "front"), (back, "back")):
        half.graph.name = f"{model.graph.name or 'model'}_{name}"
        half.producer_name = "edgerun"
    return front, back


def passthrough(model: onnx.ModelProto, tensors: tuple[str, ...] | list[str]) -> list[str]:
    """The crossing tensors that are inputs of ``model``: the device sends them as they came."""
    ins = {i.name for i in model.graph.input}
    return [t for t in tensors if t in ins]


def _drop_unread_inputs(front: onnx.ModelProto) -> None:
    """Extractor keeps every input it was given; the front half takes only those its nodes read."""
    read = {t for n in front.graph.node for t in n.input}
    for vi in [i for i in front.graph.input if i.name not in read]:
        front.graph.input.remove(vi)


def _check_separates(front: onnx.ModelProto, back: onnx.ModelProto, whole: onnx.ModelProto,
                     passed: list[str]) -> None:
    inputs = {i.name for i in whole.graph.input} - set(passed)
    back_needs = {t for n in back.graph.node for t in n.input}
    leaked = inputs & back_needs
    if leaked:
        raise ExportError(f"internal: the back half still reads the model input {sorted(leaked)}")
    n_nodes = len(front.graph.node) + len(back.graph.node)
    if n_nodes < len([n for n in whole.graph.node if n.op_type != "Constant"]):
        raise ExportError("internal: the halves lost nodes of the whole graph")
