"""LayerNorm over the last dim: on AVX-512 each row runs in zmm registers (kernels_elem.cpp
layer_norm_row_avx512: the mean and the variance summed in double in 16 lanes, a masked tail). Against
a float64 reference and onnxruntime at row lengths around the lane width (1 .. 397), with and without a
bias, rows far from zero (mean 1000, std 1: the two passes in double keep the variance), 1 thread = 2
threads bit for bit; and within 1e-6 of the loop it replaced (EDGERUN_NO_LAYERNORM_AVX512=1, read once
per process: a child process), whose sums run in another order."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.engine import NativeEngine, OrtEngine
from edgerun.exporters import erg

_CHILD = """
import sys
import numpy as np
from edgerun.engine import NativeEngine
np.save(sys.argv[3], NativeEngine(sys.argv[1], max_batch=2, threads=1).run(np.load(sys.argv[2]))["y"])
"""


def _model(tmp_path, n, with_bias):
    rng = np.random.default_rng(n)
    scale = rng.uniform(0.5, 2.0, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    inits = [numpy_helper.from_array(scale, "s")] + ([numpy_helper.from_array(bias, "b")] if with_bias else [])
    node = helper.make_node("LayerNormalization", ["x", "s"] + (["b"] if with_bias else []), ["y"], axis=-1,
                            epsilon=1e-5)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, n])], inits)
    m = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    onnx.save(m, tmp_path / "m.onnx")
    erg.write_erg(m, tmp_path / "m.erg")
    x = rng.standard_normal((2, 5, n)).astype(np.float32) * 3
    x[0, 1] += 1000.0  # far from zero
    x[1, 2] = 7.0  # a constant row: variance 0
    return x, scale, bias if with_bias else np.zeros(n, np.float32)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 192, 384, 397])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm_rows_match_float64_and_onnxruntime(tmp_path, n, with_bias):
    x, scale, bias = _model(tmp_path, n, with_bias)
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    want = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * scale + bias
    one = NativeEngine(tmp_path / "m.erg", max_batch=2, threads=1).run(x)["y"]
    two = NativeEngine(tmp_path / "m.erg", max_batch=2, threads=2).run(x)["y"]
    assert np.array_equal(one, two)
    np.testing.assert_allclose(one, want, rtol=0, atol=2e-5 * float(np.abs(want).max()))
    ort = OrtEngine(tmp_path / "m.onnx").run(x)["y"]
    np.testing.assert_allclose(one, ort, rtol=1e-4, atol=1e-4 * float(np.abs(ort).max()))


@pytest.mark.parametrize("n", [17, 384])
def test_layernorm_rows_within_1e6_of_the_loop(tmp_path, n):
    x, _, _ = _model(tmp_path, n, True)
    np.save(tmp_path / "x.npy", x)
    outs = []
    for i, env in enumerate(({}, {"EDGERUN_NO_LAYERNORM_AVX512": "1"})):
        subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "m.erg"), str(tmp_path / "x.npy"),
                        str(tmp_path / f"y{i}.npy")], env={**os.environ, **env}, check=True)
        outs.append(np.load(tmp_path / f"y{i}.npy"))
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-6 * float(np.abs(outs[1]).max()))
