"""Softmax over a contiguous last dim (attention's scores) keeps its maximum and sum in 16 lanes, the row's
last n % 16 values padded: 663 -> 282 us for a ViT-S/16 block's 6 x 197 x 197 scores. Against onnxruntime
at every row length around the lane width, with NaN / inf rows, at 1 and 2 threads (the same bits).

On AVX-512 the row runs in zmm registers (kernels_elem.cpp softmax_row_avx512: GCC kept the cloned loop's
16 maximum lanes in scalar registers and its sums on the stack): the same operations in the same order,
so the bits of the cloned loop (EDGERUN_NO_SOFTMAX_AVX512=1, read once per process: a child process)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgerun.engine import NativeEngine, OrtEngine
from edgerun.exporters import erg


def _rows(tmp_path, n):
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7, n])])
    m = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    onnx.save(m, tmp_path / "m.onnx")
    erg.write_erg(m, tmp_path / "m.erg")
    x = (np.random.default_rng(n).standard_normal((2, 7, n)) * 20).astype(np.float32)
    x[0, 1, -1] = np.nan  # in the padded tail
    x[0, 2, 0] = np.inf
    x[0, 3, :] = -np.inf
    x[0, 4, n // 2] = -np.inf
    x[0, 5, :] = 1e30  # equal, huge: 1 / n each
    x[1, 6, 0] = 100.0  # one dominant score
    return x


@pytest.mark.parametrize("n", [1, 5, 15, 16, 17, 32, 197])
def test_row_softmax_matches_onnxruntime_with_nan_and_inf_rows(tmp_path, n):
    x = _rows(tmp_path, n)
    want = OrtEngine(tmp_path / "m.onnx").run(x)["y"]
    one = NativeEngine(tmp_path / "m.erg", max_batch=2, threads=1).run(x)["y"]
    two = NativeEngine(tmp_path / "m.erg", max_batch=2, threads=2).run(x)["y"]
    assert np.array_equal(one, two, equal_nan=True)
    assert np.array_equal(np.isnan(one), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(one[ok], want[ok], rtol=1e-5, atol=1e-7)


_CHILD = """
import sys
import numpy as np
from edgerun.engine import NativeEngine
x = np.load(sys.argv[2])
np.save(sys.argv[3], NativeEngine(sys.argv[1], max_batch=2, threads=1).run(x)["y"])
"""


@pytest.mark.parametrize("n", [1, 5, 16, 17, 31, 197])
def test_row_softmax_avx512_same_bits_as_cloned_loop(tmp_path, n):
    x = _rows(tmp_path, n)
    x[1, 0] = np.random.default_rng(1).uniform(-100.0, 0.0, n)  # exps down to the -87 clamp
    np.save(tmp_path / "x.npy", x)
    outs = []
    for i, env in enumerate(({}, {"EDGERUN_NO_SOFTMAX_AVX512": "1"})):
        subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "m.erg"), str(tmp_path / "x.npy"),
                        str(tmp_path / f"y{i}.npy")], env={**os.environ, **env}, check=True)
        outs.append(np.load(tmp_path / f"y{i}.npy"))
    assert np.array_equal(outs[0].view(np.uint32), outs[1].view(np.uint32))
