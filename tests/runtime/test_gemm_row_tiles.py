"""The GEMM's tiling: a part-filled row tile, and the order of the tiles.

A part-filled row tile of the GEMM (M not a multiple of the micro-kernel's rows) computes only its
rows (kernels_gemm_avx512.cpp: the body for R = mr rows), with each row's sums in the same order as
in a full tile: a row's output must be the bits it has when more rows follow it.

Checked on a Gemm (MatMul + Add, A read in place; 3..32 rows: B packed at load; more: B packed per
call) and on a conv (weights packed at load: the packed-A body), each against the same layer with
rows appended so that every tile is full (the Gemm's extra token rows, the conv's extra output
channels), at 1 and 2 threads, with K over one block (K > 256: tiles accumulate into C), and N with a
partial strip (<= 16 and > 16 columns left); and against onnxruntime within the engine's tolerance.

A Gemm of more than four row tiles with A read in place runs its strips outer and its row tiles inner
(kernels_gemm.cpp strips_outer): the same kernel calls in another order, so the bits of row tiles outer
(EDGERUN_NO_STRIPS_OUTER=1, read once per process: a child process here).
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


def _save(tmp_path, name, nodes, x_shape, y_shape, inits):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *x_shape])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *y_shape])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.save(m, tmp_path / f"{name}.onnx")
    erg.write_erg(m, tmp_path / f"{name}.erg")
    return tmp_path / name


def _gemm(tmp_path, name, rows, w, b):
    k, n = w.shape
    nodes = [helper.make_node("MatMul", ["x", "W"], ["t"]), helper.make_node("Add", ["t", "B"], ["y"])]
    return _save(tmp_path, name, nodes, [rows, k], [rows, n], [numpy_helper.from_array(w, "W"),
                                                               numpy_helper.from_array(b, "B")])


def _conv(tmp_path, name, w, b, h):
    cout, cin = w.shape[:2]
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=[3, 3], pads=[1] * 4)
    return _save(tmp_path, name, [node], [cin, h, h], [cout, h, h], [numpy_helper.from_array(w, "W"),
                                                                     numpy_helper.from_array(b, "B")])


def _runs(path, x, threads):
    return NativeEngine(path.with_suffix(".erg"), max_batch=2, threads=threads).run(x)["y"]


def _close_to_ort(path, x, y):
    ref = OrtEngine(path.with_suffix(".onnx")).run(x)["y"]
    np.testing.assert_allclose(y, ref, rtol=NATIVE_VS_ORT_RTOL, atol=NATIVE_VS_ORT_RTOL * float(np.abs(ref).max()))


# (rows, k, n): every remainder of 8 rows, K of one and of two blocks, N with 8 / 20 columns past a strip
@pytest.mark.parametrize("rows,k,n", [(9, 64, 40), (10, 300, 52), (11, 192, 72), (12, 520, 40), (13, 64, 52),
                                      (14, 300, 72), (15, 192, 40), (17, 384, 104), (41, 300, 52),
                                      (197, 384, 72)])
def test_gemm_part_tile_rows_same_bits_as_full_tiles(tmp_path, rows, k, n):
    rng = np.random.default_rng(rows * 7 + k + n)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    full = (rows + 7) // 8 * 8
    part_p, full_p = _gemm(tmp_path, "part", rows, w, b), _gemm(tmp_path, "full", full, w, b)
    x = rng.standard_normal((2, full, k)).astype(np.float32)
    for threads in (1, 2):
        for batch in (1, 2):
            y = _runs(part_p, x[:batch, :rows], threads)
            assert np.array_equal(y, _runs(full_p, x[:batch], threads)[:, :rows]), (threads, batch)
    _close_to_ort(part_p, x[:, :rows], _runs(part_p, x[:, :rows], 1))


@pytest.mark.parametrize("cout,cin", [(3, 8), (13, 40), (33, 64)])
def test_conv_part_tile_channels_same_bits_as_full_tiles(tmp_path, cout, cin):
    rng = np.random.default_rng(cout + cin)
    full = (cout + 7) // 8 * 8
    w = (rng.standard_normal((full, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
    b = rng.standard_normal(full).astype(np.float32)
    part_p, full_p = _conv(tmp_path, "part", w[:cout], b[:cout], 10), _conv(tmp_path, "full", w, b, 10)
    x = rng.standard_normal((2, cin, 10, 10)).astype(np.float32)
    for threads in (1, 2):
        y = _runs(part_p, x, threads)
        assert np.array_equal(y, _runs(full_p, x, threads)[:, :cout]), threads
    _close_to_ort(part_p, x, _runs(part_p, x, 1))


_CHILD = """
import sys
import numpy as np
from edgerun.engine import NativeEngine
erg_path, x_path, out_path = sys.argv[1:4]
x = np.load(x_path)
np.savez(out_path, *[NativeEngine(erg_path, max_batch=2, threads=t).run(x[:b])["y"] for t in (1, 2) for b in (1, 2)])
"""


# (rows, k, n): B packed per call in one and in several K blocks, one and several column blocks, part tiles
@pytest.mark.parametrize("rows,k,n", [(33, 300, 72), (197, 384, 1152), (100, 1536, 384), (257, 300, 200)])
def test_strips_outer_same_bits_as_row_tiles_outer(tmp_path, rows, k, n):
    rng = np.random.default_rng(rows + k + n)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    path = _gemm(tmp_path, "g", rows, w, b)
    x = rng.standard_normal((2, rows, k)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    outs = {}
    for name, env in (("outer", {}), ("inner", {"EDGERUN_NO_STRIPS_OUTER": "1"})):
        subprocess.run([sys.executable, "-c", _CHILD, str(path.with_suffix(".erg")), str(tmp_path / "x.npy"),
                        str(tmp_path / f"{name}.npz")], env={**os.environ, **env}, check=True)
        with np.load(tmp_path / f"{name}.npz") as z:
            outs[name] = [z[f"arr_{i}"] for i in range(4)]
    for a, c in zip(outs["outer"], outs["inner"]):
        assert np.array_equal(a, c)
    _close_to_ort(path, x, outs["outer"][3])
