"""Wire frame v1 across the Python / C++ boundary: the C++ encoder and decoder
(edgerun._core) against the golden vectors and against the Python reference."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerun import wire
from edgerun.errors import ConfigError, FrameError, UserError
from wire_golden import GEN, GOLDEN_NAMES, SLOW_OK, golden, refix_crc

from edgerun import _core  # noqa: E402  (runtime tests need the compiled core: fail, never skip)
pytestmark = pytest.mark.runtime

MAX = wire.DEFAULT_MAX_FRAME_BYTES


def native_decode(buf: bytes, max_bytes: int = MAX, expect_hash: bytes | None = None) -> wire.Frame:
    """The C++ decoder through wire.decode_native (the device's reply path)."""
    return wire.decode_native(buf, max_bytes=max_bytes, expect_hash=expect_hash)


def outcome(decoder, buf: bytes, **kw):
    """('ok', frame) or ('error', code): what a decoder makes of buf."""
    try:
        return "ok", decoder(buf, **kw)
    except FrameError as exc:
        return "error", exc.code


def assert_same_frame(a: wire.Frame, b: wire.Frame) -> None:
    assert (a.kind, a.request_id, a.seq, bytes(a.bundle_hash), a.meta) == (b.kind, b.request_id, b.seq,
                                                                           bytes(b.bundle_hash), b.meta)
    assert [(x.shape, x.dtype, x.tobytes()) for x in a.tensors] == [(y.shape, y.dtype, y.tobytes()) for y in b.tensors]


# ---------------------------------------------------------------------------
# crc32 and golden vectors
# ---------------------------------------------------------------------------


@given(st.binary(max_size=2000), st.integers(0, 2**32 - 1))
def test_crc32_is_zlib_compatible(data, start):
    assert _core.crc32(data) == zlib.crc32(data)
    assert _core.crc32(data, start) == zlib.crc32(data, start)


CRC_CHECK = """
import random, zlib
from edgerun import _core
rng = random.Random(0)
for n in [*range(0, 200), 255, 256, 257, 1023, 4096, 4111, 62800, 301136]:
    for start in (0, 1, 0xFFFFFFFF, rng.getrandbits(32)):
        data = rng.randbytes(n)
        assert _core.crc32(data, start) == zlib.crc32(data, start), (n, start)
print("crc ok")
"""


@pytest.mark.parametrize("portable", ["", "1"])
def test_crc32_every_length_on_every_path(portable):
    """The carry-less-multiply path (x86-64 with PCLMULQDQ: 64-byte folds, 16-byte folds, then
    a table tail) and the table-only path (EDGERUN_FORCE_PORTABLE, set before the core loads)
    both equal zlib at every length around the fold boundaries and for frame-sized buffers."""
    env = {**os.environ, "EDGERUN_FORCE_PORTABLE": portable}
    out = subprocess.run([sys.executable, "-c", CRC_CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "crc ok" in out.stdout, out.stderr


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_native_encode_matches_golden(name):
    data, _ = golden(name)
    _, frame = GEN.golden_frames()[name]
    assert wire.encode_native(frame) == data


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_native_decode_reads_golden(name):
    data, desc = golden(name)
    frame = native_decode(data)
    assert_same_frame(frame, wire.decode(data))
    for t, d in zip(frame.tensors, desc["tensors"]):
        assert hashlib.sha256(t.tobytes()).hexdigest() == d["sha256"]
    assert frame.meta == desc["meta"]


# ---------------------------------------------------------------------------
# C++ and Python agree on every frame, good or bad
# ---------------------------------------------------------------------------

meta_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=8,
)


@st.composite
def frames(draw):
    tensors = []
    for _ in range(draw(st.integers(0, 4))):
        dt = draw(st.sampled_from(list(wire.DTYPES.values())))
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
        nbytes = int(np.prod(shape)) * dt.itemsize
        tensors.append(np.frombuffer(draw(st.binary(min_size=nbytes, max_size=nbytes)), dtype=dt).reshape(shape))
    return wire.Frame(draw(st.sampled_from(list(wire.Kind))), draw(st.integers(0, 2**64 - 1)),
                      draw(st.integers(0, 2**32 - 1)), draw(st.binary(min_size=16, max_size=16)), tensors,
                      draw(st.dictionaries(st.text(max_size=6), meta_values, max_size=3)))


@SLOW_OK
@given(frames())
def test_native_encode_equals_python_encode_and_round_trips(frame):
    data = wire.encode_native(frame)
    assert data == wire.encode(frame)
    assert_same_frame(native_decode(data), frame)


@settings(SLOW_OK, max_examples=300)
@given(st.sampled_from([n for n in GOLDEN_NAMES if n != "request_f32"]),  # small frames: more edits per second
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       st.booleans())
def test_decoders_agree_on_edited_frames(name, edits, fix_crc):
    """Random byte edits, with the crc fixed up so the later checks are reached too."""
    buf = bytearray(golden(name)[0])
    for pos, value in edits:
        buf[pos % len(buf)] = value
    buf = refix_crc(buf) if fix_crc else bytes(buf)
    py, cc = outcome(wire.decode, buf), outcome(native_decode, buf)
    assert py[0] == cc[0]
    if py[0] == "ok":
        assert_same_frame(py[1], cc[1])
    else:
        assert py[1] == cc[1]


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_native_rejects_every_single_byte_corruption_and_truncation(name):
    data, _ = golden(name)
    header_codes = {0: "bad_magic", 1: "bad_magic", 2: "bad_magic", 3: "bad_magic", 4: "bad_version", 5: "bad_version"}
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= (i % 255) + 1
        assert outcome(native_decode, bytes(bad)) == ("error", header_codes.get(i, "bad_checksum")), f"byte {i}"
    for n in range(len(data)):
        assert outcome(native_decode, data[:n])[0] == "error", f"length {n}"


def test_native_codes_for_size_magic_version_hash():
    data, desc = golden("reply_meta")
    assert outcome(native_decode, data, max_bytes=len(data) - 1) == ("error", "too_large")
    assert outcome(native_decode, b"ERWG" + data[4:]) == ("error", "bad_magic")
    assert outcome(native_decode, refix_crc(data[:4] + b"\x02\x00" + data[6:])) == ("error", "bad_version")
    assert outcome(native_decode, data[:10]) == ("error", "truncated")
    assert outcome(native_decode, data, expect_hash=bytes(16)) == ("error", "wrong_bundle")
    assert outcome(native_decode, data, expect_hash=bytes.fromhex(desc["bundle_hash"]))[0] == "ok"
    with pytest.raises(FrameError, match="accepts version 1 only; upgrade edgerun"):
        native_decode(refix_crc(data[:4] + b"\x07\x00" + data[6:]))


@pytest.mark.parametrize("offset,fmt,value", [(36, "<I", 2**32 - 1), (62 + 4, "<I", 2**32 - 1),
                                               (62 + 16, "<Q", 2**60), (62 + 16, "<Q", 2**64 - 1),
                                               (62 + 8, "<I", 2**32 - 1), (40, "<B", 255), (62, "<B", 7)])
def test_native_huge_length_fields_do_not_allocate_and_agree(offset, fmt, value):
    data = bytearray(golden("reply_meta")[0])
    struct.pack_into(fmt, data, offset, value)
    buf = refix_crc(data)
    assert outcome(native_decode, buf) == outcome(wire.decode, buf)
    assert outcome(native_decode, buf)[0] == "error"


def frame_with_one_record(codec_id: int, dims: tuple[int, ...], params: bytes = b"", payload: bytes = b"") -> bytes:
    """A checksummed REQUEST frame of one tensor record, written byte by byte (the encoders refuse lies)."""
    head = struct.pack("<4sHBBQI16sIB3s", b"ERWF", 1, 1, 0, 7, 0, bytes(16), 0, 1, b"\0\0\0")
    rec = struct.pack(f"<BBBBI{len(dims)}I", codec_id, 1, len(dims), 0, len(params), *dims)
    body = head + rec + params + struct.pack("<Q", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("codec_id, params", [(0, b""), (1, b"tsq params")])
@pytest.mark.parametrize("dims", [(0, 2**32 - 1, 2**32 - 1, 2**32 - 1), (2**32 - 1, 0, *(2**32 - 1,) * 6)])
def test_a_tensor_no_array_can_hold_is_malformed_for_both_decoders_and_encoders(dims, codec_id, params):
    """A 0-size tensor of dims (0, 2**32-1, 2**32-1, 2**32-1) passed every check of both decoders; making its
    array (raw: in the decoder, coded: in the server's codec) raised a bare ValueError, an 'internal' error."""
    buf = frame_with_one_record(codec_id, dims, params)
    assert outcome(wire.decode, buf) == outcome(native_decode, buf) == ("error", "malformed")
    with pytest.raises(FrameError, match="more than any array holds"):
        native_decode(buf)
    if codec_id:
        t = wire.CodedTensor(codec_id, 1, dims, params, b"")
        f = wire.Frame(wire.Kind.REQUEST, 7, 0, bytes(16), [t])
        for enc in (wire.encode, wire.encode_native):
            with pytest.raises(FrameError) as e:
                enc(f)
            assert e.value.code == "malformed"


def test_fuzz_native_decoder_with_random_bytes():
    """Random bytes, random bytes behind a valid header prefix and crc: never a crash, same verdict."""
    rng = random.Random(1234)
    prefix = golden("multi_tensor")[0][:44]
    for i in range(3000):
        n = rng.randrange(0, 400)
        buf = bytes(rng.getrandbits(8) for _ in range(n))
        if i % 2:
            buf = refix_crc(prefix[: rng.randrange(0, 45)] + buf + b"\0\0\0\0")
        py, cc = outcome(wire.decode, buf), outcome(native_decode, buf)
        assert py[0] == cc[0] and (py[0] == "ok" or py[1] == cc[1]), buf.hex()


# ---------------------------------------------------------------------------
# binding input checks
# ---------------------------------------------------------------------------


def test_encode_frame_binding_rejects_bad_arrays():
    h = bytes(16)
    with pytest.raises(_core.CoreError, match="float64"):
        _core.encode_frame(1, 1, 0, h, b"", [np.zeros(3, np.float64)])
    with pytest.raises(_core.CoreError, match="C-contiguous"):
        _core.encode_frame(1, 1, 0, h, b"", [np.zeros((4, 4), np.float32)[:, ::2]])
    with pytest.raises(_core.CoreError, match="little-endian"):
        _core.encode_frame(1, 1, 0, h, b"", [np.zeros(3, ">f4")])
    with pytest.raises(_core.CoreError, match="JSON object"):
        _core.encode_frame(2, 1, 0, h, b"[1]", [])
    with pytest.raises(_core.CoreError, match="16 bytes"):
        _core.encode_frame(2, 1, 0, b"short", b"", [])
    with pytest.raises(_core.CoreError, match="kind"):
        _core.encode_frame(4, 1, 0, h, b"", [])


def test_encode_native_maps_errors_like_encode():
    frame = wire.Frame(wire.Kind.REQUEST, 1, 0, bytes(16), [np.zeros(2, np.float64)])
    with pytest.raises(FrameError, match="float64"):
        wire.encode_native(frame)


def test_core_error_mapping():
    try:
        _core.decode_frame(b"", MAX)
    except _core.CoreError as exc:
        err = wire.core_error(exc)
    assert isinstance(err, FrameError) and err.code == "truncated" and isinstance(err, UserError)
    try:
        _core.encode_frame(2, 1, 0, bytes(16), b"[1]", [])
    except _core.CoreError as exc:
        assert isinstance(wire.core_error(exc), ConfigError)
    assert _core.wire_code_name(0x0303) == "bad_checksum" and _core.WIRE_VERSION == wire.VERSION


def _frame_with_meta(meta: bytes) -> bytes:
    empty = wire.encode(wire.Frame(wire.Kind.REPLY, 1, 0, bytes(16)))
    return refix_crc(empty[:36] + struct.pack("<I", len(meta)) + empty[40:44] + meta + empty[44:])


json_ish = st.text(alphabet='{}[]":,.-+eE0123456789 \t\\/ubfnrtalsx\u00e9\x01', max_size=24)


@SLOW_OK
@given(st.one_of(json_ish.map(str.encode), st.binary(max_size=16),
                 meta_values.map(lambda v: json.dumps({"k": v}, indent=1).encode())))
def test_meta_json_validators_agree(meta):
    """C++'s JSON validator accepts exactly what Python's json.loads (strict, no NaN) accepts."""
    buf = _frame_with_meta(meta)
    py, cc = outcome(wire.decode, buf), outcome(native_decode, buf)
    assert py[0] == cc[0], meta
    if py[0] == "ok":
        assert py[1].meta == cc[1].meta


def test_coded_tensor_frames_match_between_encoders_and_decode_to_the_codec_bytes():
    """A tsq-coded tensor crosses as its codec's bytes: both encoders agree, both decoders hand them back."""
    from edgerun import codec, crossing

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 8, 4, 4)).astype(np.float32)
    params = codec.calibrate(x, budget=1e-3)
    packed = crossing.Packer({"id": "tsq", "params": {"t": params.to_bytes().hex()}}).pack({"t": x})
    frame = wire.Frame(wire.Kind.REQUEST, 7, 0, b"\x01" * 16, packed, {})
    py_bytes, c_bytes = wire.encode(frame), wire.encode_native(frame)
    assert py_bytes == c_bytes
    got = wire.decode(py_bytes)
    assert got.tensors == packed
    d = _core.decode_frame(c_bytes, MAX)
    assert d["tensors"][0][4] == packed[0].payload
    y = crossing.unpack(got.tensors)[0]
    assert np.abs(y - x).max() <= params.max_err * (1 + 1e-5) + 1e-7
