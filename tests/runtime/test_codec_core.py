"""The tsq codec across the Python / C++ boundary: the C++ encoder writes the
golden bytes (and the Python reference's bytes), the C++ decoder reads them back
and rejects what the Python decoder rejects."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgerun import codec
from edgerun.errors import FrameError

from edgerun import _core  # noqa: E402  (runtime tests need the compiled core: fail, never skip)
pytestmark = pytest.mark.runtime

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden" / "codec"
GOLDEN_NAMES = sorted(p.stem for p in GOLDEN_DIR.glob("*.npy"))
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Both decoders compute m + q*s in fp32; a fused multiply-add on one side may differ by an ulp.
DECODER_ULPS = 2


def _golden(name: str) -> tuple[np.ndarray, codec.TSQParams, bytes]:
    x = np.load(GOLDEN_DIR / f"{name}.npy")
    p = codec.TSQParams.from_bytes((GOLDEN_DIR / f"{name}.params.bin").read_bytes())
    return x, p, (GOLDEN_DIR / f"{name}.bin").read_bytes()


def _assert_decoders_agree(a: np.ndarray, b: np.ndarray) -> None:
    tol = DECODER_ULPS * np.finfo(np.float32).eps * np.maximum(np.abs(a), np.abs(b))
    assert (np.abs(a.astype(np.float64) - b) <= tol).all()


def test_golden_files_present_and_current():
    assert len(GOLDEN_NAMES) >= 6
    spec = importlib.util.spec_from_file_location("make_codec_golden", GOLDEN_DIR.parent / "make_codec_golden.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.write(check=True) == 0, "golden files differ from the generator: the format or an encoder changed"


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_native_encoder_writes_golden_bytes(name):
    x, p, payload = _golden(name)
    assert codec.encode_native(x, p) == payload
    assert codec.encode(x, p) == payload


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_decoders_agree_on_golden(name):
    x, p, payload = _golden(name)
    y_py = codec.decode(payload, x.shape, p)
    y_cc = codec.decode_native(payload, x.shape, p)
    _assert_decoders_agree(y_py, y_cc)
    assert np.abs(y_py.astype(np.float64) - x)[np.abs(x) <= p.tau].max(initial=0) <= p.max_err * (1 + 1e-6)


shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6)
floats = st.floats(-1e5, 1e5, width=32, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(x=hnp.arrays(np.float32, shapes, elements=floats), tau=st.sampled_from([0.5, 3.0, float("inf")]),
       max_err=st.sampled_from([1e-3, 0.05, 2.0]), layout=st.sampled_from(sorted(codec.LAYOUTS)),
       bits=st.sampled_from([(2, 3, 4, 6, 8), (1, 5), (8,), codec.DEFAULT_BITS]))
def test_native_encoder_matches_reference(x, tau, max_err, layout, bits):
    p = codec.TSQParams(tau=tau, max_err=max_err, bits=bits, layout=layout)
    payload = codec.encode(x, p)
    assert codec.encode_native(x, p) == payload
    _assert_decoders_agree(codec.decode(payload, x.shape, p), codec.decode_native(payload, x.shape, p))


def test_native_encoder_scratch_reuse_across_shapes():
    # The encoder keeps per-thread row scratch between calls: a smaller tensor after a larger
    # one (and back) must not see stale row state.
    rng = np.random.default_rng(5)
    p = codec.TSQParams(tau=2.5, max_err=0.05)
    for shape in [(1, 40, 7, 7), (1, 3, 2, 2), (2, 5, 1, 9), (1, 40, 7, 7), (1, 6)]:
        x = rng.standard_normal(shape).astype(np.float32)
        assert codec.encode_native(x, p) == codec.encode(x, p)


def _tie_tensor() -> tuple[np.ndarray, codec.TSQParams]:
    """Rows whose values sit exactly half a step between two levels: m = 0, step 1.0 (span 255
    at 8 bits, the only width within max_err 0.6), values 0.5, 1.5, ..., 253.5."""
    row = np.concatenate([[0.0, 255.0], np.arange(254) + 0.5]).astype(np.float32)
    return np.tile(row, 3).reshape(1, 3, 16, 16), codec.TSQParams(tau=1e4, max_err=0.6)


def test_native_encoder_rounds_ties_to_even_on_every_path():
    """The C++ encoder rounds (v - m) / step half to even, as np.rint does, on its vector (AVX2)
    path and on the portable one (a subprocess: the path is chosen once per process)."""
    x, p = _tie_tensor()
    ref = codec.encode(x, p)
    assert codec.encode_native(x, p) == ref
    levels = codec.decode(ref, x.shape, p)[0, 0].ravel()[2:6]
    assert levels.tolist() == [0.0, 2.0, 2.0, 4.0]  # 0.5, 1.5, 2.5, 3.5 to even
    script = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); from test_codec_core import _tie_tensor; "
              "from edgerun import codec; x, p = _tie_tensor(); "
              "assert codec.encode_native(x, p) == codec.encode(x, p); print('same bytes')")
    env = {**os.environ, "EDGERUN_FORCE_PORTABLE": "1"}
    out = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "same bytes" in out.stdout, out.stderr


def test_native_rejects_non_finite():
    x = np.ones((1, 4, 2, 2), np.float32)
    x[0, 0, 0, 1] = np.nan
    with pytest.raises(FrameError) as ei:
        codec.encode_native(x, codec.TSQParams(tau=1.0, max_err=0.1))
    assert ei.value.code == "non_finite"


def test_native_accepts_non_contiguous_and_float64():
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6))
    p = codec.TSQParams(tau=2.0, max_err=0.01)
    view = x[:, :, ::2, ::2]
    assert codec.encode_native(view, p) == codec.encode(view, p)


X = np.random.default_rng(5).standard_normal((1, 8, 4, 4)).astype(np.float32)
P = codec.TSQParams(tau=2.0, max_err=0.05)
GOOD = codec.encode(X, P)


@pytest.mark.parametrize("cut", [0, 15, 16, 20, len(GOOD) - 1])
def test_native_decoder_rejects_truncated(cut):
    # a server answers with this message: it says what the payload is and what to do, as a malformed one does
    for decode in (codec.decode_native, codec.decode):
        with pytest.raises(FrameError, match="tsq payload is truncated: .*; drop this frame"):
            decode(GOOD[:cut], X.shape, P)


@SETTINGS
@given(pos=st.integers(0, len(GOOD) - 1), byte=st.integers(0, 255), extra=st.binary(max_size=3))
def test_native_decoder_agrees_with_reference_on_corruption(pos, byte, extra):
    b = bytearray(GOOD)
    b[pos] = byte
    b = bytes(b) + extra
    try:
        ref = codec.decode(b, X.shape, P)
    except FrameError:
        with pytest.raises(FrameError):
            codec.decode_native(b, X.shape, P)
        return
    _assert_decoders_agree(ref, codec.decode_native(b, X.shape, P))


@SETTINGS
@given(data=st.binary(max_size=300))
def test_native_decoder_rejects_garbage(data):
    with pytest.raises(FrameError):
        codec.decode_native(data, X.shape, P)


def test_native_rejects_bad_params():
    with pytest.raises(FrameError):
        codec.encode_native(X, P.to_bytes()[:-1])
