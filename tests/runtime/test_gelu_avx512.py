"""Exact GELU (ONNX Gelu, approximate="none") on AVX-512 runs in zmm registers with fused multiply-adds
(kernels_elem.cpp gelu_erf_avx512: the same erf formula, its division a reciprocal estimate and a Newton
step, exp with scalef): against float64 GELU (math.erf), onnxruntime, and the cloned loop it replaced
(EDGERUN_NO_GELU_AVX512=1, read once per process: a child process), at lengths around the vector width,
with zeros, signed zeros, tiny and huge values, +-inf and NaN; 1 thread = 2 threads bit for bit."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgerun.engine import NativeEngine, OrtEngine
from edgerun.exporters import erg

_CHILD = """
import sys
import numpy as np
from edgerun.engine import NativeEngine
np.save(sys.argv[3], NativeEngine(sys.argv[1], max_batch=1, threads=1).run(np.load(sys.argv[2]))["y"])
"""

SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 0.5, -0.5, 3.0, -3.0, 5.5, -5.5, 9.0, -9.0, 30.0, -30.0,
           1e30, -1e30, np.inf, -np.inf, np.nan]


def _model(tmp_path, n):
    g = helper.make_graph([helper.make_node("Gelu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(m, tmp_path / "m.onnx")
    erg.write_erg(m, tmp_path / "m.erg")


@pytest.mark.parametrize("n", [1, 15, 16, 17, 21, 4097, 20000])
def test_gelu_matches_float64_onnxruntime_and_the_loop(tmp_path, n):
    _model(tmp_path, n)
    x = (np.random.default_rng(n).standard_normal((1, n)) * 4).astype(np.float32)
    x[0, :min(n, len(SPECIAL))] = SPECIAL[:n]
    y = NativeEngine(tmp_path / "m.erg", max_batch=1, threads=1).run(x)["y"]
    assert np.array_equal(y, NativeEngine(tmp_path / "m.erg", max_batch=1, threads=2).run(x)["y"], equal_nan=True)
    want = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) if math.isfinite(v) else np.nan
                     for v in x[0].astype(np.float64)])
    fin = np.isfinite(x[0])
    v = np.abs(x[0, fin]).astype(np.float64)
    ulp = np.spacing(np.abs(want[fin]).astype(np.float32)).astype(np.float64)
    # the formula's erf (1.5e-7) and its float rounding: the loop measured up to 2.8e-7 |v| (200,000 values)
    assert (np.abs(y[0, fin] - want[fin]) <= 4e-7 * v + 2 * ulp).all()
    assert np.isnan(y[0, np.isnan(x[0])]).all()
    ort = OrtEngine(tmp_path / "m.onnx").run(x)["y"]
    np.testing.assert_allclose(y[0, fin], ort[0, fin], rtol=1e-5, atol=1e-6)
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "m.erg"), str(tmp_path / "x.npy"),
                    str(tmp_path / "loop.npy")], env={**os.environ, "EDGERUN_NO_GELU_AVX512": "1"}, check=True)
    loop = np.load(tmp_path / "loop.npy")
    assert np.array_equal(np.isnan(y), np.isnan(loop)) and np.array_equal(y[np.isinf(y)], loop[np.isinf(loop)])
    assert (np.abs(y[0, fin] - loop[0, fin]) <= 4e-7 * v + 2 * ulp).all()
