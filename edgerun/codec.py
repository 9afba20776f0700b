"""Activation codec "tsq": threshold splitting + token-wise adaptive bit quantization.

What crosses the network at the cut is one activation tensor. ``tsq`` shrinks it:

* **TS (threshold splitting)**: values with ``|x| > tau`` (few, large, accuracy-critical)
  travel exactly as a sparse side stream (flat index + fp32 value) and are left out of
  the dense part, so they do not stretch its quantization range.
* **TAB-Q (token-wise adaptive bits)**: the dense part is viewed as rows ("tokens") and
  each row gets the FEWEST bits of ``params.bits`` whose worst-case error
  (half a quantization step) is at most ``params.max_err``; per-row asymmetric uniform
  quantization with an fp16 minimum (rounded down) and an fp16 step (rounded up), so
  every dense value decodes within ``max_err`` of its input. A row whose range is
  within ``max_err`` costs 0 bits; a row no width can serve (|values| beyond fp16)
  travels as raw fp32.

The byte layouts of the payload and of the params are specified in
``cpp/include/edgerun/CODEC.md``; the C++ encoder (``encode_native``) produces the same
bytes as the Python reference ``encode``.

Example:
    >>> import numpy as np
    >>> from edgerun import codec
    >>> acts = np.random.default_rng(0).standard_normal((16, 32, 4, 4)).astype(np.float32)
    >>> p = codec.calibrate(acts, budget=1e-3)
    >>> x = acts[:1]
    >>> y = codec.decode(codec.encode(x, p), x.shape, p)
    >>> bool(np.abs(y - x).max() <= p.max_err * (1 + 1e-5))
    True
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from edgerun.errors import ConfigError, FrameError, from_core_error

CODEC_IDS = {"none": 0, "tsq": 1}
TSQ_VERSION = 1
LAYOUTS = {"position": 0, "channel": 1}  # token = a position's channel vector / a channel's map
# Every width 1..8: a row pays exactly the bits its range needs (was (2, 3, 4, 6, 8), which
# made a 5- or 7-bit row pay 6 or 8; measured +3..13% ratio on EfficientNet-Lite0 cuts at
# equal budget, benchmarks/bench_codec.py). Params carry their widths, so old bundles are unchanged.
DEFAULT_BITS = (1, 2, 3, 4, 5, 6, 7, 8)
RAW_CODE = 15  # row code: the row travels as fp32
HALF_MAX = 65504.0

_PARAMS = struct.Struct("<BBBBfff")   # version, layout, n_bits, reserved, tau, max_err, budget
_HEADER = struct.Struct("<BBBBIII")   # version, layout, index width, reserved, n_rows, row_len, n_sparse


@dataclass(frozen=True)
class TSQParams:
    """Codec parameters, calibrated at export and stored in the bundle.

    Args:
        tau: split threshold; ``|x| > tau`` travels exactly (``inf`` = no splitting).
        max_err: bound on ``|decoded - x|`` for every dense value (absolute, fp32).
        bits: allowed widths per row, ascending, each in 1..8 (0 bits is implicit).
        layout: ``"position"`` (a token is one spatial position's channel vector) or
            ``"channel"`` (a token is one channel's spatial map).
        budget: the relative MSE ``max_err`` was calibrated from (informational).

    Raises:
        ConfigError: a value is out of range (the message says what to use).
    """

    tau: float
    max_err: float
    bits: tuple[int, ...] = DEFAULT_BITS
    layout: str = "channel"
    budget: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", tuple(int(b) for b in self.bits))
        for name in ("tau", "max_err", "budget"):  # stored as float32: equal after a bytes round trip
            object.__setattr__(self, name, float(np.float32(getattr(self, name))))
        if not (self.tau > 0) or math.isnan(self.tau):
            raise ConfigError(f"tsq tau must be > 0 (or inf for no splitting), got {self.tau}")
        if not (0 < self.max_err < math.inf):
            raise ConfigError(f"tsq max_err must be finite and > 0, got {self.max_err}; calibrate() sets it")
        if not self.bits or list(self.bits) != sorted(set(self.bits)) or not all(1 <= b <= 8 for b in self.bits):
            raise ConfigError(f"tsq bits must be ascending distinct widths in 1..8, got {self.bits}; e.g. (1, 2, 3, 4, 5, 6, 7, 8)")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"tsq layout must be one of {sorted(LAYOUTS)}, got {self.layout!r}")
        if not (0 <= self.budget < math.inf):
            raise ConfigError(f"tsq budget must be finite and >= 0, got {self.budget}")

    def to_bytes(self) -> bytes:
        """The params record the frame and the bundle carry (see CODEC.md)."""
        head = _PARAMS.pack(TSQ_VERSION, LAYOUTS[self.layout], len(self.bits), 0, self.tau, self.max_err, self.budget)
        return head + bytes(self.bits)

    @classmethod
    def from_bytes(cls, data: bytes) -> "TSQParams":
        """Parse a params record.

        Raises:
            FrameError: truncated, unknown version, or out-of-range values.
        """
        data = bytes(data)
        if len(data) < _PARAMS.size:
            raise FrameError(f"tsq params are {len(data)} bytes, need >= {_PARAMS.size}; the record is truncated")
        ver, layout, n_bits, _, tau, max_err, budget = _PARAMS.unpack_from(data)
        if ver != TSQ_VERSION:
            raise FrameError(f"tsq params version {ver} is not supported (this edgerun reads {TSQ_VERSION}); "
                             "re-export the bundle or upgrade edgerun", "unsupported_codec")
        if len(data) != _PARAMS.size + n_bits:
            raise FrameError(f"tsq params are {len(data)} bytes, expected {_PARAMS.size + n_bits} for {n_bits} widths")
        names = {v: k for k, v in LAYOUTS.items()}
        if layout not in names:
            raise FrameError(f"tsq params layout {layout} is unknown; expected 0 or 1")
        try:
            return cls(tau, max_err, tuple(data[_PARAMS.size:]), names[layout], budget)
        except ConfigError as exc:
            raise FrameError(f"tsq params are invalid: {exc}") from None


def calibrate(acts: np.ndarray, *, budget: float, bits: tuple[int, ...] = DEFAULT_BITS,
              tau_percentile: float = 99.9, layout: str = "channel") -> TSQParams:
    """Calibrate tsq params on activations seen at the cut.

    ``tau`` is the ``tau_percentile`` of ``|acts|``. ``max_err`` is set so that the
    expected relative MSE of the dense part on data like ``acts`` is about ``budget``:
    a uniform error within a step ``2 * max_err`` has MSE ``max_err**2 / 3``.

    Args:
        acts: calibration activations, ``(N, C, ...)``, finite.
        budget: target relative MSE (error energy / signal energy), e.g. 1e-3.
        bits: allowed row widths.
        tau_percentile: percentile of ``|acts|`` above which values split off (100 = none).
        layout: token layout (see ``TSQParams``).

    Returns:
        The params to store in the bundle.

    Raises:
        ConfigError: empty or non-finite ``acts``, or an out-of-range option.
    """
    a = np.abs(np.asarray(acts, dtype=np.float64)).ravel()
    if a.size == 0 or not np.isfinite(a).all():
        raise ConfigError("calibrate needs a non-empty, finite array of activations")
    if not (0 < budget < 1):
        raise ConfigError(f"budget is a relative MSE in (0, 1), got {budget}; try 1e-3")
    if not (0 < tau_percentile <= 100):
        raise ConfigError(f"tau_percentile must be in (0, 100], got {tau_percentile}")
    tau = float(np.percentile(a, tau_percentile)) if tau_percentile < 100 else math.inf
    if not tau > 0:  # mostly zeros: a zero threshold would send every non-zero value sparse
        tau = math.inf
    ms = float(np.mean(np.where(a <= tau, a * a, 0.0)))  # the split values are exact: not in the budget
    max_err = math.sqrt(3.0 * budget * ms) if ms > 0 else 1e-6
    return TSQParams(tau, max_err, tuple(bits), layout, budget)


# ---------------------------------------------------------------------------- geometry

def _geometry(shape: tuple[int, ...], layout: str) -> tuple[int, int, int, int, int]:
    """(layout code used, n_rows, row_len, N*C, P) for a C-order tensor ``(N, C, *spatial)``."""
    if len(shape) == 0:
        raise ConfigError("tsq encodes tensors with >= 1 dim; reshape scalars to (1,)")
    n, c = (shape[0], shape[1]) if len(shape) >= 2 else (1, shape[0])
    p = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    if LAYOUTS[layout] == 1 and p > 1:
        return 1, n * c, p, c, p
    return 0, n * p, c, c, p  # no spatial dims: a sample's vector is the token


def _to_rows(flat: np.ndarray, shape: tuple[int, ...], lay: int, c: int, p: int) -> np.ndarray:
    n_c = flat.reshape(-1, c, p)
    return n_c.reshape(-1, p) if lay == 1 else n_c.transpose(0, 2, 1).reshape(-1, c)


def _from_rows(rows: np.ndarray, lay: int, c: int, p: int) -> np.ndarray:
    return rows.reshape(-1) if lay == 1 else rows.reshape(-1, p, c).transpose(0, 2, 1).reshape(-1)


def _half_ulp(v: np.ndarray) -> np.ndarray:
    _, e = np.frexp(v)  # v = f * 2**e, f in [0.5, 1): v's binade is 2**(e-1)
    return np.ldexp(1.0, np.maximum(e - 1, -14) - 10)


def _half_down(v: np.ndarray) -> np.ndarray:
    """Largest fp16 value <= v (v >= -65504), as float64; exact, so C++ can match it."""
    v = np.minimum(np.asarray(v, dtype=np.float64), HALF_MAX)
    a = np.abs(v)
    u = _half_ulp(np.where(a > 0, a, 1.0))
    return np.where(v >= 0, np.floor(a / u) * u, -np.ceil(a / u) * u) + 0.0


def _half_up(v: np.ndarray) -> np.ndarray:
    """Smallest fp16 value >= v (v >= 0), as float64; inf when none is finite."""
    v = np.asarray(v, dtype=np.float64)
    u = _half_ulp(np.where(v > 0, v, 1.0))
    r = np.ceil(v / u) * u + 0.0
    return np.where(r > HALF_MAX, np.inf, r)


def _choose(lo: np.ndarray, hi: np.ndarray, p: TSQParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (code, min, step) with the fewest bits whose half-step is <= max_err."""
    max_err = float(np.float32(p.max_err))
    raw = lo < -HALF_MAX
    m = _half_down(np.where(raw, 0.0, lo))
    span = hi - m
    code = np.full(lo.shape, RAW_CODE, dtype=np.uint8)
    step = np.zeros(lo.shape)
    code[(span <= max_err) & ~raw] = 0
    for b in reversed(p.bits):  # reversed: the fewest bits that work write last
        s = _half_up(span / float((1 << b) - 1))
        ok = (s * 0.5 <= max_err) & ~raw & (code != 0)
        code[ok], step[ok] = b, s[ok]
    return code, m, step


# ---------------------------------------------------------------------------- encode

def _check_finite(x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise FrameError(f"the activation holds {bad} NaN/Inf value(s); it is not sent. Check the model input "
                         "and the front half (an overflow in reduced precision?)", "non_finite")


def _pack_bits(q: np.ndarray, widths: np.ndarray) -> bytes:
    """LSB-first bit stream of the values ``q`` with per-value ``widths`` (0..8)."""
    total = int(widths.sum())
    if total == 0:
        return b""
    starts = np.cumsum(widths) - widths
    j = np.arange(total, dtype=np.int64) - np.repeat(starts, widths)
    bits = (np.repeat(q.astype(np.int64), widths) >> j) & 1
    return np.packbits(bits.astype(np.uint8), bitorder="little").tobytes()


def encode(x: np.ndarray, params: TSQParams) -> bytes:
    """Encode one activation tensor (Python reference; same bytes as ``encode_native``).

    Args:
        x: float array ``(N, C, *spatial)`` (any float dtype; encoded as float32).
        params: calibrated codec params.

    Returns:
        The payload (layout in CODEC.md).

    Raises:
        FrameError(code="non_finite"): ``x`` holds NaN or Inf.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    _check_finite(x)
    lay, n_rows, row_len, c, p = _geometry(x.shape, params.layout)
    flat = x.reshape(-1)
    iw = 2 if flat.size <= 65536 else 4
    sparse = np.abs(flat) > np.float32(params.tau)
    idx = np.flatnonzero(sparse)
    rows = _to_rows(np.where(sparse, np.float32(0), flat), x.shape, lay, c, p).astype(np.float64)
    smask = _to_rows(sparse, x.shape, lay, c, p)
    if rows.size:
        lo = np.where(smask, np.inf, rows).min(axis=1)
        hi = np.where(smask, -np.inf, rows).max(axis=1)
        empty = smask.all(axis=1)
        lo[empty], hi[empty] = 0.0, 0.0
    else:
        lo = hi = np.zeros(n_rows)
    code, m, step = _choose(lo, hi, params)
    quant = (code >= 1) & (code <= 8)
    maxq = np.where(quant, (1 << np.minimum(code, 8).astype(np.int64)) - 1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.rint((rows - m[:, None]) / np.where(quant, step, 1.0)[:, None])
    q = np.clip(np.where(smask, 0, q), 0, maxq[:, None]).astype(np.int64)
    nib = np.zeros(n_rows + (n_rows & 1), dtype=np.uint8)
    nib[:n_rows] = code
    parts = [
        _HEADER.pack(TSQ_VERSION, lay, iw, 0, n_rows, row_len, idx.size),
        (nib[0::2] | (nib[1::2] << 4)).tobytes(),
        m[code != RAW_CODE].astype("<f2").tobytes(),
        step[quant].astype("<f2").tobytes(),
        idx.astype("<u2" if iw == 2 else "<u4").tobytes(),
        flat[idx].astype("<f4").tobytes(),
        rows[code == RAW_CODE].astype("<f4").tobytes(),
        _pack_bits(q[quant].ravel(), np.repeat(code[quant].astype(np.int64), row_len)),
    ]
    return b"".join(parts)


def encode_native(x: np.ndarray, params: TSQParams | bytes) -> bytes:
    """Encode with the C++ encoder (the device's path); same bytes as ``encode``.

    Args:
        x: float array ``(N, C, *spatial)``; made C-contiguous float32 if it is not.
        params: ``TSQParams`` or its ``to_bytes()`` (the device keeps the bytes).

    Raises:
        FrameError(code="non_finite"): ``x`` holds NaN or Inf.
        ConfigError / FrameError: bad params or shape.
    """
    from edgerun import _core

    pb = params.to_bytes() if isinstance(params, TSQParams) else bytes(params)
    try:
        return _core.tsq_encode(np.ascontiguousarray(x, dtype=np.float32), pb)
    except _core.CoreError as exc:
        raise _map_core_error(exc) from None


def decode_native(payload: bytes, shape: tuple[int, ...], params: TSQParams | bytes) -> np.ndarray:
    """Decode with the C++ decoder (the server's path, ``crossing.decoder``); same checks as ``decode``."""
    from edgerun import _core

    pb = params.to_bytes() if isinstance(params, TSQParams) else bytes(params)
    try:
        return _core.tsq_decode(bytes(payload), [int(d) for d in shape], pb)
    except _core.CoreError as exc:
        raise _map_core_error(exc) from None


def _map_core_error(exc: Exception) -> Exception:
    # Codec payloads and params travel in frames: version and content errors are FrameErrors.
    code = int(exc.args[0]) if exc.args else 0
    names = {0x0306: "non_finite", 0x0202: "unsupported_codec", 0x0201: "malformed"}
    if code in names or code >> 8 == 0x03:
        return FrameError(str(exc.args[1]), names.get(code, "malformed"))
    return from_core_error(exc)


# ---------------------------------------------------------------------------- decode

class _Reader:
    """Bounds-checked sequential reads of a payload; every overrun is a FrameError."""

    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if count < 0 or self.pos + size > len(self.buf):
            raise FrameError(f"tsq payload is truncated: needs {self.pos + size} bytes, has {len(self.buf)}; drop "
                             "this frame (sender bug or corruption)")
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return out


def _bad(msg: str) -> FrameError:
    return FrameError(f"tsq payload is malformed: {msg}; drop this frame (sender bug or corruption)")


def decode(payload: bytes, shape: tuple[int, ...], params: TSQParams) -> np.ndarray:
    """Decode a payload into a float32 array of ``shape`` (server side, vectorized).

    Args:
        payload: bytes from ``encode`` / ``encode_native``.
        shape: the tensor's shape (from the frame's tensor record).
        params: the params the payload was encoded with (from the bundle / frame).

    Returns:
        float32 array; dense values within ``params.max_err`` of the input, split values exact.

    Raises:
        FrameError: the payload is truncated, inconsistent with ``shape``/``params``, or corrupt.
    """
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise FrameError(f"tsq shape {shape} has a negative dim")
    lay, n_rows, row_len, c, p = _geometry(shape, params.layout)
    numel = n_rows * row_len
    rd = _Reader(bytes(payload))
    ver, hl, iw, res, hr, hlen, n_sp = (int(v) for v in rd.take("u1", 4).tolist() + rd.take("<u4", 3).tolist())
    if ver != TSQ_VERSION:
        raise FrameError(f"tsq payload version {ver} is not supported (reads {TSQ_VERSION})", "unsupported_codec")
    if (hl, iw, res, hr, hlen) != (lay, 2 if numel <= 65536 else 4, 0, n_rows, row_len):
        raise _bad(f"header (layout {hl}, index width {iw}, {hr} rows x {hlen}) does not match shape {shape}")
    if n_sp > numel:
        raise _bad(f"{n_sp} split values for {numel} elements")
    packed = rd.take("u1", (n_rows + 1) // 2)
    code = np.stack([packed & 15, packed >> 4], axis=1).ravel()
    if n_rows & 1 and code[-1] != 0:
        raise _bad("padding nibble is not zero")
    code = code[:n_rows]
    allowed = np.zeros(16, dtype=bool)
    allowed[[0, RAW_CODE, *params.bits]] = True
    if not allowed[code].all():
        raise _bad(f"row bit codes {sorted(set(code[~allowed[code]].tolist()))} are not in {params.bits}")
    quant = (code >= 1) & (code <= 8)
    raw = code == RAW_CODE
    mins = rd.take("<f2", int(np.count_nonzero(~raw))).astype(np.float32)
    steps = rd.take("<f2", int(np.count_nonzero(quant))).astype(np.float32)
    idx = rd.take("<u2" if iw == 2 else "<u4", n_sp).astype(np.int64)
    vals = rd.take("<f4", n_sp)
    raws = rd.take("<f4", int(np.count_nonzero(raw)) * row_len)
    if not (np.isfinite(mins).all() and np.isfinite(steps).all() and (steps >= 0).all()):
        raise _bad("a row minimum or step is not finite")
    if not (np.isfinite(vals).all() and np.isfinite(raws).all()):
        raise _bad("a split or raw value is not finite")
    if n_sp and (idx[-1] >= numel or (n_sp > 1 and not (np.diff(idx) > 0).all())):
        raise _bad("split indices are out of range or not strictly increasing")
    widths = code[quant].astype(np.int64)
    n_bits = int(widths.sum()) * row_len
    stream = rd.take("u1", (n_bits + 7) // 8)
    if rd.pos != len(rd.buf):
        raise _bad(f"{len(rd.buf) - rd.pos} trailing bytes")
    rows = np.zeros((n_rows, row_len), dtype=np.float32)
    rows[~raw] = mins[:, None]
    if n_bits:
        w = np.repeat(widths, row_len)
        start = np.cumsum(w) - w
        buf = np.concatenate([stream, np.zeros(1, np.uint8)]).astype(np.int64)
        q = ((buf[start >> 3] | (buf[(start >> 3) + 1] << 8)) >> (start & 7)) & ((1 << w) - 1)
        qm = q.astype(np.float32).reshape(-1, row_len)
        rows[quant] = rows[quant] + qm * steps[:, None]
    rows[raw] = raws.reshape(-1, row_len)
    out = _from_rows(rows, lay, c, p).copy()
    out[idx] = vals
    return out.reshape(shape)
