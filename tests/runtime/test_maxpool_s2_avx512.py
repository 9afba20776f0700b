"""MaxPool with 3-wide stride-2 windows runs an AVX-512 kernel (cpp/src/kernels_pool_avx512.cpp):
the same comparisons in the same order as the separable scalar kernel, so the outputs must be the
scalar kernel's (EDGERUN_NO_AVX512=1, read once per process: a child process here) bit for bit,
NaN, +-inf, -0.0 / +0.0 ties included, at 1 and 2 threads: odd widths, rows of several 16-output
chunks and a tail, pads, ceil mode, other window heights, row strides and dilations."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from edgerun.engine import NativeEngine
from edgerun.exporters import erg
from test_maxpool_sweep import _pool_model

CASES = [  # (h, w, kernel, strides, pads [t, l, b, r], dilations, ceil_mode)
    (32, 32, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 0),    # ResNet's stem pool at 64x64
    (112, 112, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 0),  # ... at 224x224: 56 = 3 chunks + 8
    (15, 37, [3, 3], [2, 2], [0, 0, 0, 0], [1, 1], 1),    # GoogLeNet's ceil-mode pool, odd sizes
    (9, 50, [2, 3], [1, 2], [0, 1, 1, 1], [1, 1], 0),     # 2-row windows at row stride 1
    (13, 21, [5, 3], [3, 2], [2, 1, 2, 0], [2, 1], 1),    # 5 rows dilated 2, row stride 3
    (4, 3, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 0),      # a row narrower than the window's reach
]

_CHILD = """
import sys
import numpy as np
from edgerun.engine import NativeEngine
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.stack([NativeEngine(sys.argv[1], max_batch=2, threads=t).run(x)["y"] for t in (1, 2)]))
"""


def _model(h, w, kernel, strides, pads, dilations, ceil):
    return _pool_model((h, w), kernel, strides, pads, dilations, ceil, channels=4)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-k{c[2]}-s{c[3]}-p{c[4]}-d{c[5]}-c{c[6]}" for c in CASES])
def test_stride2_max_pool_equals_the_scalar_kernel_bit_for_bit(tmp_path, case):
    model = _model(*case)
    erg.write_erg(model, tmp_path / "p.erg")
    rng = np.random.default_rng(case[0] * 1000 + case[1])
    x = rng.standard_normal((2, 4, case[0], case[1])).astype(np.float32)
    x[0, 0].flat[::7] = -np.inf
    x[0, 1].flat[::5] = np.inf
    x[0, 2].flat[::3] = np.nan
    x[1, 0] = np.where(rng.random(x[1, 0].shape) < 0.5, np.float32(-0.0), np.float32(0.0))  # signed-zero ties
    x[1, 1] = np.round(x[1, 1])  # ties
    np.save(tmp_path / "x.npy", x)
    got = np.stack([NativeEngine(tmp_path / "p.erg", max_batch=2, threads=t).run(x)["y"] for t in (1, 2)])
    env = dict(os.environ, EDGERUN_NO_AVX512="1")
    r = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "p.erg"), str(tmp_path / "x.npy"),
                        str(tmp_path / "ref.npy")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = np.load(tmp_path / "ref.npy")
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
