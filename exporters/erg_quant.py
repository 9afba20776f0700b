"""Weight quantization for the native engine's ``.erg`` files (numpy only).

These functions define the stored formats (``cpp/include/edgerun/ERG.md``) and are
the reference the tests compare the C++ kernels against:

* int8: symmetric, one scale per output channel (row), ``q = round(w / s)`` in
  [-127, 127], ``s = max|row| / 127`` (a zero scale is clamped to the smallest
  normal float, so an all-zero channel stays exactly zero).
* int4: symmetric, one scale per group of ``group_size`` values along K,
  ``q`` in [-7, 7] stored as ``q + 8`` in a nibble, two per byte (low nibble
  first); each row is padded with zeros to a whole number of groups.

Example:
    >>> import numpy as np
    >>> q, s = quantize_int8(np.ones((2, 3), np.float32))
    >>> dequantize(DTYPE_INT8, q, s, k=3).tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
"""

from __future__ import annotations

import numpy as np

from edgerun.errors import ConfigError

DTYPE_F32, DTYPE_INT8, DTYPE_INT4 = 1, 2, 3
PREC_CODE = {"fp32": 0, "int8": 1, "int4": 2}
PREC_DTYPE = {"fp32": DTYPE_F32, "int8": DTYPE_INT8, "int4": DTYPE_INT4}
PRECISIONS = tuple(PREC_CODE)
_TINY = np.float32(np.finfo(np.float32).tiny)


def check_group_size(group_size: int) -> int:
    """Validate an int4 group size (even, 2..4096).

    Raises:
        ConfigError: an odd or out-of-range group size.
    """
    if not isinstance(group_size, (int, np.integer)) or group_size < 2 or group_size > 4096 \
            or group_size % 2:
        raise ConfigError(f"int4 group_size must be an even integer in 2..4096, got {group_size!r}")
    return int(group_size)


def quantize_int8(w2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: returns (q int8 [rows, k], scales f32 [rows])."""
    w2 = np.asarray(w2, np.float32)
    s = np.maximum(np.abs(w2).max(axis=1) / np.float32(127.0), _TINY).astype(np.float32)
    q = np.clip(np.rint(w2 / s[:, None]), -127, 127).astype(np.int8)
    return q, s


def quantize_int4(w2: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Group-wise symmetric int4: returns (packed u8 [rows, groups*gs/2], scales f32 [rows, groups])."""
    gs = check_group_size(group_size)
    w2 = np.asarray(w2, np.float32)
    rows, k = w2.shape
    groups = -(-k // gs)
    padded = np.zeros((rows, groups * gs), np.float32)
    padded[:, :k] = w2
    g = padded.reshape(rows, groups, gs)
    s = np.maximum(np.abs(g).max(axis=2) / np.float32(7.0), _TINY).astype(np.float32)
    q = np.clip(np.rint(g / s[:, :, None]), -7, 7).reshape(rows, -1)
    return pack_int4(q), s


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Pack int4 values ``q`` in [-7, 7], shape [rows, even n], into the stored nibbles
    (``q + 8``, two per byte, low nibble first): u8 [rows, n / 2]."""
    q = np.asarray(q).astype(np.int16) + 8
    return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)


def quantize(prec: str, w2: np.ndarray, group_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a [rows, k] weight at ``prec`` ("int8" | "int4")."""
    if prec == "int8":
        return quantize_int8(w2)
    if prec == "int4":
        return quantize_int4(w2, group_size)
    raise ConfigError(f"cannot quantize to {prec!r}; use int8 or int4")


def dequantize(dtype: int, q: np.ndarray, s: np.ndarray, *, k: int, group_size: int = 32) -> np.ndarray:
    """Inverse of ``quantize_*``: the f32 [rows, k] weight the engine computes with."""
    if dtype == DTYPE_INT8:
        return q.astype(np.float32) * s[:, None]
    lo = (q & 0x0F).astype(np.int16) - 8
    hi = (q >> 4).astype(np.int16) - 8
    vals = np.empty((q.shape[0], q.shape[1] * 2), np.float32)
    vals[:, 0::2], vals[:, 1::2] = lo, hi
    rows = q.shape[0]
    vals = vals.reshape(rows, -1, group_size) * s[:, :, None]
    return vals.reshape(rows, -1)[:, :k].astype(np.float32)


def fake_quantize(prec: str, w2: np.ndarray, group_size: int = 32) -> np.ndarray:
    """``w2`` after a quantize / dequantize round trip (the identity for fp32)."""
    if prec == "fp32":
        return np.asarray(w2, np.float32)
    q, s = quantize(prec, w2, group_size)
    return dequantize(PREC_DTYPE[prec], q, s, k=w2.shape[1], group_size=group_size)


def weight_bytes(prec: str, rows: int, k: int, group_size: int = 32) -> int:
    """Stored bytes of a [rows, k] weight at ``prec``, scales included."""
    if prec == "fp32":
        return rows * k * 4
    if prec == "int8":
        return rows * k + rows * 4
    groups = -(-k // group_size)
    return rows * groups * group_size // 2 + rows * groups * 4
