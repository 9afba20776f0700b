"""Implicit-GEMM convolutions (cpp/src/kernels_conv_implicit_avx512.cpp): on AVX-512 the GEMM's
B strips are packed straight from the input image instead of from an im2col column matrix.

The GEMM runs the same tiles and kernel calls on the same values, so every conv the path takes
must give the bits of im2col + GEMM (EDGERUN_NO_IMPLICIT_CONV=1, read once per process: run in a
child process here), at 1 and 2 threads and batch 2, and onnxruntime's values within the engine's
tolerance. The shapes cover both ways a strip row is read (contiguous masked loads: stride 1 with
output rows as wide as the input; gathers: strides, dilations, valid convs), zero borders on every
side, several K blocks (K > 256), part-filled strips and row tiles, groups and tiny cout.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun import _core
from edgerun.engine import NativeEngine, OrtEngine
from edgerun.exporters import erg

NATIVE_VS_ORT_RTOL = 1e-4  # test_engine.py's: summation order differs from onnxruntime's, not indexing


def assert_close(ref: np.ndarray, got: np.ndarray, what: str) -> None:
    scale = max(float(np.abs(ref).max()), 1e-3)
    err = float(np.abs(ref - got).max()) / scale
    assert err <= NATIVE_VS_ORT_RTOL, f"{what}: max error {err:.2e} of scale {scale:.3g}"


# (cin, cout, h, w, k, stride, dilation, pads [t, l, b, r], group)
SHAPES = [
    (64, 64, 16, 16, 3, 1, 1, [1, 1, 1, 1], 1),     # ResNet's 3x3: contiguous, K = 576 (3 K blocks)
    (3, 64, 40, 40, 7, 2, 1, [3, 3, 3, 3], 1),      # a 7x7 stride-2 stem: gathers, K = 147
    (32, 48, 17, 23, 3, 2, 1, [1, 0, 0, 1], 1),     # stride 2, asymmetric pads, odd sizes
    (40, 24, 12, 12, 1, 2, 1, [0, 0, 0, 0], 1),     # 1x1 stride 2 (a downsample shortcut)
    (16, 20, 15, 15, 3, 1, 2, [2, 2, 2, 2], 1),     # dilated, same width: contiguous
    (48, 36, 11, 9, 3, 1, 1, [0, 0, 0, 0], 1),      # valid conv: rows narrower than the input
    (30, 33, 9, 7, 5, 1, 1, [2, 1, 2, 3], 1),       # 5x5, uneven pads, 33 channels (part row tile)
    (300, 16, 6, 6, 3, 1, 1, [1, 1, 1, 1], 1),      # K = 2700: 11 K blocks, 36 pixels (a short strip)
    (24, 32, 10, 10, 3, 1, 1, [1, 1, 1, 1], 2),     # grouped (not depthwise)
    (8, 3, 14, 14, 3, 1, 1, [1, 1, 1, 1], 1),       # cout 3: smallest row tile the path takes
    (8, 2, 14, 14, 3, 1, 1, [1, 1, 1, 1], 1),       # cout 2: sgemm's row path, im2col kept
    (16, 16, 3, 45, 1, 1, 1, [1, 1, 1, 1], 1),      # a padded 1x1 (not pointwise): border lanes only
]

_CHILD = """
import json, sys
import numpy as np
from edgerun.engine import NativeEngine
erg_path, x_path, out_path = sys.argv[1:4]
x = np.load(x_path)
outs = [NativeEngine(erg_path, max_batch=2, threads=t).run(x)["y"] for t in (1, 2)]
np.save(out_path, np.stack(outs))
"""


def _conv(cin, cout, h, w, k, stride, dil, pads, group):
    rng = np.random.default_rng(cin * 7 + cout + k)
    wt = (rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin * k * k / group)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    ek = dil * (k - 1) + 1
    oh = (h + pads[0] + pads[2] - ek) // stride + 1
    ow = (w + pads[1] + pads[3] - ek) // stride + 1
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", kernel_shape=[k, k], pads=pads,
                              strides=[stride, stride], dilations=[dil, dil], group=group),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", cin, h, w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cout, oh, ow])
    g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(wt, "W"), numpy_helper.from_array(b, "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return onnx.shape_inference.infer_shapes(m)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:7])) + f"g{s[8]}")
def test_implicit_conv_equals_im2col_bit_for_bit(tmp_path, shape):
    cin, cout, h, w = shape[:4]
    m = _conv(*shape)
    onnx.save(m, tmp_path / "c.onnx")
    erg.write_erg(m, tmp_path / "c.erg")
    x = np.random.default_rng(h * w).standard_normal((2, cin, h, w)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    got = [NativeEngine(tmp_path / "c.erg", max_batch=2, threads=t).run(x)["y"] for t in (1, 2)]
    np.testing.assert_array_equal(got[1], got[0])  # 2 threads = 1 thread
    assert_close(OrtEngine(tmp_path / "c.onnx").run(x)["y"], got[0], f"conv {shape}")
    env = dict(os.environ, EDGERUN_NO_IMPLICIT_CONV="1")
    r = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "c.erg"), str(tmp_path / "x.npy"),
                        str(tmp_path / "ref.npy")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = np.load(tmp_path / "ref.npy")
    if _core.gemm_path() == "avx512" and cout > 2 and os.environ.get("EDGERUN_NO_IMPLICIT_CONV", "") in ("", "0"):
        kernel = NativeEngine(tmp_path / "c.erg", max_batch=2).profile_layers(x[:1], runs=1)[0]["kernel"]
        assert kernel == "conv-implicit", kernel
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def test_implicit_conv_needs_no_column_matrix(tmp_path):
    """The column matrix is gone from the engine's scratch where the path runs: ResNet's 3x3 conv
    on a 56x56 plane needed 576 x 3136 floats (7.2 MB) of it."""
    if _core.gemm_path() != "avx512":
        pytest.skip(f"no AVX-512 here (fp32 gemm {_core.gemm_path()}): im2col + GEMM")
    m = _conv(64, 64, 56, 56, 3, 1, 1, [1, 1, 1, 1], 1)
    erg.write_erg(m, tmp_path / "c.erg")
    code = "import sys; from edgerun import _core; print(_core.Engine(sys.argv[1], 1, 1).scratch_bytes)"
    sizes = {}
    for name, env in (("implicit", {}), ("im2col", {"EDGERUN_NO_IMPLICIT_CONV": "1"})):
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.erg")], env=dict(os.environ, **env),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        sizes[name] = int(r.stdout)
    assert sizes["im2col"] - sizes["implicit"] >= 576 * 3136 * 4, sizes
