"""The server's side of the cut: coded tensors are checked on their declared shape and decoded
size before they are decoded, so a small frame cannot make the server allocate gigabytes."""

from __future__ import annotations

import numpy as np
import pytest

from edgerun import codec, crossing, wire
from edgerun.bundle import TensorSpec
from edgerun.errors import FrameError
from edgerun.server import check_tensors

SPEC = [TensorSpec("act", (None, 16, 8, 8))]
PARAMS = codec.TSQParams(tau=4.0, max_err=0.05, layout="channel")


def coded(x: np.ndarray, shape: tuple[int, ...] | None = None, payload: bytes | None = None) -> wire.CodedTensor:
    payload = codec.encode(x, PARAMS) if payload is None else payload
    return wire.CodedTensor(wire.CODEC_TSQ, 1, shape or x.shape, PARAMS.to_bytes(), payload)


def test_unpack_decodes_like_the_reference():
    x = np.random.default_rng(0).standard_normal((2, 16, 8, 8)).astype(np.float32) * 2
    t = coded(x)
    check_tensors([t], SPEC, wire.DEFAULT_MAX_FRAME_BYTES)
    (y,) = crossing.unpack([t])
    ref = codec.decode(t.payload, x.shape, PARAMS)  # the C++ decoder may round m + q*s with one FMA
    assert np.allclose(y, ref, rtol=4 * np.finfo(np.float32).eps, atol=0)
    assert np.abs(y - x)[np.abs(x) <= PARAMS.tau].max() <= PARAMS.max_err * (1 + 1e-5)


def test_a_small_frame_that_decodes_huge_is_refused_before_decoding():
    # All-zero rows cost 2.5 bytes each: 4,100 samples are 164 KB coded and 16.8 MB decoded.
    x = np.zeros((4100, 16, 8, 8), np.float32)
    t = coded(x)
    assert len(t.payload) < 200_000
    assert crossing.decoded_bytes([t]) == x.nbytes
    with pytest.raises(FrameError) as e:
        check_tensors([t], SPEC, wire.DEFAULT_MAX_FRAME_BYTES)
    assert e.value.code == "too_large"
    assert "smaller batches" in str(e.value)
    check_tensors([t], SPEC, x.nbytes)  # at the limit: accepted


def test_a_coded_tensor_of_the_wrong_shape_is_refused_before_decoding():
    # The payload is garbage: decoding it would raise "malformed"; the shape check comes first.
    t = coded(np.zeros((1, 3), np.float32), payload=b"\x01garbage")
    with pytest.raises(FrameError) as e:
        check_tensors([t], SPEC, wire.DEFAULT_MAX_FRAME_BYTES)
    assert e.value.code == "bad_tensors"
    assert "(None, 16, 8, 8)" in str(e.value)


def test_a_coded_tensor_must_declare_the_cut_dtype():
    t = wire.CodedTensor(wire.CODEC_TSQ, 2, (1, 16, 8, 8), PARAMS.to_bytes(), b"")
    with pytest.raises(FrameError, match="float16, expected float32") as e:
        check_tensors([t], SPEC, wire.DEFAULT_MAX_FRAME_BYTES)
    assert e.value.code == "bad_tensors"


def test_a_coded_tensor_of_a_dtype_tsq_does_not_decode_to_is_refused():
    """tsq decodes to float32 only: an int8 cut tensor declared tsq-coded passed the checks (its dtype was
    the cut's), decoded to float32 and failed in the back half as an 'internal' server error."""
    spec = [TensorSpec("q", (None, 16, 8, 8), "int8")]
    t = wire.CodedTensor(wire.CODEC_TSQ, 3, (1, 16, 8, 8), PARAMS.to_bytes(),
                         codec.encode(np.zeros((1, 16, 8, 8), np.float32), PARAMS))
    with pytest.raises(FrameError, match="decodes to float32 only.*send this tensor raw") as e:
        check_tensors([t], spec, wire.DEFAULT_MAX_FRAME_BYTES)
    assert e.value.code == "malformed"
