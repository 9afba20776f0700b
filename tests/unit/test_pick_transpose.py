"""timm's attention permutes its qkv to ``[3, B, H, N, D]`` and picks q, k, v along the 3: a Transpose that
moves the batch dim, refused by the native engine. Picked first on the original axis, then transposed with
the batch kept first, it is the same data; any other reader leaves the graph as it was."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.exporters.erg import check_native_support
from edgerun.exporters.pick_transpose import fold_batch_transposes

X_SHAPE = ["batch", 4, 3, 2, 5]  # [B, N, 3, H, D]
PERM = [2, 0, 3, 1, 4]  # -> [3, B, H, N, D]


def _c(name: str, v) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(v, np.int64), name)


def _model(readers: list[onnx.NodeProto], outs: dict[str, list], inits: list, perm=PERM,
           x_shape=X_SHAPE) -> onnx.ModelProto:
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="t", perm=perm), *readers]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in outs.items()],
                              inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))


QKV = {o: ["batch", 2, 4, 5] for o in "qkv"}


def _gathers():
    return ([helper.make_node("Gather", ["t", f"i{j}"], [o], name=f"g{o}", axis=0) for j, o in enumerate("qkv")],
            QKV, [_c("i0", 0), _c("i1", 1), _c("i2", -1)])


def _split_squeeze():
    return ([helper.make_node("Split", ["t"], ["s0", "s1", "s2"], name="split", axis=0, num_outputs=3)]
            + [helper.make_node("Squeeze", [f"s{j}", "ax0"], [o], name=f"sq{o}") for j, o in enumerate("qkv")],
            QKV, [_c("ax0", [0])])


def _slice_reshape():
    return ([helper.make_node("Slice", ["t", "b", "e", "ax0"], ["s"], name="slice"),
             helper.make_node("Reshape", ["s", "shape"], ["k"], name="rs")],
            {"k": ["batch", 2, 4, 5]}, [_c("b", [1]), _c("e", [2]), _c("ax0", [0]), _c("shape", [-1, 2, 4, 5])])


@pytest.mark.parametrize("build", [_gathers, _split_squeeze, _slice_reshape])
def test_picks_after_a_batch_moving_transpose_run_natively_with_the_same_bits(tmp_path, build):
    from edgerun.engine import ort_session

    model = _model(*build())
    assert ("t", "Transpose") in check_native_support(model)  # "perm [2, 0, 3, 1, 4] moves the batch dim"
    x = np.random.default_rng(0).standard_normal((3, 4, 3, 2, 5)).astype(np.float32)
    onnx.save(model, tmp_path / "before.onnx")
    want = ort_session(tmp_path / "before.onnx").run(None, {"x": x})
    assert fold_batch_transposes(model) == 1
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    perms = [list(helper.get_attribute_value(a)) for n in model.graph.node if n.op_type == "Transpose"
             for a in n.attribute]
    assert perms and all(p == [0, 2, 1, 3] for p in perms)  # each pick's batch-first rest of the perm
    assert {n.op_type for n in model.graph.node} == {"Gather", "Transpose"}
    assert check_native_support(model) == []
    onnx.save(model, tmp_path / "after.onnx")
    for got, ref in zip(ort_session(tmp_path / "after.onnx").run(None, {"x": x}), want):
        np.testing.assert_array_equal(got, ref)


def _two_rows():  # qkv[:2]: two slices along the 3, not one
    return ([helper.make_node("Slice", ["t", "b", "e", "ax0"], ["s"], name="slice")],
            {"s": [2, "batch", 2, 4, 5]}, [_c("b", [0]), _c("e", [2]), _c("ax0", [0])])


def _uneven_split():  # pieces of 2 and 1 along the 3: the second piece is index 2, not 1
    return ([helper.make_node("Split", ["t", "sizes"], ["s0", "s1"], name="split", axis=0),
             helper.make_node("Squeeze", ["s1", "ax0"], ["v"], name="sq")],
            {"v": ["batch", 2, 4, 5]}, [_c("sizes", [2, 1]), _c("ax0", [0])])


def _one_gather_and_a_reduce():  # one reader picks, another reads the whole permuted tensor
    return ([helper.make_node("Gather", ["t", "i0"], ["q"], name="gq", axis=0),
             helper.make_node("ReduceSum", ["t", "ax0"], ["r"], name="sum", keepdims=0)],
            {"q": ["batch", 2, 4, 5], "r": ["batch", 2, 4, 5]}, [_c("i0", 0), _c("ax0", [0])])


def _computed_index():  # the index is data
    return ([helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
             helper.make_node("ReduceMin", ["xi"], ["i"], keepdims=0),
             helper.make_node("Gather", ["t", "i"], ["q"], name="gq", axis=0)],
            {"q": ["batch", 2, 4, 5]}, [])


def _pick_not_leaving_batch_first():  # perm [2, 3, 0, 1, 4]: after the pick the batch is still not first
    return ([helper.make_node("Gather", ["t", "i0"], ["q"], name="gq", axis=0)],
            {"q": [2, "batch", 4, 5]}, [_c("i0", 0)], [2, 3, 0, 1, 4])


@pytest.mark.parametrize("build", [_two_rows, _uneven_split, _one_gather_and_a_reduce, _computed_index,
                                   _pick_not_leaving_batch_first])
def test_other_readers_leave_the_transpose_as_it_was(build):
    model = _model(*build())
    before = model.SerializeToString()
    assert fold_batch_transposes(model) == 0
    assert model.SerializeToString() == before
