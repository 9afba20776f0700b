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


_FUSE_PROBE = """
import json, os, sys, numpy as np
from edgerun.engine import NativeEngine
x = np.load(sys.argv[2])
ys = []
for fuse in ("0", "1"):
    os.environ["EDGERUN_NO_FUSE"] = fuse
    eng = NativeEngine(sys.argv[1], max_batch=len(x), threads=1)
    kinds = [s["kernel"] for s in eng.profile_layers(x, runs=1, warmup=0)]
    ys.append({"kinds": kinds, "y": next(iter(eng.run(x).values())).tolist()})
print(json.dumps(ys))
"""


def _chain_model(cin, cexp, h, w, seed=0):
    """x -> 1x1 (cin -> cexp) + Clip(0, 6) -> 3x3 depthwise + Clip(0, 6) -> 1x1 (cexp -> cin)."""
    rng = np.random.default_rng(seed)
    inits = {"we": rng.standard_normal((cexp, cin, 1, 1)) / np.sqrt(cin), "be": rng.standard_normal(cexp) * 0.1,
             "wd": rng.standard_normal((cexp, 1, 3, 3)) / 3, "bd": rng.standard_normal(cexp) * 0.1,
             "wp": rng.standard_normal((cin, cexp, 1, 1)) / np.sqrt(cexp), "bp": rng.standard_normal(cin) * 0.1,
             "lo": np.array(0.0), "hi": np.array(6.0)}
    nodes = [helper.make_node("Conv", ["x", "we", "be"], ["e"], name="expand", kernel_shape=[1, 1]),
             helper.make_node("Clip", ["e", "lo", "hi"], ["e6"], name="clip_e"),
             helper.make_node("Conv", ["e6", "wd", "bd"], ["d"], name="dw", group=cexp, kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["d", "lo", "hi"], ["d6"], name="clip_d"),
             helper.make_node("Conv", ["d6", "wp", "bp"], ["y"], name="project", kernel_shape=[1, 1])]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin, h, w])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", cin, h, w])],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


@pytest.mark.parametrize("env", ["default", "no-avx512", "portable"])
def test_nan_input_fused_chain_equals_unfused_with_fp32_activations(tmp_path, env):
    """int8 1x1 convs on fp32 activations (``--front-act fp32``: the fp32 GEMM on
    dequantized weights) around a depthwise conv, all with a fused Clip, fed a NaN:
    the scalar activation of a GEMM tile's edge (``apply_act``: std::min(std::max(v, lo),
    hi)) kept the NaN where the AVX2 vector body (maxps) gave lo, so which pixels stayed
    NaN depended on the tile edges; a fused chain's strips have other edges than the
    whole plane, and the depthwise conv then spread NaN or 0 into neighbours: fused
    differed from unfused in finite outputs (AVX2 GEMM, EDGERUN_NO_AVX512=1). Shrunk
    from the fuzzer: 69 -> 67 -> 69 channels on a 3 x 8 plane."""
    model = _chain_model(69, 67, 3, 8)
    names = ["expand", "dw", "project"]
    path = tmp_path / "chain.erg"
    erg.write_erg(model, path, precisions={n: "int8" for n in names}, fp32_acts=["expand", "project"])
    x = np.random.default_rng(2).standard_normal((1, 69, 3, 8)).astype(np.float32)
    x[0, 5, ::2, 1::3] = np.nan  # pixels in a GEMM tile's vector body and at its edges
    np.save(tmp_path / "x.npy", x)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERUN_")} | _PATH_ENVS[env] | \
        {"EDGERUN_FUSE_KB": "4"}
    r = subprocess.run([sys.executable, "-c", _FUSE_PROBE, str(path), str(tmp_path / "x.npy")], env=run_env,
                       capture_output=True, text=True, check=True)
    fused, unfused = json.loads(r.stdout.strip().splitlines()[-1])  # EDGERUN_NO_FUSE 0, 1
    assert fused["kinds"][0] == "fused-1x1-dw-1x1" and "fused-1x1-dw-1x1" not in unfused["kinds"]
    assert unfused["kinds"][0] == "conv-w8"
    assert _same_bits(np.array(fused["y"], np.float32), np.array(unfused["y"], np.float32))


def test_fuzzer_smoke(tmp_path):
    """scripts/fuzz_quant.py runs end to end on a few small nets (fixed seed, two kernel
    paths) and finds nothing: it keeps working as the engine changes."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_quant.py"
    out = tmp_path / "fails.json"
    r = subprocess.run([sys.executable, str(script), "--seed", "7", "--cases", "3", "--small", "--no-shrink",
                        "--paths", "amx,portable", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads(out.read_text())["stats"]["cases"] == 3


@pytest.mark.parametrize("prec", ["int8", "int4"])
def test_gptq_rounds_with_an_indefinite_centred_hessian(prec):
    """GPTQ with bias correction centres H = E[x_q x_q^T] on the fp32 inputs' mean, which
    is not the covariance of the quantized inputs: on a few calibration pixels (the fuzz
    case: a 1x1 conv with K = 5 after an int8 layer, a 2 x 2 plane, batch 1) H had a
    negative eigenvalue larger than the 1 % dampening, and the exporter died in
    numpy's Cholesky ("Matrix is not positive definite"). Rounding must go through."""
    from edgerun.exporters.quant_rounding import round_matrix

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5)) + 0.3                 # 4 pixels, K = 5
    mean_fp32 = 2 * x.mean(0)                             # the fp32 inputs' mean, far off
    h = (x.T @ x / len(x) - np.outer(mean_fp32, mean_fp32))[None]
    assert np.linalg.eigvalsh(h[0])[0] < 0                # indefinite
    w = rng.standard_normal((1, 3, 5)).astype(np.float32)
    q, s = round_matrix(prec, w, h, group_size=4)
    qmax = 127 if prec == "int8" else 7
    assert np.all(np.isfinite(s)) and np.all(s > 0) and np.all(np.abs(q) <= qmax)
