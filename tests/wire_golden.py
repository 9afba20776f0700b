"""Shared by the Python (tests/unit/test_wire.py) and C++ (tests/runtime/test_wire_core.py) wire tests:
the golden frames, their generator, and a helper to re-checksum an edited frame.

Importable from the test modules because pytest puts this folder (it holds the root
conftest.py and no __init__.py) on sys.path.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import zlib
from pathlib import Path

from hypothesis import HealthCheck, settings

GOLDEN_DIR = Path(__file__).resolve().parent / "golden" / "wire"
GOLDEN_NAMES = sorted(p.stem for p in GOLDEN_DIR.glob("*.bin"))
SLOW_OK = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_wire_golden", GOLDEN_DIR.parent / "make_wire_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _load_generator()


def golden(name: str) -> tuple[bytes, dict]:
    return (GOLDEN_DIR / f"{name}.bin").read_bytes(), json.loads((GOLDEN_DIR / f"{name}.json").read_text("utf-8"))


def refix_crc(buf: bytes | bytearray) -> bytes:
    """Recompute the trailing crc so a deliberately edited frame reaches the check after it."""
    body = bytes(buf[:-4])
    return body + struct.pack("<I", zlib.crc32(body))
