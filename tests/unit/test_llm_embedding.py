"""The token embedding of an LLM front half stored in 8 bits (``llm_quant.quantize_embedding``).

On a small ONNX graph with a random table (not already on an 8-bit grid, unlike SmolLM2's Q8_0
one): the looked-up rows stay within half a quantization step of the fp32 rows, the table takes a
little over a quarter of its bytes, and a front half without such a table is refused with what to do.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.errors import ExportError
from edgerun.exporters import llm_quant

V, H = 300, 64


def _front(path, table, axis=0):
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["h"], axis=axis), helper.make_node("Relu", ["h"], ["y"])], "f",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(table, "table")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _run(path, ids):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


def test_rows_stay_within_half_a_step_and_the_table_shrinks_to_about_a_quarter(tmp_path):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((V, H)).astype(np.float32)
    table[7, 3] = 400.0  # an outlier widens only its own block's step
    table[9] = 0.0  # an all-zero block: scale 0, no division by zero
    path = tmp_path / "front.onnx"
    _front(path, table)
    ids = np.array([[0, 7, 9, V - 1], [5, 5, 5, 5]], np.int64)
    ref = _run(path, ids)
    info = llm_quant.quantize_embedding(path, V, H)
    got = _run(path, ids)
    step = np.abs(table.reshape(V, -1, llm_quant.EMBED_BLOCK)).max(-1) / 127
    bound = np.repeat(step, llm_quant.EMBED_BLOCK, axis=1)[ids] / 2 + 1e-6
    assert np.all(np.abs(got - ref) <= bound)
    assert np.abs(got - ref).max() > 0  # lossy for this table: the test would pass trivially otherwise
    assert got[0, 2].tolist() == [0.0] * H
    assert abs(got[0, 1, 3] - 400.0) < 1e-3  # the block's largest value is on the grid
    assert info["bytes_fp32"] == V * H * 4 and info["bytes"] < 0.3 * info["bytes_fp32"]
    assert 0 < info["max_abs_change"] <= step.max() / 2 + 1e-6
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == ["GatherBlockQuantized", "Relu"]


@pytest.mark.parametrize("shape, axis", [((V, H + 1), 0), ((V, H), 1), ((V + 1, H), 0)])
def test_a_front_without_a_vocab_by_hidden_table_gathered_on_rows_is_refused(tmp_path, shape, axis):
    path = tmp_path / "front.onnx"
    _front(path, np.zeros(shape, np.float32), axis)
    with pytest.raises(ExportError, match="--embedding fp32"):
        llm_quant.quantize_embedding(path, V, H)


def test_a_table_another_node_reads_too_is_refused(tmp_path):
    # a tied head reads the embedding as well: replacing it would leave that reader without its input
    table = np.zeros((V, H), np.float32)
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["h"], axis=0), helper.make_node("Identity", ["table"], ["t"])],
        "f", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, None), helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "table")])
    path = tmp_path / "front.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(ExportError, match="read by it alone"):
        llm_quant.quantize_embedding(path, V, H)
