"""Regenerate the tsq codec golden vectors in tests/golden/codec/.

Each golden case is ``<name>.npy`` (the float32 input), ``<name>.params.bin``
(``TSQParams.to_bytes()``) and ``<name>.bin`` (the payload the Python reference
encoder writes). tests/runtime/test_codec_core.py checks that the C++ encoder
writes the same bytes and that both decoders read them back.

Golden files are a contract: add cases, never regenerate to make a failing test
pass. Usage:

    python tests/golden/make_codec_golden.py           # (re)write the files
    python tests/golden/make_codec_golden.py --check   # exit 1 if any file differs
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edgerun import codec

OUT_DIR = Path(__file__).resolve().parent / "codec"
V1_BITS = (2, 3, 4, 6, 8)  # DEFAULT_BITS when the first golden files were written


def golden_cases() -> dict[str, tuple[np.ndarray, codec.TSQParams]]:
    """name -> (input, params). Inputs are built from exact float32 ramps and seeded noise."""
    rng = np.random.default_rng(1234)
    relu = np.maximum(rng.standard_normal((1, 32, 4, 4)), 0).astype(np.float32)
    relu[0, 7] = 0.0                                          # a dead channel (0-bit row)
    relu[0, 2, 1, 1] = 40.0                                   # an outlier (split off)
    wide = (rng.standard_normal((2, 16, 8, 8)) * np.linspace(0.01, 5, 16)[None, :, None, None]).astype(np.float32)
    big = rng.standard_normal((1, 24, 3, 100)).astype(np.float32)  # odd widths, rows across a 3-D spatial part
    huge = (rng.standard_normal((1, 40, 40, 41)) * 2).astype(np.float32)  # 65600 values: index width 4
    # channel k spans ~0.9 * 0.02 * (2**b - 1), b = k % 9: the fewest bits whose half-step is
    # <= max_err 0.01 is b (b = 0: a flat row, span <= 0.01)
    b = np.arange(18) % 9
    scale = np.where(b == 0, 0.005, 0.9 * 0.02 * (2.0 ** b - 1))
    ladder = (rng.uniform(0, 1, (1, 18, 5, 7)) * scale[None, :, None, None]).astype(np.float32)
    odd = np.array([[1e5, -7e4, 0.5], [3.0, 3.0, 3.0], [-1e-7, 2e-7, 0.0]], dtype=np.float32)  # raw / const / tiny
    return {
        # bits=V1_BITS pinned: these files were written when it was the default (they must not change).
        "relu_channel": (relu, codec.TSQParams(tau=3.0, max_err=0.05, bits=V1_BITS, layout="channel", budget=1e-3)),
        "relu_position": (relu, codec.TSQParams(tau=3.0, max_err=0.05, bits=V1_BITS, layout="position", budget=1e-3)),
        "wide_rows": (wide, codec.TSQParams(tau=12.0, max_err=0.02, bits=(2, 4, 8), layout="channel")),
        "odd_bits": (big, codec.TSQParams(tau=2.5, max_err=0.1, bits=(1, 3, 5, 7), layout="position")),
        "index_u32": (huge, codec.TSQParams(tau=6.0, max_err=0.2, bits=V1_BITS, layout="channel")),
        "raw_const_tiny": (odd, codec.TSQParams(tau=float("inf"), max_err=1e-3, bits=(8,), layout="channel")),
        # Added with the all-widths default: rows scaled so every width 1..8 is picked at least once.
        "all_widths": (ladder, codec.TSQParams(tau=50.0, max_err=0.01, bits=tuple(range(1, 9)), layout="channel")),
    }


def write(check: bool = False) -> int:
    OUT_DIR.mkdir(exist_ok=True)
    bad = 0
    for name, (x, p) in golden_cases().items():
        files = {f"{name}.bin": codec.encode(x, p), f"{name}.params.bin": p.to_bytes()}
        for fname, data in files.items():
            path = OUT_DIR / fname
            if check:
                bad += (not path.exists()) or path.read_bytes() != data
            else:
                path.write_bytes(data)
        if check:
            path = OUT_DIR / f"{name}.npy"
            bad += (not path.exists()) or not np.array_equal(np.load(path), x)
        else:
            np.save(OUT_DIR / f"{name}.npy", x)
    return bad


if __name__ == "__main__":
    n_bad = write(check="--check" in sys.argv)
    if n_bad:
        print(f"{n_bad} golden file(s) differ", file=sys.stderr)
    sys.exit(1 if n_bad else 0)
