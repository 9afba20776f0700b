"""MaxPool on the native engine against onnxruntime over the window settings standard CNNs use
(GoogLeNet / Inception's 3x3 stride-1 pad-1 branch pool, ResNet's 3x3 stride 2 pad 1, SqueezeNet's and
GoogLeNet's ceil-mode stride 2, 2x2 stride 2) and the rarer ones (dilation, uneven pads, 1-D): the
separable kernel (rows' maxima, then their maximum) gives onnxruntime's values, +-inf included."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgerun.engine import NativeEngine, ort_session
from edgerun.exporters import erg

CASES = [  # (input dims after the channels, kernel, strides, pads, dilations, ceil_mode)
    ((13, 13), [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 0),
    ((16, 16), [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 0),
    ((15, 15), [3, 3], [2, 2], [0, 0, 0, 0], [1, 1], 1),
    ((16, 16), [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], 0),
    ((11, 9), [3, 2], [1, 3], [1, 0, 1, 1], [1, 1], 0),
    ((12, 12), [3, 3], [1, 1], [2, 2, 2, 2], [2, 2], 0),
    ((7, 20), [1, 5], [1, 2], [0, 2, 0, 2], [1, 1], 1),
    ((3, 3), [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 0),
    ((40,), [3], [2], [1, 1], [1], 0),
    ((9, 13), [3, 3], [2, 2], [1, 2, 1, 0], [2, 2], 0),  # stride 2: odd width, odd and even column offsets
    ((6, 31), [3, 4], [2, 2], [1, 2, 1, 1], [1, 1], 1),
]


def _pool_model(dims, kernel, strides, pads, dilations, ceil, channels: int = 3) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, *dims])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=kernel, strides=strides, pads=pads,
                            dilations=dilations, ceil_mode=ceil)
    return onnx.shape_inference.infer_shapes(helper.make_model(
        helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 20)], ir_version=9))


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-c{c[5]}" for c in CASES])
@pytest.mark.parametrize("threads", [1, 2])
def test_max_pool_equals_onnxruntime(tmp_path, case, threads):
    dims, kernel, strides, pads, dilations, ceil = case
    model = _pool_model(dims, kernel, strides, pads, dilations, ceil)
    if erg.check_native_support(model):
        pytest.skip("a window in the padding: onnxruntime runs it (test_engine_ops.py)")
    onnx.save(model, tmp_path / "p.onnx")
    erg.write_erg(model, tmp_path / "p.erg")
    rng = np.random.default_rng(len(dims) * 100 + kernel[0])
    x = rng.standard_normal((2, 3, *dims)).astype(np.float32)
    x[0, 0].flat[::7] = -np.inf  # a window of -inf only, and +inf, where they fall
    x[1, 1].flat[::5] = np.inf
    x[1, 2] = np.round(x[1, 2])  # ties
    want = ort_session(tmp_path / "p.onnx").run(None, {"x": x})[0]
    got = NativeEngine(tmp_path / "p.erg", max_batch=2, threads=threads).run(x)["y"]
    assert got.shape == want.shape
    finite = np.isfinite(want)  # a window of -inf only: onnxruntime -inf, the engine -FLT_MAX (as before)
    np.testing.assert_array_equal(got[finite], want[finite])
    assert np.array_equal(np.isposinf(got), np.isposinf(want))
    assert (got[np.isneginf(want)] <= -np.finfo(np.float32).max).all()
