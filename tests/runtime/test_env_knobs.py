"""The engine's environment knobs (cpp/src/env.h) all read a value the same way.

Boolean knobs (EDGERUN_NO_AVX512, EDGERUN_NO_FUSE, ...): unset, empty, 0/false/no/off (any
case) are off; 1/true/yes/on are on; anything else is on with one warning on stderr naming
the variable and the accepted values. Numeric knobs (EDGERUN_SPIN_US, EDGERUN_TAKEBACK_US,
EDGERUN_FUSE_KB): a value that is not a non-negative integer keeps the default, with one
warning naming the variable, the value and the default. Before, EDGERUN_NO_AVX512=0 turned
AVX-512 off, EDGERUN_NO_FUSE=false turned fusion off and EDGERUN_SPIN_US=abc silently became 0.

Kernel paths are chosen once per process, so every case runs in a fresh subprocess with only
the knob under test set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.exporters import erg

pytestmark = pytest.mark.runtime

OFF_VALUES = ["", "0", "false", "FALSE", "no", "off", "Off"]
ON_VALUES = ["1", "true", "YES", "on"]
PATH_KNOBS = ["EDGERUN_NO_AVX512", "EDGERUN_NO_VNNI", "EDGERUN_NO_AMX", "EDGERUN_FORCE_PORTABLE"]
FUSE_KB = "8"  # small enough that the test model's chain fuses
SUBPROCESS_TIMEOUT_S = 120

# Prints the kernel paths and, given an .erg, the kernel of every step (threads as given).
_PROBE = r"""
import json, sys
import numpy as np
from edgerun import _core
out = {"gemm": _core.gemm_path(), "qgemm": _core.qgemm_path()}
if len(sys.argv) > 1:
    from edgerun.engine import NativeEngine
    eng = NativeEngine(sys.argv[1], max_batch=1, threads=int(sys.argv[2]))
    x = np.random.default_rng(0).standard_normal((1,) + eng.input_shapes[0][1:]).astype(np.float32)
    eng.run(x)
    out["kernels"] = [s["kernel"] for s in eng.profile_layers(x, runs=1, warmup=0)]
print(json.dumps(out))
"""


def _probe(env_add: dict[str, str], erg_path=None, threads: int = 1) -> tuple[dict, str]:
    """(paths and kernels, stderr) of a fresh process with only `env_add` among EDGERUN_* knobs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERUN_")}
    args = [] if erg_path is None else [os.fspath(erg_path), str(threads)]
    r = subprocess.run([sys.executable, "-c", _PROBE, *args], env={**env, **env_add},
                       capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def _warnings(stderr: str, name: str) -> list[str]:
    return [line for line in stderr.splitlines() if name in line and "warning" in line]


@pytest.fixture(scope="module")
def baseline() -> dict:
    """Kernel paths with no knob set."""
    got, err = _probe({})
    assert "warning" not in err, err
    return got


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """x -> 3x3 stride-2 stem conv (3 -> 16) -> 1x1 (16 -> 24) + ReLU6 -> 3x3 depthwise + ReLU6
    -> 1x1 (24 -> 16): a stem the direct kernel runs (AVX-512) and a chain that fuses at
    EDGERUN_FUSE_KB=8 but not at the default budget."""
    rng = np.random.default_rng(3)
    h, w = 46, 58
    inits = {
        "ws": rng.standard_normal((16, 3, 3, 3)).astype(np.float32) / 5,
        "bs": rng.standard_normal(16).astype(np.float32) * 0.1,
        "we": rng.standard_normal((24, 16, 1, 1)).astype(np.float32) / 4,
        "be": rng.standard_normal(24).astype(np.float32) * 0.1,
        "wd": rng.standard_normal((24, 1, 3, 3)).astype(np.float32) / 3,
        "bd": rng.standard_normal(24).astype(np.float32) * 0.1,
        "wp": rng.standard_normal((16, 24, 1, 1)).astype(np.float32) / 5,
        "bp": rng.standard_normal(16).astype(np.float32) * 0.1,
        "lo": np.float32(0.0), "hi": np.float32(6.0),
    }
    nodes = [
        helper.make_node("Conv", ["x", "ws", "bs"], ["s"], name="stem", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["s", "we", "be"], ["e"], name="expand", kernel_shape=[1, 1]),
        helper.make_node("Clip", ["e", "lo", "hi"], ["e6"], name="relu6_e"),
        helper.make_node("Conv", ["e6", "wd", "bd"], ["d"], name="dw", group=24, kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["d", "lo", "hi"], ["d6"], name="relu6_d"),
        helper.make_node("Conv", ["d6", "wp", "bp"], ["y"], name="project", kernel_shape=[1, 1]),
    ]
    oh, ow = h // 2, w // 2
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, h, w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, oh, ow])
    g = helper.make_graph(nodes, "knobs", [x], [y], [numpy_helper.from_array(np.asarray(a, np.float32), n)
                                                     for n, a in inits.items()])
    m = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)],
                                                            ir_version=8))
    path = tmp_path_factory.mktemp("knobs") / "knobs.erg"
    erg.write_erg(m, path)
    return path


def _fused(kernels: list[str]) -> bool:
    return "fused-1x1-dw-1x1" in kernels


# ---- boolean knobs: kernel paths (read once per process) ----

@pytest.mark.parametrize("value", OFF_VALUES)
@pytest.mark.parametrize("knob", PATH_KNOBS)
def test_off_values_keep_the_default_kernel_paths(baseline, knob, value):
    got, err = _probe({knob: value})
    assert got == baseline, f"{knob}={value!r} changed the kernel paths"
    assert not _warnings(err, knob), err


@pytest.mark.parametrize("value", ON_VALUES)
def test_on_values_force_the_portable_path(value):
    got, err = _probe({"EDGERUN_FORCE_PORTABLE": value})
    assert got["gemm"] == "portable", f"EDGERUN_FORCE_PORTABLE={value!r}: {got}"
    assert not _warnings(err, "EDGERUN_FORCE_PORTABLE"), err


@pytest.mark.parametrize("value", ON_VALUES)
def test_on_values_turn_avx512_off(baseline, value):
    if baseline["gemm"] != "avx512":
        pytest.skip(f"no AVX-512 here (fp32 gemm {baseline['gemm']})")
    got, err = _probe({"EDGERUN_NO_AVX512": value})
    assert got["gemm"] != "avx512" and got != baseline, f"EDGERUN_NO_AVX512={value!r}: {got}"
    assert got == _probe({"EDGERUN_NO_AVX512": "1"})[0]
    assert not _warnings(err, "EDGERUN_NO_AVX512"), err


def test_an_unrecognised_flag_value_is_on_and_warns_once(baseline):
    got, err = _probe({"EDGERUN_FORCE_PORTABLE": "maybe"})
    assert got == _probe({"EDGERUN_FORCE_PORTABLE": "1"})[0]
    lines = _warnings(err, "EDGERUN_FORCE_PORTABLE")
    assert len(lines) == 1, err
    assert "maybe" in lines[0] and "1/true/yes/on" in lines[0] and "0/false/no/off" in lines[0], lines
    # EDGERUN_NO_AVX512 is read in two places (fp32 and int8 dispatch): still one warning.
    got, err = _probe({"EDGERUN_NO_AVX512": "2"})
    assert got == _probe({"EDGERUN_NO_AVX512": "1"})[0]
    assert len(_warnings(err, "EDGERUN_NO_AVX512=2")) == 1, err


# ---- boolean knobs read per engine load / per run ----

@pytest.mark.parametrize("value", OFF_VALUES)
def test_no_fuse_off_values_keep_fusion_on(model, value):
    got, err = _probe({"EDGERUN_FUSE_KB": FUSE_KB, "EDGERUN_NO_FUSE": value}, model)
    assert _fused(got["kernels"]), f"EDGERUN_NO_FUSE={value!r}: {got['kernels']}"
    assert "warning" not in err, err


@pytest.mark.parametrize("value", [*ON_VALUES, "maybe"])
def test_no_fuse_on_values_turn_fusion_off(model, value):
    got, err = _probe({"EDGERUN_FUSE_KB": FUSE_KB, "EDGERUN_NO_FUSE": value}, model)
    assert not _fused(got["kernels"]), f"EDGERUN_NO_FUSE={value!r}: {got['kernels']}"
    assert len(_warnings(err, "EDGERUN_NO_FUSE")) == (value == "maybe"), err


@pytest.mark.parametrize("value", ["false", "off", *ON_VALUES])
def test_no_direct_conv_reads_the_same_values(model, baseline, value):
    if baseline["gemm"] != "avx512":
        pytest.skip(f"no AVX-512 here (fp32 gemm {baseline['gemm']}): no direct stem kernel")
    default, _ = _probe({}, model)
    assert default["kernels"][0] == "conv-3x3s2-direct", default
    got, err = _probe({"EDGERUN_NO_DIRECT_CONV": value}, model)
    direct = got["kernels"][0] == "conv-3x3s2-direct"
    assert direct == (value in OFF_VALUES), f"EDGERUN_NO_DIRECT_CONV={value!r}: {got['kernels']}"
    assert "warning" not in err, err


# ---- numeric knobs ----

def test_fuse_kb_valid_values_set_the_budget(model):
    fused, err = _probe({"EDGERUN_FUSE_KB": FUSE_KB}, model)
    assert _fused(fused["kernels"]) and "warning" not in err, (fused, err)
    for value in ("", "0", "1024"):  # the default budget (0 meant the default before too)
        got, err = _probe({"EDGERUN_FUSE_KB": value}, model)
        assert not _fused(got["kernels"]) and "warning" not in err, (value, got, err)


@pytest.mark.parametrize("value", ["abc", "8k", "-8", "1.5", " 8"])
def test_fuse_kb_bad_values_keep_the_default_and_warn(model, value):
    got, err = _probe({"EDGERUN_FUSE_KB": value}, model)
    assert not _fused(got["kernels"]), f"EDGERUN_FUSE_KB={value!r}: {got['kernels']}"  # default: unfused
    lines = _warnings(err, f"EDGERUN_FUSE_KB={value}")
    assert len(lines) == 1 and "1024" in lines[0], err


@pytest.mark.parametrize("knob, default", [("EDGERUN_SPIN_US", 100), ("EDGERUN_TAKEBACK_US", 300)])
@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "100us"])
def test_pool_times_bad_values_keep_the_default_and_warn(model, knob, default, value):
    got, err = _probe({knob: value}, model, threads=2)  # read when the first threaded run starts
    lines = _warnings(err, f"{knob}={value}")
    assert len(lines) == 1, err
    assert f"default {default}" in lines[0], lines


@pytest.mark.parametrize("knob", ["EDGERUN_SPIN_US", "EDGERUN_TAKEBACK_US"])
@pytest.mark.parametrize("value", ["", "0", "250"])
def test_pool_times_valid_values_do_not_warn(model, knob, value):
    _, err = _probe({knob: value}, model, threads=2)
    assert "warning" not in err, err
