"""Cases found by differential fuzzing of the native engine against onnxruntime
(scripts/fuzz_engine.py): each failed before its fix. Small fixed shapes; a smoke run of the
fuzzer itself closes the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.engine import NativeEngine, OrtEngine
from edgerun.exporters import erg

pytestmark = pytest.mark.runtime

RTOL = 1e-4  # as tests/runtime/test_engine.py: summation order only


def _model(nodes, inits: dict, in_shape, out_shape):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)


def _assert_native_matches_ort(m, x, tmp_path, max_batch):
    onnx.save(m, tmp_path / "m.onnx")
    erg.write_erg(m, tmp_path / "m.erg")
    ref = OrtEngine(tmp_path / "m.onnx").run(x)["y"]
    got = NativeEngine(tmp_path / "m.erg", max_batch=max_batch).run(x)["y"]
    assert got.shape == ref.shape
    assert float(np.abs(ref - got).max()) <= RTOL * max(float(np.abs(ref).max()), 1e-3)


@pytest.mark.parametrize("c_shape, native", [((3,), True), ((1, 3), True), ((1, 1), True), ((3, 1), False)])
def test_gemm_bias_is_a_row_vector_or_the_model_falls_back(tmp_path, c_shape, native):
    """A Gemm's C of shape [M, 1] adds one value per row. With M == N (a fixed batch of 3 rows,
    3 outputs) its size passed the row-vector check and the engine added it per column: every
    output wrong by up to 20, no error. Such a C now names itself (onnxruntime runs the node);
    row vectors and scalars still run natively."""
    rng = np.random.default_rng(0)
    inits = {"B": rng.standard_normal((5, 3)).astype(np.float32),
             "C": np.arange(np.prod(c_shape), dtype=np.float32).reshape(c_shape) * 10}
    m = _model([helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="fc")], inits, (3, 5), (3, 3))
    if not native:
        assert erg.check_native_support(m) == [("fc", "Gemm")]
        return
    _assert_native_matches_ort(m, rng.standard_normal((3, 5)).astype(np.float32), tmp_path, max_batch=3)


def test_a_constant_concatenated_to_a_batched_tensor_falls_back_by_name(tmp_path):
    """Concat(constant [1, 3, 4], x [N, 5, 4]) runs on onnxruntime at batch 1. The exporter wrote
    it and check_native_support passed it, then the engine refused the file at load as corrupt
    ("inputs differ off the axis; re-create it with the exporter"), which re-creating never
    fixes. It now names itself; with a fixed batch the engine still runs it."""
    rng = np.random.default_rng(1)
    for batch in ("N", 2):
        c = rng.standard_normal((1 if batch == "N" else 2, 3, 4)).astype(np.float32)
        m = _model([helper.make_node("Concat", ["c", "x"], ["y"], name="cat", axis=1)], {"c": c},
                   (batch, 5, 4), (1 if batch == "N" else 2, 8, 4))
        m = onnx.shape_inference.infer_shapes(m)
        if batch == "N":
            assert erg.check_native_support(m) == [("cat", "Concat")]
        else:
            _assert_native_matches_ort(m, rng.standard_normal((2, 5, 4)).astype(np.float32), tmp_path, max_batch=2)


@pytest.mark.parametrize("coord", ["half_pixel", "align_corners", "asymmetric"])
def test_bilinear_resize_to_given_sizes_runs_natively(tmp_path, coord):
    """Resize (linear) given output sizes, as torch's interpolate(size=...) writes it: 7 -> 31
    rows and 11 -> 13 columns. The scale out / in (31 / 7 = 4.428571) times the input size rounds
    to 30.999998 in float32, and a floor check meant for given scales refused the node (the
    front half fell back to onnxruntime). It runs natively, with onnxruntime's values."""
    m = _model([helper.make_node("Resize", ["x", "", "", "sz"], ["y"], name="up", mode="linear", axes=[2, 3],
                                 coordinate_transformation_mode=coord)],
               {"sz": np.array([31, 13], np.int64)}, ("N", 2, 7, 11), ("N", 2, 31, 13))
    assert erg.check_native_support(m) == []
    x = np.random.default_rng(3).standard_normal((2, 2, 7, 11)).astype(np.float32)
    _assert_native_matches_ort(m, x, tmp_path, max_batch=2)


_KNOB_AFTER_LOAD = """
import os, sys
import numpy as np
from edgerun.engine import NativeEngine
os.environ.pop("EDGERUN_NO_DIRECT_CONV", None)
eng = NativeEngine(sys.argv[1], max_batch=1)
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
before = eng.run(x)["y"]
os.environ["EDGERUN_NO_DIRECT_CONV"] = "1"  # after the load: changes nothing
print(np.array_equal(eng.run(x)["y"], before), eng.profile_layers(x, runs=1, warmup=0)[0]["kernel"])
"""


def test_no_direct_conv_set_after_load_changes_nothing(tmp_path):
    """EDGERUN_NO_DIRECT_CONV was read on every run, not when the engine loads (README): set after
    an engine had loaded a stem conv (3x3 stride 2, 3 -> 32 channels, 224 x 224), the next run
    took im2col + GEMM on the 3.4 KB scratch sized at load for the direct kernel and wrote 1.4 MB
    past it (segfault). The kernel is now chosen at load: the run keeps its kernel and its bits.
    (In a child process, so that the crash fails this test alone.)"""
    w = np.random.default_rng(2).standard_normal((32, 3, 3, 3)).astype(np.float32)
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
               {"w": w}, ("N", 3, 224, 224), ("N", 32, 112, 112))
    erg.write_erg(m, tmp_path / "stem.erg")
    r = subprocess.run([sys.executable, "-c", _KNOB_AFTER_LOAD, str(tmp_path / "stem.erg")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    same, kernel = r.stdout.split()
    assert same == "True" and kernel in ("conv-3x3s2-direct", "conv")  # "conv": no AVX-512 here


def test_fuzzer_smoke(tmp_path):
    """Five cases of the fuzzer with a fixed seed run clean (scripts/fuzz_engine.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import fuzz_engine
    from fuzz_specs import random_spec

    for i in range(5):
        spec = random_spec(np.random.default_rng([0, i]))
        case_dir = tmp_path / str(i)
        case_dir.mkdir()
        status, findings = fuzz_engine.check_case(spec, case_dir, None)
        assert status != "failed", (spec, findings)
