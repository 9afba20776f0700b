"""Weights packed once at load (cpp/src/engine.cpp pick_conv_kernels, kernels::conv2d_pack_weights,
kernels::sgemm_pack_b): the GEMM convs' weights (its A operand) in the micro-kernel's [K][8] panels,
and the constant B of Gemms with 3..32 rows at batch 1 in its 32-wide strips.

The kernels run the same products in the same order on the packed copies, so every output must be
the bits of the weights read in place (EDGERUN_NO_PACK_A=1 EDGERUN_NO_PACK_B=1, read once per
process: a child process here), at 1 and 2 threads and batch 1 and 2, and onnxruntime's values
within the engine's tolerance. The shapes cover part-filled row tiles (cout 3, 33), several K
blocks (K > 256), groups, 1x1 / implicit / 7x7 stride-2 convs, Gemm rows 3 / 17 / 32 (batch 2:
34 and 64), N not a multiple of the strip width, and a 2-thread split whose column blocks would
have been 16 wide without packing.
"""

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

NATIVE_VS_ORT_RTOL = 1e-4  # test_engine.py's

_CHILD = """
import sys
import numpy as np
from edgerun.engine import NativeEngine
erg_path, x_path, out_path = sys.argv[1:4]
x = np.load(x_path)
outs = [NativeEngine(erg_path, max_batch=2, threads=t).run(x[:b])["y"] for t in (1, 2) for b in (1, 2)]
np.savez(out_path, *outs)
"""

# (cin, cout, h, w, k, stride, pad, group)
CONVS = [
    (64, 64, 14, 14, 1, 1, 0, 1),     # 1x1: the GEMM reads its input in place
    (64, 33, 12, 12, 3, 1, 1, 1),     # implicit GEMM, 33 rows: a part-filled row tile
    (300, 16, 6, 6, 3, 1, 1, 1),      # K = 2700: 11 K blocks
    (3, 24, 30, 30, 7, 2, 3, 1),      # 7x7 stride 2 (gathers)
    (24, 32, 10, 10, 3, 1, 1, 2),     # grouped: one packed panel set per group
    (8, 3, 14, 14, 3, 1, 1, 1),       # cout 3: the smallest row tile packed
    (1024, 256, 4, 4, 1, 1, 0, 1),    # lda = 4 KB (the rows alias in L1): a ResNet-50 layer3 1x1
]

# (rows, k, n)
GEMMS = [(3, 64, 40), (17, 192, 768), (17, 300, 50), (32, 600, 64), (32, 1536, 384)]


def _conv_model(cin, cout, h, w, k, stride, pad, group):
    rng = np.random.default_rng(cin * 3 + cout + k)
    wt = (rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin * k * k / group)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=[k, k], pads=[pad] * 4,
                            strides=[stride, stride], group=group)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", cin, h, w])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cout, oh, ow])],
                          [numpy_helper.from_array(wt, "W"), numpy_helper.from_array(b, "B")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), (cin, h, w)


def _gemm_model(rows, k, n):
    rng = np.random.default_rng(rows + k + n)
    wt = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["t"]), helper.make_node("Add", ["t", "B"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", rows, n])],
                          [numpy_helper.from_array(wt, "W"), numpy_helper.from_array(b, "B")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), (rows, k)


def _check(tmp_path, model, shape):
    onnx.save(model, tmp_path / "m.onnx")
    erg.write_erg(model, tmp_path / "m.erg")
    x = np.random.default_rng(7).standard_normal((2, *shape)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    got = [NativeEngine(tmp_path / "m.erg", max_batch=2, threads=t).run(x[:b])["y"] for t in (1, 2) for b in (1, 2)]
    ref_ort = OrtEngine(tmp_path / "m.onnx").run(x)["y"]
    scale = max(float(np.abs(ref_ort).max()), 1e-3)
    assert float(np.abs(ref_ort - got[1]).max()) / scale <= NATIVE_VS_ORT_RTOL
    env = dict(os.environ, EDGERUN_NO_PACK_A="1", EDGERUN_NO_PACK_B="1")
    r = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "m.erg"), str(tmp_path / "x.npy"),
                        str(tmp_path / "ref.npz")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = np.load(tmp_path / "ref.npz")
    for i, g in enumerate(got):  # (threads, batch) = (1, 1), (1, 2), (2, 1), (2, 2)
        np.testing.assert_array_equal(g, ref[f"arr_{i}"])
    np.testing.assert_array_equal(got[2], got[0])  # 2 threads = 1 thread
    np.testing.assert_array_equal(got[3], got[1])
    np.testing.assert_array_equal(got[1][:1], got[0])  # batch 2's first sample = batch 1


@pytest.mark.parametrize("spec", CONVS, ids=lambda s: "x".join(map(str, s)))
def test_packed_conv_weights_same_bits(tmp_path, spec):
    _check(tmp_path, *_conv_model(*spec))


@pytest.mark.parametrize("spec", GEMMS, ids=lambda s: "x".join(map(str, s)))
def test_packed_gemm_weights_same_bits(tmp_path, spec):
    _check(tmp_path, *_gemm_model(*spec))
