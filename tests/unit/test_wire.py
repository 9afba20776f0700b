"""Wire frame v1, pure-Python side: golden vectors, round trips, rejection of bad frames."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun import wire
from edgerun.errors import FrameError, UserError
from wire_golden import GEN, GOLDEN_NAMES, SLOW_OK, golden, refix_crc

def assert_matches_description(frame: wire.Frame, desc: dict) -> None:
    assert int(frame.kind) == desc["kind"]
    assert frame.request_id == desc["request_id"]
    assert frame.seq == desc["seq"]
    assert frame.bundle_hash.hex() == desc["bundle_hash"]
    assert frame.meta == desc["meta"]
    assert len(frame.tensors) == len(desc["tensors"])
    for t, d in zip(frame.tensors, desc["tensors"]):
        assert str(t.dtype) == d["dtype"] and list(t.shape) == d["shape"]
        le = np.asarray(t, dtype=t.dtype.newbyteorder("<"), order="C")
        assert hashlib.sha256(le.tobytes()).hexdigest() == d["sha256"]
        first = le.reshape(-1)[:4]
        assert [float(v) if t.dtype.kind == "f" else int(v) for v in first] == d["first"]


# ---------------------------------------------------------------------------
# golden vectors
# ---------------------------------------------------------------------------


def test_golden_set_is_complete():
    assert set(GOLDEN_NAMES) == set(GEN.golden_frames()), "every golden frame has a .bin and a .json"
    assert GOLDEN_NAMES, "golden files missing: run tests/golden/make_wire_golden.py"


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_file_unchanged(name):
    data, desc = golden(name)
    assert len(data) == desc["size"]
    assert hashlib.sha256(data).hexdigest() == desc["sha256"], f"{name}.bin changed: golden files are a contract"


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_python_encode_matches_golden(name):
    data, _ = golden(name)
    _, frame = GEN.golden_frames()[name]
    assert wire.encode(frame) == data


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_python_decode_reads_golden(name):
    data, desc = golden(name)
    assert_matches_description(wire.decode(data), desc)


def test_error_frame_matches_golden():
    data, desc = golden("error")
    assert wire.error_frame(desc["request_id"], bytes.fromhex(desc["bundle_hash"]),
                            desc["meta"]["code"], desc["meta"]["message"]) == data


def test_layout_offsets_of_golden_reply():
    data, _ = golden("reply_meta")
    assert data[:4] == b"ERWF" and struct.unpack_from("<H", data, 4)[0] == 1 and data[6] == 2
    assert struct.unpack_from("<Q", data, 8)[0] == GEN.REQUEST_ID
    assert data[20:36] == GEN.BUNDLE_HASH
    meta_len = struct.unpack_from("<I", data, 36)[0]
    assert data[44 : 44 + meta_len] == b'{"server_us":1234}' and data[40] == 1
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4])


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------

DTYPE_LIST = list(wire.DTYPES.values())
meta_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=8,
)


@st.composite
def arrays(draw):
    dt = draw(st.sampled_from(DTYPE_LIST))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dt.itemsize, max_size=int(np.prod(shape)) * dt.itemsize))
    return np.frombuffer(raw, dtype=dt).reshape(shape)


@st.composite
def frames(draw):
    return wire.Frame(
        kind=draw(st.sampled_from(list(wire.Kind))),
        request_id=draw(st.integers(0, 2**64 - 1)),
        seq=draw(st.integers(0, 2**32 - 1)),
        bundle_hash=draw(st.binary(min_size=16, max_size=16)),
        tensors=draw(st.lists(arrays(), max_size=4)),
        meta=draw(st.dictionaries(st.text(max_size=6), meta_values, max_size=3)),
    )


def assert_same_frame(a: wire.Frame, b: wire.Frame) -> None:
    assert (a.kind, a.request_id, a.seq, bytes(a.bundle_hash), a.meta) == (b.kind, b.request_id, b.seq,
                                                                           bytes(b.bundle_hash), b.meta)
    assert len(a.tensors) == len(b.tensors)
    for x, y in zip(a.tensors, b.tensors):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert x.tobytes() == y.tobytes()  # bitwise: NaN payloads and -0.0 survive


@SLOW_OK
@given(frames())
def test_round_trip(frame):
    assert_same_frame(wire.decode(wire.encode(frame)), frame)


def test_round_trip_converts_layout_and_byte_order():
    x = np.arange(24, dtype=">f4").reshape(2, 3, 4).transpose(2, 0, 1)
    out = wire.decode(wire.encode(wire.Frame(wire.Kind.REQUEST, 1, 0, bytes(16), [x]))).tensors[0]
    np.testing.assert_array_equal(out, x)
    assert out.flags.writeable and out.flags.c_contiguous


# ---------------------------------------------------------------------------
# rejection
# ---------------------------------------------------------------------------


def code_of(buf: bytes, **kw) -> str:
    with pytest.raises(FrameError) as info:
        wire.decode(buf, **kw)
    assert isinstance(info.value, UserError)
    return info.value.code


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_every_single_byte_corruption_rejected(name):
    data, _ = golden(name)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= (i % 255) + 1
        expected = {0: "bad_magic", 1: "bad_magic", 2: "bad_magic", 3: "bad_magic", 4: "bad_version", 5: "bad_version"}
        assert code_of(bytes(bad)) == expected.get(i, "bad_checksum"), f"byte {i}"


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_every_truncation_rejected(name):
    data, _ = golden(name)
    for n in range(len(data)):
        assert code_of(data[:n]) in {"truncated", "bad_checksum", "bad_magic", "bad_version"}, f"length {n}"
    assert code_of(data + b"\0") == "bad_checksum"


def test_oversize_rejected_before_anything_else():
    data, _ = golden("reply_meta")
    assert code_of(data, max_bytes=len(data) - 1) == "too_large"
    assert code_of(b"XXXX" + data[4:], max_bytes=len(data) - 1) == "too_large"
    wire.decode(data, max_bytes=len(data))


def test_wrong_magic_version_hash():
    data, desc = golden("reply_meta")
    assert code_of(b"ERWG" + data[4:]) == "bad_magic"
    v2 = refix_crc(data[:4] + struct.pack("<H", 2) + data[6:])
    with pytest.raises(FrameError, match="accepts version 1") as info:
        wire.decode(v2)
    assert info.value.code == "bad_version"
    other = bytes(16)
    with pytest.raises(FrameError, match=f"for bundle {desc['bundle_hash']}.*serves bundle {other.hex()}") as info:
        wire.decode(data, expect_hash=other)
    assert info.value.code == "wrong_bundle"
    wire.decode(data, expect_hash=bytes.fromhex(desc["bundle_hash"]))


def _edit(data: bytes, offset: int, fmt: str, value) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return refix_crc(buf)


# reply_meta: header 44, meta 18 bytes, then the record of a 1x10 float32 tensor
_REC = 44 + 18
HOSTILE = [
    ("kind 4", 6, "<B", 4, "malformed"),
    ("flags set", 7, "<B", 1, "malformed"),
    ("reserved header byte", 42, "<B", 1, "malformed"),
    ("meta_len 2**32-1", 36, "<I", 2**32 - 1, "truncated"),
    ("meta_len cuts JSON", 36, "<I", 17, "malformed"),
    ("n_tensors 255", 40, "<B", 255, "malformed"),
    ("n_tensors 2", 40, "<B", 2, "truncated"),
    ("n_tensors 0 leaves trailing bytes", 40, "<B", 0, "malformed"),
    ("codec 7", _REC, "<B", 7, "unsupported_codec"),
    ("dtype 99", _REC + 1, "<B", 99, "malformed"),
    ("dtype float16 vs payload", _REC + 1, "<B", 2, "malformed"),
    ("ndim 9", _REC + 2, "<B", 9, "malformed"),
    ("ndim 3 runs into payload_len", _REC + 2, "<B", 3, "malformed"),
    ("record reserved", _REC + 3, "<B", 1, "malformed"),
    ("params_len 2**32-1", _REC + 4, "<I", 2**32 - 1, "truncated"),
    ("dim 2**32-1", _REC + 8, "<I", 2**32 - 1, "malformed"),
    ("payload_len 2**60", _REC + 16, "<Q", 2**60, "truncated"),
    ("payload_len 2**64-1", _REC + 16, "<Q", 2**64 - 1, "truncated"),
    ("payload_len short", _REC + 16, "<Q", 36, "malformed"),
]


@pytest.mark.parametrize("label,offset,fmt,value,code", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_fields_rejected_with_code(label, offset, fmt, value, code):
    data, _ = golden("reply_meta")
    assert code_of(_edit(data, offset, fmt, value)) == code


@pytest.mark.parametrize("meta", [b"[1,2]", b"{\"a\":NaN}", b"{\"a\":1", b"\xff\xfe{}", b"{\"a\":1} x", b"{'a':1}",
                                  b"{\"a\":\"\x01\"}", b"[" * 40 + b"]" * 40, b"{\"a\":" * 40 + b"1" + b"}" * 40])
def test_bad_meta_rejected(meta):
    frame = wire.encode(wire.Frame(wire.Kind.REPLY, 1, 0, bytes(16)))
    buf = frame[:36] + struct.pack("<I", len(meta)) + frame[40:44] + meta + frame[44:]
    assert code_of(refix_crc(buf)) == "malformed"


def test_unknown_version_message_says_upgrade():
    data, _ = golden("error")
    with pytest.raises(FrameError, match="upgrade edgerun"):
        wire.decode(refix_crc(data[:4] + struct.pack("<H", 0xFFFF) + data[6:]))


@SLOW_OK
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(buf):
    try:
        wire.decode(buf)
    except FrameError:
        pass


# ---------------------------------------------------------------------------
# encoder input checks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("frame,match", [
    (wire.Frame(wire.Kind.REQUEST, 1, 0, bytes(16), [np.zeros(2, np.float64)]), "float64"),
    (wire.Frame(wire.Kind.REQUEST, 1, 0, bytes(16), [np.zeros(2, np.complex64)]), "complex64"),
    (wire.Frame(wire.Kind.REQUEST, 1, 0, bytes(16), [np.zeros(1, np.float32)] * 17), "at most 16"),
    (wire.Frame(wire.Kind.REQUEST, 1, 0, bytes(16), [np.zeros((1,) * 9, np.float32)]), "at most 8"),
    (wire.Frame(wire.Kind.REQUEST, 1, 0, bytes(15)), "16 raw bytes"),
    (wire.Frame(wire.Kind.REQUEST, -1, 0, bytes(16)), "u64"),
    (wire.Frame(wire.Kind.REQUEST, 1, 2**32, bytes(16)), "u32"),
    (wire.Frame(9, 1, 0, bytes(16)), "kind"),
    (wire.Frame(wire.Kind.REQUEST, 1, 0, bytes(16), [[1.0]]), "not a numpy array"),
    (wire.Frame(wire.Kind.REPLY, 1, 0, bytes(16), meta={"x": float("nan")}), "JSON"),
    (wire.Frame(wire.Kind.REPLY, 1, 0, bytes(16), meta={"x": object()}), "JSON"),
    (wire.Frame(wire.Kind.REPLY, 1, 0, bytes(16), meta={"x": "\ud800"}), "JSON"),
    (wire.Frame(wire.Kind.REPLY, 1, 0, bytes(16), meta=[1]), "dict"),
])
def test_encode_rejects_bad_input(frame, match):
    with pytest.raises(FrameError, match=match):
        wire.encode(frame)


def test_empty_meta_is_encoded_as_none():
    data = wire.encode(wire.Frame(wire.Kind.REPLY, 1, 0, bytes(16)))
    assert len(data) == 48 and struct.unpack_from("<I", data, 36)[0] == 0
    assert wire.decode(data).meta == {}


def test_import_wire_does_not_import_torch():
    code = "import sys, edgerun.wire; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
