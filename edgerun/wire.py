"""Wire frame v1: what crosses the network between device and server.

The layout, the versioning rule and the error codes are specified in
``cpp/include/edgerun/WIRE.md``. The device encodes with the C++ encoder
(:func:`encode_native`), the server decodes here (:func:`decode`); both follow the
same golden frames in ``tests/golden/wire/``. Pure Python + numpy (no torch).

Example:
    >>> import numpy as np
    >>> f = Frame(Kind.REQUEST, request_id=1, seq=0, bundle_hash=bytes(16),
    ...           tensors=[np.zeros((1, 4), np.float32)], meta={"t_us": 12})
    >>> decode(encode(f)).meta
    {'t_us': 12}
"""

from __future__ import annotations

import functools
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from edgerun.errors import FrameError

MAGIC = b"ERWF"
VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 16
MAX_DIMS = 8
MAX_META_DEPTH = 32  # containers nested in the meta JSON (the C++ side uses the same)
CODEC_RAW = 0
CODEC_TSQ = 1
KNOWN_CODECS = (CODEC_RAW, CODEC_TSQ)  # ids shared with edgerun.codec.CODEC_IDS


class Kind(IntEnum):
    """What a frame is: a request, its reply, or an error answering a request."""

    REQUEST = 1
    REPLY = 2
    ERROR = 3


#: wire dtype code -> numpy dtype (always little-endian on the wire). Add codes, never renumber.
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f2"),
    3: np.dtype("i1"),
    4: np.dtype("u1"),
    5: np.dtype("<i4"),
    6: np.dtype("<i8"),
}
_CODE_OF: dict[tuple[str, int], int] = {(dt.kind, dt.itemsize): code for code, dt in DTYPES.items()}

#: edgerun._core status codes of the frame group -> FrameError.code
CORE_CODES: dict[int, str] = {
    0x0300: "truncated",
    0x0301: "bad_magic",
    0x0302: "bad_version",
    0x0303: "bad_checksum",
    0x0304: "too_large",
    0x0305: "malformed",
    0x0306: "non_finite",
    0x0307: "unsupported_codec",
    0x0308: "wrong_bundle",
}

_HEADER = struct.Struct("<4sHBBQI16sIB3s")  # 44 bytes, see WIRE.md
_RECORD = struct.Struct("<BBBBI")  # codec, dtype, ndim, reserved, params_len
_U64 = struct.Struct("<Q")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size
MIN_FRAME_SIZE = HEADER_SIZE + _CRC.size


@dataclass(frozen=True)
class CodedTensor:
    """A tensor that crosses through an activation codec (see ``edgerun.codec``).

    The frame carries the codec's own bytes; the receiver decodes them with the
    codec named by ``codec`` into a tensor of ``dtype`` and ``shape``.
    """

    codec: int
    dtype: int          # wire dtype code of the decoded tensor (1 = float32)
    shape: tuple[int, ...]
    params: bytes
    payload: bytes


@dataclass
class Frame:
    """One decoded or to-be-encoded frame.

    Attributes:
        kind: request, reply or error.
        request_id: u64 chosen by the device; a reply carries the request's id.
        seq: u32 sequence number / token position.
        bundle_hash: 16 raw bytes, the first 16 bytes of the bundle's sha256.
        tensors: arrays of a wire dtype (see ``DTYPES``) or ``CodedTensor``s, at most 16,
            each at most 8-D.
        meta: a JSON object (timings; ``code``/``message`` for an error frame).
    """

    kind: Kind
    request_id: int
    seq: int
    bundle_hash: bytes
    tensors: list[np.ndarray | CodedTensor] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Encode
# ---------------------------------------------------------------------------


def encode_meta(meta: dict) -> bytes:
    """The meta bytes of a frame: compact, sorted-key UTF-8 JSON; b"" for an empty meta."""
    if not isinstance(meta, dict):
        raise FrameError(f"frame meta must be a dict (a JSON object), got {type(meta).__name__}", "malformed")
    if not meta:
        return b""
    try:
        raw = json.dumps(meta, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (lone surrogate) is a ValueError
        raise FrameError(f"frame meta is not JSON-serializable ({exc}): use finite numbers, str, bool, None, "
                         "lists and dicts with str keys", "malformed") from exc
    if _depth(meta) > MAX_META_DEPTH:
        raise FrameError(f"frame meta nests deeper than {MAX_META_DEPTH} levels: flatten it", "malformed")
    return raw


def _wire_array(x: np.ndarray | CodedTensor, i: int) -> tuple[int, np.ndarray | CodedTensor]:
    """(dtype code, C-contiguous little-endian array) for tensor i, or FrameError."""
    if isinstance(x, CodedTensor):
        if x.codec not in KNOWN_CODECS or x.codec == CODEC_RAW:
            raise FrameError(f"tensor {i}: codec {x.codec} is not a known activation codec", "unsupported_codec")
        if x.dtype not in DTYPES or len(x.shape) > MAX_DIMS or not x.params:
            raise FrameError(f"tensor {i}: coded tensor needs a wire dtype, <= {MAX_DIMS} dims and params", "malformed")
        if any(not 0 <= int(d) <= 0xFFFFFFFF for d in x.shape) or not fits_an_array(x.shape, DTYPES[x.dtype].itemsize):
            raise FrameError(f"tensor {i}: coded tensor's shape {x.shape} is not one an array can have", "malformed")
        return x.dtype, x
    if isinstance(x, np.generic):  # a numpy scalar crosses as a 0-d tensor
        x = np.asarray(x)
    if not isinstance(x, np.ndarray):
        raise FrameError(f"tensor {i} is a {type(x).__name__}, not a numpy array: pass np.asarray(x)", "malformed")
    code = _CODE_OF.get((x.dtype.kind, x.dtype.itemsize))
    if code is None:
        names = ", ".join(str(d) for d in DTYPES.values())
        raise FrameError(f"tensor {i}: dtype {x.dtype} cannot cross the wire; convert it to one of {names}", "malformed")
    if x.ndim > MAX_DIMS:
        raise FrameError(f"tensor {i} has {x.ndim} dims; a frame carries at most {MAX_DIMS}: reshape it", "malformed")
    if any(d > 0xFFFFFFFF for d in x.shape):
        raise FrameError(f"tensor {i}: a dim of {x.shape} exceeds 2**32 - 1", "malformed")
    return code, np.asarray(x, dtype=DTYPES[code], order="C")  # keeps 0-d (ascontiguousarray would not)


def fits_an_array(dims: tuple[int, ...], itemsize: int) -> bool:
    """numpy's bound on any array, zero dims counted as 1: a 0-size raw tensor of dims (0, 2**32-1, 2**32-1,
    2**32-1) passed every check of both decoders, then making its array raised a bare ValueError."""
    return math.prod(max(int(d), 1) for d in dims) * itemsize <= 2**63 - 1


def _checked(frame: Frame) -> tuple[list[tuple[int, np.ndarray]], bytes]:
    """Validate a frame's header fields; return its wire arrays and meta bytes."""
    try:
        Kind(frame.kind)
    except ValueError:
        raise FrameError(f"frame kind must be one of {[k.value for k in Kind]}, got {frame.kind!r}", "malformed") from None
    if not 0 <= int(frame.request_id) < 2**64:
        raise FrameError(f"request_id must fit in a u64, got {frame.request_id}", "malformed")
    if not 0 <= int(frame.seq) < 2**32:
        raise FrameError(f"seq must fit in a u32, got {frame.seq}", "malformed")
    if not isinstance(frame.bundle_hash, (bytes, bytearray)) or len(frame.bundle_hash) != 16:
        raise FrameError("bundle_hash must be 16 raw bytes (the first 16 bytes of the bundle's sha256)", "malformed")
    if len(frame.tensors) > MAX_TENSORS:
        raise FrameError(f"a frame carries at most {MAX_TENSORS} tensors, got {len(frame.tensors)}", "malformed")
    return [_wire_array(x, i) for i, x in enumerate(frame.tensors)], encode_meta(frame.meta)


def encode(frame: Frame) -> bytes:
    """Encode a frame in pure Python (the reference encoder; the server's path).

    Args:
        frame: the frame to encode; tensors are converted to C-order little-endian.

    Returns:
        The frame bytes, checksummed.

    Raises:
        FrameError: a field is out of range, a tensor's dtype cannot cross the wire,
            or the meta is not JSON-serializable.
    """
    arrays, meta = _checked(frame)
    parts = [
        _HEADER.pack(MAGIC, VERSION, int(frame.kind), 0, int(frame.request_id), int(frame.seq),
                     bytes(frame.bundle_hash), len(meta), len(arrays), b"\0\0\0"),
        meta,
    ]
    for code, a in arrays:
        if isinstance(a, CodedTensor):
            parts.append(_RECORD.pack(a.codec, code, len(a.shape), 0, len(a.params)))
            parts += [struct.pack(f"<{len(a.shape)}I", *a.shape), a.params, _U64.pack(len(a.payload)), a.payload]
            continue
        parts.append(_RECORD.pack(CODEC_RAW, code, a.ndim, 0, 0))
        parts.append(struct.pack(f"<{a.ndim}I", *a.shape))
        parts.append(_U64.pack(a.nbytes))
        parts.append(a.tobytes())
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def encode_native(frame: Frame) -> bytes:
    """Encode a frame with the C++ encoder (the device's path); byte-identical to :func:`encode`.

    Raises:
        FrameError: as :func:`encode` (checked here first, so both encoders refuse alike).
        ImportError: the compiled core ``edgerun._core`` is not built.
    """
    from edgerun import _core

    arrays, meta = _checked(frame)
    try:
        return _core.encode_frame(int(frame.kind), int(frame.request_id), int(frame.seq),
                                  bytes(frame.bundle_hash), meta, [_native_tensor(a) for _, a in arrays])
    except _core.CoreError as exc:
        raise core_error(exc) from None


def _native_tensor(a: np.ndarray | CodedTensor):
    if isinstance(a, CodedTensor):
        return (a.codec, a.dtype, tuple(a.shape), a.params, a.payload)
    return a


def core_error(exc: Exception) -> Exception:
    """Map an ``edgerun._core.CoreError`` to the hierarchy, frame errors keeping their short code."""
    from edgerun.errors import from_core_error

    code, message = (tuple(exc.args) + (0, ""))[:2]
    if int(code) in CORE_CODES:
        return FrameError(str(message), CORE_CODES[int(code)])
    return from_core_error(exc)


def error_frame(request_id: int, bundle_hash: bytes, code: str, message: str) -> bytes:
    """An ERROR frame answering ``request_id``: meta ``{"code": code, "message": message}``.

    Raises:
        FrameError: bundle_hash is not 16 bytes or request_id does not fit in a u64.
    """
    return encode(Frame(Kind.ERROR, request_id, 0, bundle_hash, meta={"code": str(code), "message": str(message)}))


# ---------------------------------------------------------------------------
# Decode
# ---------------------------------------------------------------------------


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _depth(v: object) -> int:
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    return 0


def decode_meta(raw: bytes) -> dict:
    """Parse meta bytes (strict UTF-8 JSON object, no NaN/Infinity, nesting <= 32)."""
    if not raw:
        return {}
    try:
        meta = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        ok = isinstance(meta, dict) and _depth(meta) <= MAX_META_DEPTH
    except (UnicodeDecodeError, ValueError, RecursionError):
        ok = False
    if not ok:
        raise FrameError("frame meta is not a UTF-8 JSON object: the sender built a bad frame", "malformed")
    return meta


def _truncated(what: str) -> FrameError:
    return FrameError(f"{what} runs past the end of the frame: the frame was cut or its lengths are wrong; resend it",
                      "truncated")


def _check_header(buf: bytes, max_bytes: int) -> tuple:
    n = len(buf)
    if n < MIN_FRAME_SIZE:
        raise FrameError(f"frame is {n} bytes, shorter than the {MIN_FRAME_SIZE}-byte minimum of a wire frame: "
                         "it was cut; resend it", "truncated")
    if n > max_bytes:
        raise FrameError(f"frame is {n} bytes, over this side's limit of {max_bytes} bytes: send smaller tensors "
                         "or raise max_frame_bytes on the receiver", "too_large")
    fields = _HEADER.unpack_from(buf, 0)
    magic, version, kind, flags, _rid, _seq, _hash, _mlen, _nt, reserved = fields
    if magic != MAGIC:
        raise FrameError(f"not an edgerun wire frame (magic {magic!r}, expected {MAGIC!r}): "
                         "check what publishes on this topic", "bad_magic")
    if version != VERSION:
        raise FrameError(f"wire frame version {version} is not supported: this reader accepts version {VERSION} "
                         "only; upgrade edgerun so device and server speak the same version", "bad_version")
    if zlib.crc32(buf[: n - 4]) != _CRC.unpack_from(buf, n - 4)[0]:
        raise FrameError("frame checksum mismatch: the frame was corrupted in transit; resend it", "bad_checksum")
    if kind not in Kind._value2member_map_:
        raise FrameError(f"unknown frame kind {kind} (known: 1 request, 2 reply, 3 error); "
                         "upgrade edgerun on this side", "malformed")
    if flags != 0 or reserved != b"\0\0\0":
        raise FrameError("reserved header bytes are not zero: the sender is not a v1 writer", "malformed")
    return fields


def _decode_record(buf: bytes, pos: int, end: int, i: int) -> tuple[np.ndarray | CodedTensor, int]:
    what = f"tensor record {i}"
    if end - pos < _RECORD.size:
        raise _truncated(what)
    codec, dtype, ndim, reserved, params_len = _RECORD.unpack_from(buf, pos)
    pos += _RECORD.size
    if ndim > MAX_DIMS:
        raise FrameError(f"{what} has {ndim} dims (at most {MAX_DIMS})", "malformed")
    if reserved != 0:
        raise FrameError(f"{what}: reserved byte is not zero", "malformed")
    if end - pos < 4 * ndim:
        raise _truncated(what)
    dims = struct.unpack_from(f"<{ndim}I", buf, pos)
    pos += 4 * ndim
    if end - pos < params_len:
        raise _truncated(what)
    params = buf[pos : pos + params_len]
    pos += params_len
    if end - pos < 8:
        raise _truncated(what)
    (payload_len,) = _U64.unpack_from(buf, pos)
    pos += 8
    if payload_len > end - pos:  # checked before the length is used for anything
        raise _truncated(what)
    at = f"tensor {i}: "
    if codec not in KNOWN_CODECS:
        raise FrameError(f"{at}codec {codec} is not supported by this edgerun (it knows 0 = raw, 1 = tsq); "
                         "upgrade edgerun on this side", "unsupported_codec")
    if dtype not in DTYPES:
        raise FrameError(f"{at}unknown dtype code {dtype} (known: {sorted(DTYPES)})", "malformed")
    if not fits_an_array(dims, DTYPES[dtype].itemsize):
        raise FrameError(f"{at}its dims {dims} (zeros counted as 1) make over 2**63 - 1 bytes, more than any array "
                         "holds; the sender built a bad frame", "malformed")
    if codec != CODEC_RAW:  # the codec validates its own params and payload when it decodes them
        if params_len == 0:
            raise FrameError(f"{at}codec {codec} needs its parameters but params_len is 0", "malformed")
        return CodedTensor(codec, dtype, tuple(dims), bytes(params), bytes(buf[pos : pos + payload_len])), pos + payload_len
    if params_len != 0:
        raise FrameError(f"{at}raw codec takes no parameters but params_len is {params_len}", "malformed")
    dt = DTYPES[dtype]
    if int(np.prod(dims, dtype=object)) * dt.itemsize != payload_len:
        raise FrameError(f"{at}payload is {payload_len} bytes but shape {dims} of {dt} needs "
                         "prod(dims) * itemsize bytes; the sender built a bad frame", "malformed")
    arr = np.frombuffer(buf, dtype=dt, count=payload_len // dt.itemsize, offset=pos).reshape(dims).copy()
    return arr, pos + payload_len


def decode(buf: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES, expect_hash: bytes | None = None) -> Frame:
    """Validate every field of a frame, then return it (the server's path).

    Args:
        buf: the frame bytes (bytes, bytearray or memoryview).
        max_bytes: frames longer than this are refused before anything else is read.
        expect_hash: the 16-byte hash of the bundle this side serves; None accepts any.

    Returns:
        The frame; tensors are writable copies in native numpy dtypes.

    Raises:
        FrameError: with ``code`` one of truncated, too_large, bad_magic, bad_version,
            bad_checksum, malformed, unsupported_codec, wrong_bundle.
    """
    buf = bytes(buf)
    _m, _v, kind, _f, request_id, seq, bundle_hash, meta_len, n_tensors, _r = _check_header(buf, max_bytes)
    end = len(buf) - 4
    pos = HEADER_SIZE
    if meta_len > end - pos:
        raise _truncated(f"meta length {meta_len}")
    meta = decode_meta(buf[pos : pos + meta_len])
    pos += meta_len
    if n_tensors > MAX_TENSORS:
        raise FrameError(f"frame says it carries {n_tensors} tensors; a frame carries at most {MAX_TENSORS}",
                         "malformed")
    tensors = []
    for i in range(n_tensors):
        arr, pos = _decode_record(buf, pos, end, i)
        tensors.append(arr)
    if pos != end:
        raise FrameError(f"{end - pos} trailing bytes after the last tensor: the sender built a bad frame", "malformed")
    if expect_hash is not None and bundle_hash != bytes(expect_hash):
        raise FrameError(f"frame is for bundle {bundle_hash.hex()} but this side serves bundle "
                         f"{bytes(expect_hash).hex()}: export and deploy the same bundle on device and server",
                         "wrong_bundle")
    return Frame(Kind(kind), request_id, seq, bundle_hash, tensors, meta)


def decode_native(buf: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES, expect_hash: bytes | None = None) -> Frame:
    """Decode with the C++ decoder (the device's path); same checks, verdicts and codes as :func:`decode`.

    Raises:
        FrameError: as :func:`decode`.
        ImportError: the compiled core ``edgerun._core`` is not built.
    """
    from edgerun import _core

    try:
        d = _core.decode_frame(buf, int(max_bytes), None if expect_hash is None else bytes(expect_hash))
    except _core.CoreError as exc:
        raise core_error(exc) from None
    tensors = [t if isinstance(t, np.ndarray) else CodedTensor(*t) for t in d["tensors"]]
    meta = decode_meta(d["meta"]) if d["meta"] else {}
    return Frame(Kind(d["kind"]), d["request_id"], d["seq"], d["bundle_hash"], tensors, meta)


@functools.cache
def has_core() -> bool:
    """True when the compiled core ``edgerun._core`` is importable (checked once)."""
    try:
        from edgerun import _core  # noqa: F401
    except ImportError:
        return False
    return True


def best_decoder():
    """:func:`decode_native` (the C++ decoder: 2.4x faster on a 62.8 KB frame, 1.7x on a 157-byte
    reply, measured on Zen 5) unless the compiled core is missing, then :func:`decode`."""
    return decode_native if has_core() else decode


def best_encoder():
    """:func:`encode_native` (the C++ encoder, byte-identical: 62.8 KB in 7.2 us against 13.6-16.6
    in Python on Zen 5) unless the compiled core is missing, then :func:`encode`."""
    return encode_native if has_core() else encode
