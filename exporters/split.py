"""Stage 3 of export: cut one ONNX graph into a front half and a back half.

Uses onnx's own ``Extractor`` (it walks back from the requested outputs and
keeps only the nodes and initializers they need). The back half keeps the
dynamic batch dimension on its inputs, so a server can batch requests.
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
    front = ex.extract_model(ins, list(cut.tensors))
    back = ex.extract_model(list(cut.tensors), outs)
    _check_separates(front, back, model)
    for half, name in ((front, "front"), (back, "back")):
        half.graph.name = f"{model.graph.name or 'model'}_{name}"
        half.producer_name = "edgerun"
    return front, back


def _check_separates(front: onnx.ModelProto, back: onnx.ModelProto, whole: onnx.ModelProto) -> None:
    inputs = {i.name for i in whole.graph.input}
    back_needs = {t for n in back.graph.node for t in n.input}
    leaked = inputs & back_needs
    if leaked:
        raise ExportError(f"internal: the back half still reads the model input {sorted(leaked)}")
    n_nodes = len(front.graph.node) + len(back.graph.node)
    if n_nodes < len([n for n in whole.graph.node if n.op_type != "Constant"]):
        raise ExportError("internal: the halves lost nodes of the whole graph")
