"""The ONNX -> .erg converter: refusals, header round trip, and the loader's checks."""

from __future__ import annotations

import struct

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.errors import BundleError, UnsupportedOpError
from edgerun.exporters import erg


def _model(nodes, inits, out_shape=(None, 4, 8, 8), in_shape=(None, 4, 8, 8)) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *in_shape[1:]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *out_shape[1:]])
    g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _conv_relu_model() -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu0")]
    return _model(nodes, {"w": w})


def test_unsupported_op_names_op_node_and_fallback(tmp_path):
    m = _model([helper.make_node("LRN", ["x"], ["y"], name="my_lrn", size=3)], {})
    assert erg.check_native_support(m) == [("my_lrn", "LRN")]
    with pytest.raises(UnsupportedOpError) as exc:
        erg.write_erg(m, tmp_path / "m.erg")
    msg = str(exc.value)
    assert "LRN" in msg and "my_lrn" in msg and "--engine ort" in msg


def test_unsupported_attribute_is_refused(tmp_path):
    m = _model([helper.make_node("Pad", ["x", "p"], ["y"], name="reflect_pad", mode="reflect")],
               {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}, out_shape=(None, 4, 10, 10))
    assert erg.check_native_support(m) == [("reflect_pad", "Pad")]


@pytest.mark.parametrize("op, in_shape, out_shape", [("MatMul", (None, 4, 5), (None, 6, 5)),
                                                     ("Gemm", (None, 5), (6, 5))])
def test_a_weight_on_the_left_is_refused_with_the_rewrite_to_use(op, in_shape, out_shape, tmp_path):
    """y = W @ x (torch: ``self.w @ x``) has a constant first operand, which the engine's Gemm does not
    take: the MatMul was refused as "a product of two activations" (W is none) and the Gemm as "input B
    must be a constant". The refusal names the constant and the rewrites the engine runs."""
    w = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    m = _model([helper.make_node(op, ["w", "x"], ["y"], name="w_at_x")], {"w": w},
               out_shape=out_shape, in_shape=in_shape)
    assert erg.check_native_support(m) == [("w_at_x", op)]
    with pytest.raises(UnsupportedOpError) as exc:
        erg.write_erg(m, tmp_path / "m.erg")
    msg = str(exc.value)
    assert "first operand A ('w') is a constant" in msg and "weight on the left" in msg
    assert "x @ W.T" in msg and "nn.Linear" in msg and "conv1d" in msg and "--engine ort" in msg
    assert "two activations" not in msg and "must be a constant" not in msg


def test_header_round_trip(tmp_path):
    info = erg.write_erg(_conv_relu_model(), tmp_path / "m.erg")
    h = erg.read_erg_header(tmp_path / "m.erg")
    assert h["version"] == erg.VERSION == 1
    assert (h["header_bytes"], h["tensor_bytes"], h["node_bytes"]) == (128, 96, 176)
    assert h["file_bytes"] == info["file_bytes"] == (tmp_path / "m.erg").stat().st_size
    assert h["n_inputs"] == 1 and h["n_outputs"] == 1
    assert h["n_nodes"] == info["nodes"] == 1  # Relu fused into the Conv
    assert h["weights_off"] % 64 == 0 and h["weights_bytes"] >= 4 * 4 * 9 * 4


def test_extra_outputs_prevent_fusion(tmp_path):
    info = erg.write_erg(_conv_relu_model(), tmp_path / "m.erg", extra_outputs=["c"])
    assert info["nodes"] == 2 and info["outputs"] == ["y", "c"]


def test_read_header_refuses_non_erg(tmp_path):
    p = tmp_path / "junk.erg"
    p.write_bytes(b"NOPE" + bytes(200))
    with pytest.raises(Exception, match="not an engine graph file"):
        erg.read_erg_header(p)


# ---- the C++ loader refuses damaged files (needs the compiled core) ----------
@pytest.fixture
def good_erg(tmp_path):
    path = tmp_path / "good.erg"
    erg.write_erg(_conv_relu_model(), path)
    return path


@pytest.mark.runtime
@pytest.mark.parametrize("keep", [0, 4, 64, 127, 128, 500, -1])
def test_truncated_file_is_refused(good_erg, tmp_path, keep):
    from edgerun.engine import NativeEngine

    data = good_erg.read_bytes()
    bad = tmp_path / "bad.erg"
    bad.write_bytes(data[: keep if keep >= 0 else len(data) - 1])
    with pytest.raises(BundleError, match="corrupt|shorter"):
        NativeEngine(bad)


@pytest.mark.runtime
@pytest.mark.parametrize("offset,value", [
    (0, b"XRGN"),                           # magic
    (20, struct.pack("<I", 10_000_000)),    # n_tensors
    (48, struct.pack("<Q", 1 << 40)),       # tensors_off
    (128 + 10, b"\x09"),                    # first tensor's ndim
    (128 + 32, struct.pack("<q", -7)),      # first tensor's dim 0
])
def test_corrupted_fields_are_refused(good_erg, tmp_path, offset, value):
    from edgerun.engine import NativeEngine

    data = bytearray(good_erg.read_bytes())
    data[offset: offset + len(value)] = value
    bad = tmp_path / "bad.erg"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        NativeEngine(bad)


@pytest.mark.runtime
def test_random_byte_flips_never_crash(good_erg, tmp_path):
    """Any single corrupted byte either loads (a weight changed) or is refused; never a crash."""
    from edgerun.engine import NativeEngine
    from edgerun.errors import EdgerunError

    data = good_erg.read_bytes()
    rng = np.random.default_rng(1)
    h = erg.read_erg_header(good_erg)
    x = np.zeros((1, 4, 8, 8), np.float32)
    for pos in rng.integers(0, h["weights_off"], 150):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        p = tmp_path / "flip.erg"
        p.write_bytes(bytes(bad))
        try:
            NativeEngine(p).run(x)
        except EdgerunError:
            pass


@pytest.mark.runtime
def test_newer_version_is_refused(good_erg, tmp_path):
    from edgerun.engine import NativeEngine

    data = bytearray(good_erg.read_bytes())
    data[4:8] = struct.pack("<I", erg.VERSION_QUANT + 1)
    bad = tmp_path / "v2.erg"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="version"):
        NativeEngine(bad)


@pytest.mark.runtime
def test_unknown_op_code_is_unsupported(good_erg, tmp_path):
    from edgerun.engine import NativeEngine

    data = bytearray(good_erg.read_bytes())
    h = erg.read_erg_header(good_erg)
    data[h["nodes_off"]: h["nodes_off"] + 4] = struct.pack("<I", 999)
    bad = tmp_path / "op.erg"
    bad.write_bytes(bytes(data))
    with pytest.raises(UnsupportedOpError, match="conv0"):
        NativeEngine(bad)
