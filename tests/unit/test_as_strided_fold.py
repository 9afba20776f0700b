"""torch writes ``as_strided`` as a flat Gather whose indices come from the batch size (Shape -> Range ->
Mul -> Add): ConvNeXt / Swin's pooled features did, and their default front half ran on onnxruntime only
("cannot run node 'node_Shape_0' (op Shape)"). An identity one is a Reshape; any other stays."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.exporters.as_strided import fold_identity_gathers

POOL_MODEL = '''
import torch
import torch.nn as nn

class Pool(nn.Module):  # ConvNeXt's ending: a channels-last LayerNorm, then the global average pool
    def __init__(self):
        super().__init__()
        self.stem, self.norm, self.pool = nn.Conv2d(3, 8, 2, stride=2), nn.LayerNorm(8), nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 4)
    def forward(self, x):
        y = self.norm(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(torch.flatten(self.pool(y), 1))

def pool():
    torch.manual_seed(0)
    return Pool(), torch.randn(1, 3, 8, 8)
'''


def _flat_gather(offsets: list[int], width: int = 4) -> onnx.ModelProto:
    """y = flatten(x)[b * 4 + offsets] for x [batch, width], the index built from x's batch size as torch does."""
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["n1"], start=0, end=1),
        helper.make_node("Squeeze", ["n1"], ["n"]),
        helper.make_node("Range", ["zero", "n", "one"], ["r"]),
        helper.make_node("Mul", ["r", "four"], ["r4"]),
        helper.make_node("Unsqueeze", ["r4", "ax1"], ["r4u"]),
        helper.make_node("Add", ["r4u", "offs"], ["idx"]),
        helper.make_node("Reshape", ["x", "flat"], ["xf"]),
        helper.make_node("Gather", ["xf", "idx"], ["y"], axis=0),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                              [c("zero", 0), c("one", 1), c("four", 4), c("ax1", [1]), c("offs", [offsets]),
                               c("flat", [-1])])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))


@pytest.mark.parametrize(("offsets", "width", "folded"), [
    ([0, 1, 2, 3], 4, True),
    ([3, 2, 1, 0], 4, False),
    ([0, 1, 1, 3], 4, False),
    ([0, 1, 2, 3], 8, False),  # indices 0..4N-1 in order, but of a tensor of 8N: its first half, not a Reshape
])
def test_only_a_gather_that_reads_every_element_in_order_becomes_a_reshape(tmp_path, offsets, width, folded):
    from edgerun.engine import ort_session

    model = _flat_gather(offsets, width)
    x = np.arange(3 * width, dtype=np.float32).reshape(3, width)
    onnx.save(model, tmp_path / "before.onnx")
    want = ort_session(tmp_path / "before.onnx").run(None, {"x": x})[0]
    assert fold_identity_gathers(model) == int(folded)
    ops = [n.op_type for n in model.graph.node]
    assert ops == (["Reshape"] if folded else ["Shape", "Squeeze", "Range", "Mul", "Unsqueeze", "Add",
                                                        "Reshape", "Gather"])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, tmp_path / "after.onnx")
    np.testing.assert_array_equal(ort_session(tmp_path / "after.onnx").run(None, {"x": x})[0], want)


def test_a_channels_last_pool_exports_with_a_native_front_that_matches_the_whole(tmp_path):
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model
    from edgerun.verify import verify

    path = tmp_path / "m.py"
    path.write_text(POOL_MODEL)
    traced = trace_model(f"{path}:pool")
    assert "Shape" not in [n.op_type for n in traced.model.graph.node]
    cut = next(c for c in traced.cuts if c.label.startswith("pool"))  # the front ends with the pooled features
    b = export(traced, ExportConfig(cut=cut.index, evaluate=False, calib_samples=4), tmp_path / "b")
    assert b.native_ok, b.native_reason
    rep = verify(b)
    assert rep.ok and rep.native == "ok", rep.messages
