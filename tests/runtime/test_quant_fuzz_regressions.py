"""Regressions found by ``scripts/fuzz_quant.py`` (differential fuzzing of the int8 / int4
weight paths): each test is the fuzzer's shrunk case, small and fixed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.exporters import erg

pytestmark = pytest.mark.runtime

# Which int8 kernel each environment asks for (a path the CPU lacks falls back to the next).
_PATH_ENVS = {"default": {}, "no-amx": {"EDGERUN_NO_AMX": "1"}, "no-avx512": {"EDGERUN_NO_AVX512": "1"},
              "no-vnni": {"EDGERUN_NO_VNNI": "1"}, "portable": {"EDGERUN_FORCE_PORTABLE": "1"}}
_PROBE = """
import json, sys, numpy as np
from edgerun.engine import NativeEngine
from edgerun import _core
x = np.load(sys.argv[2])
ys = [next(iter(NativeEngine(p, max_batch=len(x), threads=t).run(x).values())).tolist()
      for p in json.loads(sys.argv[1]) for t in (1, 2)]
print(json.dumps({"path": _core.qgemm_path(), "y": ys}))
"""


def _conv_model(cin, cout, h, w, k=1, clip=False, seed=0):
    """x -> Conv kxk (cin -> cout, pad k // 2) [-> Clip(0, 6)]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k))
                                     .astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[k, k], pads=[k // 2] * 4)]
    out = "c"
    if clip:
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip"))
        out = "y"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin, h, w])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", cout, h, w])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run_every_path(paths, x, tmp_path):
    """{env name: [output per (file, threads 1 / 2)]}, each path in its own process."""
    np.save(tmp_path / "x.npy", x)
    outs = {}
    for name, extra in _PATH_ENVS.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERUN_")} | extra
        r = subprocess.run([sys.executable, "-c", _PROBE, json.dumps([str(p) for p in paths]),
                            str(tmp_path / "x.npy")], env=env, capture_output=True, text=True, check=True)
        outs[name] = [np.array(y, np.float32) for y in json.loads(r.stdout.strip().splitlines()[-1])["y"]]
    return outs


def _same_bits(a, b):
    return a.shape == b.shape and bool(np.all((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))))


def test_nan_pixel_gives_nan_outputs_on_every_int8_path(tmp_path):
    """The int8 GEMM quantizes each pixel over its min..max, and min / max skip NaNs: a
    pixel holding a NaN came out finite (garbage, where an fp32 Conv gives NaN), and on
    the portable path int32_t(NaN) (INT_MIN on x86) set the top bit of the next k's
    byte, so portable and the SIMD paths gave different bits. With a fused Clip, the
    scalar epilogue of a tail strip kept NaN where the vector one gives lo. 20 pixels:
    one full 16-pixel strip and a 4-pixel tail, a NaN pixel in each."""
    paths = []
    for clip in (False, True):
        model = _conv_model(45, 7, 4, 5, clip=clip)  # K = 45: the int8 GEMM, K % 4 != 0
        paths.append(tmp_path / f"c{int(clip)}.erg")
        erg.write_erg(model, paths[-1], precisions={"conv": "int8"})
    x = np.random.default_rng(1).standard_normal((2, 45, 4, 5)).astype(np.float32)
    x[0, 7, 0, 3] = np.nan    # pixel 3: the full strip
    x[1, 44, 3, 2] = np.nan   # pixel 17: the tail strip
    outs = _run_every_path(paths, x, tmp_path)
    nan_px = np.zeros((2, 1, 4, 5), bool)
    nan_px[0, 0, 0, 3] = nan_px[1, 0, 3, 2] = True
    plain, clipped = outs["portable"][0], outs["portable"][2]
    assert np.array_equal(np.isnan(plain), np.broadcast_to(nan_px, plain.shape))  # every channel of those pixels
    assert not np.isnan(clipped).any() and np.all(clipped[np.broadcast_to(nan_px, clipped.shape)] == 0.0)
    for name, ys in outs.items():
        for i, y in enumerate(ys):
            assert _same_bits(y, outs["portable"][i // 2 * 2]), (name, i)
