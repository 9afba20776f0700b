"""torch writes the key's ``transpose(-2, -1)`` in ``scaled_dot_product_attention`` as Reshape [B, H, L, D] ->
[B * H, L, D], Transpose [0, 2, 1], Reshape -> [B, H, D, L]: the first Reshape folds the batch and the
native engine refused it. Unfolding back into the same leading dims makes the three one Transpose."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.exporters.erg import check_native_support
from edgerun.exporters.folded_transpose import fold_merged_transposes


def _model(unfold_to: list[int], out_shape: list) -> onnx.ModelProto:
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Reshape", ["x", "fold"], ["f"], name="fold"),
             helper.make_node("Transpose", ["f"], ["t"], name="t", perm=[0, 2, 1]),
             helper.make_node("Reshape", ["t", "unfold"], ["y"], name="unfold")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 6, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [c("fold", [-1, 6, 8]), c("unfold", unfold_to)])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))


@pytest.mark.parametrize(("unfold_to", "out_shape", "folded"), [
    ([-1, 3, 8, 6], ["batch", 3, 8, 6], True),
    ([-1, 8, 3, 6], ["batch", 8, 3, 6], False),  # unfolded into other leading dims: another layout
])
def test_fold_transpose_unfold_is_one_transpose_only_into_the_same_dims(tmp_path, unfold_to, out_shape, folded):
    from edgerun.engine import ort_session

    model = _model(unfold_to, out_shape)
    assert ("fold", "Reshape") in check_native_support(model)  # "it folds the batch into another dim"
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 8)).astype(np.float32)
    onnx.save(model, tmp_path / "before.onnx")
    want = ort_session(tmp_path / "before.onnx").run(None, {"x": x})[0]
    assert fold_merged_transposes(model) == int(folded)
    if not folded:
        return
    assert [(n.op_type, list(n.attribute[0].ints)) for n in model.graph.node] == [("Transpose", [0, 1, 3, 2])]
    assert check_native_support(model) == []
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, tmp_path / "after.onnx")
    np.testing.assert_array_equal(ort_session(tmp_path / "after.onnx").run(None, {"x": x})[0], want)
