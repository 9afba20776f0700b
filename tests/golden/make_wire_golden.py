"""Regenerate the wire-frame golden vectors in tests/golden/wire/.

Each golden frame is written as ``<name>.bin`` (the exact bytes) and ``<name>.json``
(what those bytes mean: header fields, meta, and per tensor its dtype, shape, the
sha256 of its C-order little-endian values and its first values). The tests check
both encoders against the .bin and both decoders against the .json, so a change of
the format, of an encoder or of a golden file fails them.

Golden files are a contract: regenerate only when a new frame is added, never to
make a failing test pass. Usage:

    python tests/golden/make_wire_golden.py           # (re)write the files
    python tests/golden/make_wire_golden.py --check   # exit 1 if any file differs
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from edgerun import wire

OUT_DIR = Path(__file__).resolve().parent / "wire"
BUNDLE_HASH = hashlib.sha256(b"edgerun golden bundle").digest()[:16]
REQUEST_ID = 0x0102030405060708


def _ramp(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Deterministic values: i / n in float32 (exact IEEE division), cast to dtype."""
    n = int(np.prod(shape))
    return (np.arange(n, dtype=np.float32) / np.float32(max(n, 1))).astype(dtype).reshape(shape)


def golden_frames() -> dict[str, tuple[str, wire.Frame]]:
    """name -> (description, frame). Add new entries; never change existing ones."""
    int8 = (np.arange(256, dtype=np.int16) - 128).astype(np.int8).reshape(1, 16, 4, 4)
    f16 = np.array([[0.5, -2.0, 65504.0, 6.1035e-05, -0.0, 1.0 / 3.0, 1024.0, -7.25]], dtype=np.float16)
    return {
        "request_f32": (
            "REQUEST carrying a float32 1x80x14x14 activation (ramp i/n), no meta",
            wire.Frame(wire.Kind.REQUEST, REQUEST_ID, 0, BUNDLE_HASH, [_ramp((1, 80, 14, 14), "float32")]),
        ),
        "reply_meta": (
            "REPLY with meta {\"server_us\": 1234} and float32 1x10 logits (ramp i/n)",
            wire.Frame(wire.Kind.REPLY, REQUEST_ID, 0, BUNDLE_HASH, [_ramp((1, 10), "float32")],
                       {"server_us": 1234}),
        ),
        "error": (
            "ERROR frame answering a request for another bundle, no tensors",
            wire.Frame(wire.Kind.ERROR, REQUEST_ID, 0, BUNDLE_HASH, [],
                       {"code": "wrong_bundle", "message": "frame is for another bundle: deploy the same bundle"}),
        ),
        "multi_tensor": (
            "REQUEST with seq 7, meta with a non-ASCII string, and float32/int32/int64/uint8/0-d tensors",
            wire.Frame(wire.Kind.REQUEST, 2**64 - 1, 7, BUNDLE_HASH,
                       [_ramp((2, 3), "float32"), np.array([-1, 0, 1, 2**31 - 1], dtype=np.int32),
                        np.array([[-(2**63), 2**63 - 1], [0, 42]], dtype=np.int64),
                        np.arange(5, dtype=np.uint8) * 50, np.array(3.5, dtype=np.float32)],
                       {"device": "cam-\u00e9", "t_us": 55, "tags": [1, 2.5, None, True]}),
        ),
        "int8_f16": (
            "REPLY with an int8 1x16x4x4 tensor (-128..127) and a float16 1x8 tensor (incl. -0.0, max)",
            wire.Frame(wire.Kind.REPLY, 5, 4294967295, BUNDLE_HASH, [int8, f16]),
        ),
    }


def describe(name: str, description: str, frame: wire.Frame, data: bytes) -> dict:
    """The .json side of a golden frame: what its bytes must decode to."""
    tensors = []
    for t in frame.tensors:
        le = np.asarray(t, dtype=t.dtype.newbyteorder("<"), order="C")
        tensors.append({
            "dtype": str(t.dtype),
            "shape": list(t.shape),
            "sha256": hashlib.sha256(le.tobytes()).hexdigest(),
            "first": [float(v) if t.dtype.kind == "f" else int(v) for v in le.reshape(-1)[:4]],
        })
    return {
        "file": f"{name}.bin",
        "description": description,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "version": wire.VERSION,
        "kind": int(frame.kind),
        "request_id": frame.request_id,
        "seq": frame.seq,
        "bundle_hash": frame.bundle_hash.hex(),
        "meta": frame.meta,
        "tensors": tensors,
    }


def render() -> dict[str, bytes]:
    """file name -> bytes for every golden file."""
    files = {}
    for name, (description, frame) in golden_frames().items():
        data = wire.encode(frame)
        files[f"{name}.bin"] = data
        text = json.dumps(describe(name, description, frame, data), indent=2, ensure_ascii=False) + "\n"
        files[f"{name}.json"] = text.encode("utf-8")
    return files


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [n for n, b in files.items() if not (OUT_DIR / n).exists() or (OUT_DIR / n).read_bytes() != b]
        for n in stale:
            print(f"differs: {OUT_DIR / n}")
        return 1 if stale else 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for n, b in files.items():
        (OUT_DIR / n).write_bytes(b)
        print(f"wrote {OUT_DIR / n} ({len(b)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
