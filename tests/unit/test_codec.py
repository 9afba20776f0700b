"""The tsq activation codec (Python reference): round trip within the stated bound,
params records, NaN/Inf rejected, malformed payloads rejected (never a crash)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgerun import codec
from edgerun.errors import ConfigError, FrameError

# |decoded - x| <= max_err holds in exact arithmetic; the fp32 decode (m + q*s) adds
# at most a few ulps of the decoded magnitude.
DECODE_ULPS = 4
EPS32 = float(np.finfo(np.float32).eps)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_within_bound(x: np.ndarray, y: np.ndarray, p: codec.TSQParams) -> None:
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    split = np.abs(x) > np.float32(p.tau)
    assert np.array_equal(y[split], x[split]), "split values must travel exactly"
    tol = p.max_err + DECODE_ULPS * EPS32 * np.maximum(np.abs(x64), np.abs(y64))
    err = np.abs(y64 - x64)
    assert (err[~split] <= tol[~split]).all(), f"max error {err[~split].max()} > bound {p.max_err}"


def roundtrip(x: np.ndarray, p: codec.TSQParams) -> np.ndarray:
    y = codec.decode(codec.encode(x, p), x.shape, p)
    assert y.shape == x.shape and y.dtype == np.float32
    assert_within_bound(x, y, p)
    return y


shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=7)
floats = st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)
params = st.builds(
    codec.TSQParams,
    tau=st.sampled_from([0.5, 3.0, 100.0, math.inf]),
    max_err=st.sampled_from([1e-4, 0.01, 0.3]),
    bits=st.sampled_from([(2, 3, 4, 6, 8), (8,), (1, 2), (4,)]),
    layout=st.sampled_from(sorted(codec.LAYOUTS)),
)


@SETTINGS
@given(x=hnp.arrays(np.float32, shapes, elements=floats), p=params)
def test_roundtrip_random_within_bound(x, p):
    roundtrip(x, p)


@SETTINGS
@given(shape=shapes, scale=st.sampled_from([0.0, 1e-30, 1e-7, 1.0, 7e4, 1e20]), p=params,
       seed=st.integers(0, 2**16))
def test_roundtrip_adversarial_scales(shape, scale, p, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    roundtrip(x, p)


@pytest.mark.parametrize("layout", sorted(codec.LAYOUTS))
@pytest.mark.parametrize("case", ["zeros", "constant_rows", "huge_outliers", "tiny", "one_row", "one_col"])
def test_roundtrip_named_cases(case, layout):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 3, 3)).astype(np.float32)
    if case == "zeros":
        x[:] = 0
    elif case == "constant_rows":
        x[:] = np.arange(8, dtype=np.float32)[None, :, None, None] * 0.37
    elif case == "huge_outliers":
        x.flat[[0, 17, 100]] = [1e30, -3e38, 7e5]
    elif case == "tiny":
        x *= np.float32(1e-38)
    elif case == "one_row":
        x = x[:1, :1]
    else:
        x = x[:1, :, :1, :1]
    p = codec.TSQParams(tau=4.0, max_err=0.01, layout=layout)
    roundtrip(x, p)


def test_zero_and_dead_rows_cost_no_bits():
    x = np.zeros((1, 32, 4, 4), np.float32)
    p = codec.TSQParams(tau=1.0, max_err=0.01)
    payload = codec.encode(x, p)
    assert len(payload) == 16 + 16 + 2 * 32  # header + nibble codes + one fp16 minimum per row


def test_fewer_bits_for_a_looser_bound():
    x = np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype(np.float32)
    sizes = [len(codec.encode(x, codec.TSQParams(tau=10.0, max_err=e))) for e in (1e-3, 1e-2, 1e-1, 1.0)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0] / 3


def test_all_widths_default_never_costs_more_than_v1_widths():
    # Same bound, more widths to choose from: every row pays <= the bits it paid with (2,3,4,6,8).
    x = (np.random.default_rng(2).standard_normal((1, 24, 8, 8)) * np.linspace(0.1, 4, 24)[None, :, None, None])
    x = x.astype(np.float32)
    assert codec.DEFAULT_BITS == tuple(range(1, 9))
    new = codec.encode(x, codec.TSQParams(tau=20.0, max_err=0.02))
    old = codec.encode(x, codec.TSQParams(tau=20.0, max_err=0.02, bits=(2, 3, 4, 6, 8)))
    assert len(new) < len(old)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad):
    x = np.ones((1, 4, 2, 2), np.float32)
    x[0, 1, 1, 0] = bad
    with pytest.raises(FrameError) as ei:
        codec.encode(x, codec.TSQParams(tau=1.0, max_err=0.1))
    assert ei.value.code == "non_finite" and "NaN/Inf" in str(ei.value)


def test_params_bytes_roundtrip_and_validation():
    p = codec.calibrate(np.random.default_rng(0).standard_normal((8, 4, 3, 3)), budget=1e-3, layout="position")
    assert codec.TSQParams.from_bytes(p.to_bytes()) == p
    for kwargs in ({"tau": 0.0}, {"tau": math.nan}, {"max_err": 0.0}, {"max_err": math.inf}, {"bits": ()},
                   {"bits": (4, 2)}, {"bits": (0, 2)}, {"bits": (9,)}, {"layout": "rows"}, {"budget": -1.0}):
        with pytest.raises(ConfigError):
            codec.TSQParams(**{"tau": 1.0, "max_err": 0.1, **kwargs})
    raw = p.to_bytes()
    for bad in (raw[:10], raw[:-1], bytes([2]) + raw[1:], raw[:1] + bytes([7]) + raw[2:], raw + b"\x09"):
        with pytest.raises(FrameError):
            codec.TSQParams.from_bytes(bad)


def test_calibrate_sets_tau_and_error_from_budget():
    acts = np.random.default_rng(0).standard_normal((64, 8, 4, 4)).astype(np.float32)
    p = codec.calibrate(acts, budget=1e-3, tau_percentile=99.0)
    assert p.tau == pytest.approx(np.percentile(np.abs(acts), 99.0), rel=1e-6)
    x = acts[:8]
    y = codec.decode(codec.encode(x, p), x.shape, p)
    nmse = float(((y - x) ** 2).sum() / (x**2).sum())
    assert nmse <= p.budget  # max_err is a worst-case bound: the realised error is below the budget
    for bad in ({"budget": 0.0}, {"budget": 1.5}, {"budget": 1e-3, "tau_percentile": 0.0}):
        with pytest.raises(ConfigError):
            codec.calibrate(acts, **bad)
    with pytest.raises(ConfigError):
        codec.calibrate(np.array([np.nan]), budget=1e-3)


# ---------------------------------------------------------------------------- malformed payloads

P = codec.TSQParams(tau=2.0, max_err=0.05)
X = np.random.default_rng(3).standard_normal((1, 8, 4, 4)).astype(np.float32)
GOOD = codec.encode(X, P)


def test_good_payload_has_split_values():
    assert int.from_bytes(GOOD[12:16], "little") > 0  # so the index checks below are exercised


@pytest.mark.parametrize("cut", [0, 1, 15, 16, 17, len(GOOD) // 2, len(GOOD) - 1])
def test_truncated_payload_rejected(cut):
    with pytest.raises(FrameError):
        codec.decode(GOOD[:cut], X.shape, P)


@pytest.mark.parametrize("edit", ["version", "layout", "iw", "rows", "row_len", "n_sparse", "code", "trailing",
                                  "index_range", "index_order", "shape"])
def test_inconsistent_payload_rejected(edit):
    b = bytearray(GOOD)
    shape = X.shape
    n_sparse = int.from_bytes(b[12:16], "little")
    if edit == "version":
        b[0] = 9
    elif edit == "layout":
        b[1] = 0
    elif edit == "iw":
        b[2] = 4
    elif edit == "rows":
        b[4] += 1
    elif edit == "row_len":
        b[8] += 1
    elif edit == "n_sparse":
        b[12:16] = (n_sparse + 1).to_bytes(4, "little")
    elif edit == "code":
        b[16] = 0x55  # width 5 is not in params.bits
    elif edit == "trailing":
        b += b"\0"
    elif edit in ("index_range", "index_order"):
        codes = np.frombuffer(bytes(b[16:20]), np.uint8)
        nib = np.stack([codes & 15, codes >> 4], 1).ravel()
        idx_at = 16 + 4 + 2 * int((nib != 15).sum()) + 2 * int(((nib >= 1) & (nib <= 8)).sum())
        if edit == "index_range":
            b[idx_at:idx_at + 2] = (999).to_bytes(2, "little")
        else:
            b[idx_at + 2:idx_at + 4] = b[idx_at:idx_at + 2]
    else:
        shape = (1, 8, 4, 2)
    with pytest.raises(FrameError):
        codec.decode(bytes(b), shape, P)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_garbage_payload_rejected(data):
    with pytest.raises(FrameError):
        codec.decode(data, X.shape, P)


@SETTINGS
@given(pos=st.integers(0, len(GOOD) - 1), byte=st.integers(0, 255))
def test_corrupted_payload_never_crashes(pos, byte):
    b = bytearray(GOOD)
    b[pos] = byte
    try:
        y = codec.decode(bytes(b), X.shape, P)
    except FrameError:
        return
    assert y.shape == X.shape and np.isfinite(y).all()
