"""Residual Adds fused into the producing conv's epilogue (cpp/src/engine_fuse_add.cpp).

A conv whose only reader is an Add of a same-shaped skip tensor adds the skip (and the Relu
after the Add, when there is one) in its GEMM epilogue, in the unfused operations' order:
the outputs must be bit-identical to EDGERUN_NO_FUSE_ADD=1, and close to onnxruntime. Cases
cover each GEMM conv path (im2col / implicit 3x3, 1x1, the small-plane 1x1 kernel, the
row-at-a-time GEMM of <= 2 output channels, grouped convs, a fused 1x1 -> dw -> 1x1 chain's
project conv) and graphs where the Add must stay unfused (a conv output read twice, a
broadcasting Add).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.engine import NativeEngine, OrtEngine
from edgerun.exporters import erg

pytestmark = pytest.mark.runtime

NATIVE_VS_ORT_RTOL = 1e-4  # relative to the output's max |value|
SMALL_BUDGET_KB = "8"      # the chain case fuses its 1x1 -> dw -> 1x1 at these sizes


class _Graph:
    """A small ONNX graph built node by node, weights drawn from one seeded generator."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], {}

    def conv(self, x, cin, cout, k=1, stride=1, group=1, relu=False, name=None):
        name = name or f"conv{len(self.nodes)}"
        self.inits[name + "_w"] = self.rng.standard_normal((cout, cin // group, k, k)).astype(np.float32) / np.sqrt(cin * k * k / group)
        self.inits[name + "_b"] = self.rng.standard_normal(cout).astype(np.float32) * 0.1
        pad = k // 2
        self.nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], name=name, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4, group=group))
        return self.relu(name) if relu else name

    def clip6(self, x):
        y = f"clip{len(self.nodes)}"
        self.inits.setdefault("lo", np.float32(0.0))
        self.inits.setdefault("hi", np.float32(6.0))
        self.nodes.append(helper.make_node("Clip", [x, "lo", "hi"], [y], name=y))
        return y

    def relu(self, x):
        y = f"relu{len(self.nodes)}"
        self.nodes.append(helper.make_node("Relu", [x], [y], name=y))
        return y

    def add(self, a, b):
        y = f"add{len(self.nodes)}"
        self.nodes.append(helper.make_node("Add", [a, b], [y], name=y))
        return y

    def const(self, name, arr):
        self.inits[name] = arr.astype(np.float32)
        return name

    def model(self, cin, h, w, outputs):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", cin, h, w])
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in self.inits.items()]
        g = helper.make_graph(self.nodes, "res", [x], outs, inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
        return onnx.shape_inference.infer_shapes(m)


def _resnet_like(c=16, h=14, w=13, skip_first=False):
    """Two basic blocks: identity skip, then a stride-2 block whose 1x1 downsampling conv
    comes after the block's last conv in the graph (as torch exports ResNet); that block's last
    conv has a Relu of its own (fused into the conv: its activation, then + skip, then Relu)."""
    g = _Graph(3)
    a = g.conv("x", c, c, k=3, relu=True)
    b = g.conv(a, c, c, k=3)
    r1 = g.relu(g.add("x", b) if skip_first else g.add(b, "x"))
    a2 = g.conv(r1, c, 2 * c, k=3, stride=2, relu=True)
    b2 = g.conv(a2, 2 * c, 2 * c, k=3, relu=True)
    ds = g.conv(r1, c, 2 * c, k=1, stride=2)
    r2 = g.relu(g.add(b2, ds))
    return g.model(c, h, w, [r2]), 2


def _bottleneck_like(c=64, h=7, w=7):
    """1x1 -> 3x3 -> 1x1 (the last on a 7x7 plane: the small-plane kernel) + identity, Relu;
    then a grouped 3x3 (2 groups) with a ReLU6 of its own + skip, no Relu after the Add."""
    g = _Graph(5)
    a = g.conv("x", c, c // 2, k=1, relu=True)
    b = g.conv(a, c // 2, c // 2, k=3, relu=True)
    d = g.conv(b, c // 2, c, k=1)
    r = g.relu(g.add(d, "x"))
    e = g.clip6(g.conv(r, c, c, k=3, group=2))
    return g.model(c, h, w, [g.add(r, e)]), 2


def _mobilenet_like(c=8, cexp=48, h=23, w=21):
    """Inverted residuals: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 project, + skip;
    the second block's project conv has 2 output channels (the GEMM's row-at-a-time path)."""
    g = _Graph(7)
    e = g.clip6(g.conv("x", c, cexp, k=1))
    d = g.clip6(g.conv(e, cexp, cexp, k=3, group=cexp))
    y1 = g.add("x", g.conv(d, cexp, c, k=1))
    e2 = g.clip6(g.conv(y1, c, 12, k=1))
    d2 = g.clip6(g.conv(e2, 12, 12, k=3, group=12))
    p2 = g.conv(d2, 12, 2, k=1)
    s2 = g.conv(y1, c, 2, k=1)  # a 2-channel skip, so the Adds match in shape
    return g.model(c, h, w, [g.add(p2, s2)]), 2


def _not_fusable(c=16, h=9, w=11):
    """A conv output that is also a graph output (two readers), and a broadcasting Add."""
    g = _Graph(11)
    a = g.conv("x", c, c, k=3)
    r = g.relu(g.add(a, "x"))                                          # a is read twice
    b = g.conv(r, c, c, k=1)
    bias = g.const("chan", np.random.default_rng(2).standard_normal((1, c, 1, 1)))
    return g.model(c, h, w, [a, g.add(b, bias)]), 0


CASES = {"resnet": _resnet_like, "resnet_skip_first": lambda: _resnet_like(skip_first=True),
         "bottleneck": _bottleneck_like, "mobilenet": _mobilenet_like, "not_fusable": _not_fusable}


def _run(path, x, monkeypatch, fuse: bool, threads: int = 1, chains: bool = True):
    monkeypatch.setenv("EDGERUN_FUSE_KB", SMALL_BUDGET_KB)
    for var, on in (("EDGERUN_NO_FUSE_ADD", not fuse), ("EDGERUN_NO_FUSE", not chains)):
        if on:
            monkeypatch.setenv(var, "1")
        else:
            monkeypatch.delenv(var, raising=False)
    eng = NativeEngine(path, max_batch=2, threads=threads)
    steps = eng.profile_layers(x, runs=1, warmup=0)
    outs = eng.run(x)
    return {k: v.copy() for k, v in outs.items()}, eng.arena_bytes, steps


@pytest.mark.parametrize("name", list(CASES))
def test_fused_residual_add_is_bit_identical_to_unfused(tmp_path, monkeypatch, name):
    model, n_fused = CASES[name]()
    path = tmp_path / "res.erg"
    erg.write_erg(model, path)
    onnx.save(model, tmp_path / "res.onnx")
    cin = model.graph.input[0].type.tensor_type.shape.dim
    x = np.random.default_rng(1).standard_normal((2, cin[1].dim_value, cin[2].dim_value, cin[3].dim_value)).astype(np.float32)
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]  # NaN / inf through the epilogue as through the Add and Relu
    plain, _, plain_steps = _run(path, x, monkeypatch, fuse=False)
    assert not any(s["kernel"] == "(fused)" and s["op"] == "Add" for s in plain_steps)
    expect = OrtEngine(tmp_path / "res.onnx").run(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0))
    finite, _, _ = _run(path, np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), monkeypatch, fuse=True)
    for k, v in expect.items():
        tol = NATIVE_VS_ORT_RTOL * max(1.0, float(np.abs(v).max()))
        np.testing.assert_allclose(finite[k], v, rtol=0, atol=tol)
    for threads in (1, 2):
        fused, _, steps = _run(path, x, monkeypatch, fuse=True, threads=threads)
        adds = [s for s in steps if s["op"] == "Add" and s["kernel"] == "(fused)"]
        assert len(adds) == n_fused, [(s["op"], s["kernel"]) for s in steps]
        assert fused.keys() == plain.keys()
        for k in plain:
            np.testing.assert_array_equal(fused[k], plain[k], err_msg=f"{name} {k} threads={threads}")


def test_fused_residual_add_without_chains_and_on_int8_weights(tmp_path, monkeypatch):
    """The project convs unchained (plain 1x1 GEMM path) and int8 weights (conv-s8 stays
    unfused, fp32 activations on int8 weights fuse): still the unfused bits."""
    model, _ = _mobilenet_like()
    x = np.random.default_rng(4).standard_normal((2, 8, 23, 21)).astype(np.float32)
    plain_path, q8_path = tmp_path / "m.erg", tmp_path / "q8.erg"
    erg.write_erg(model, plain_path)
    layers = erg.weight_layers(model)
    prec = {l["name"]: "int8" for l in layers}
    erg.write_erg(model, q8_path, precisions=prec, fp32_acts=[l["name"] for l in layers if not l["depthwise"]][:2])
    for path in (plain_path, q8_path):
        for chains in (False, True):
            plain, _, _ = _run(path, x, monkeypatch, fuse=False, chains=chains)
            fused, _, steps = _run(path, x, monkeypatch, fuse=True, chains=chains)
            for k in plain:
                np.testing.assert_array_equal(fused[k], plain[k], err_msg=f"{path.name} chains={chains}")


# Fused and unfused in one fresh process (kernel paths are chosen once per process).
_PATHS_PROBE = r"""
import os, sys
import numpy as np
from edgerun.engine import NativeEngine
x = np.random.default_rng(6).standard_normal(tuple(int(d) for d in sys.argv[2].split(","))).astype(np.float32)
outs = []
for off in ("1", "0"):
    os.environ["EDGERUN_NO_FUSE_ADD"] = off
    eng = NativeEngine(sys.argv[1], max_batch=2, threads=2)
    outs.append({k: v.copy() for k, v in eng.run(x).items()})
np.savez(sys.argv[3], **{"plain_" + k: v for k, v in outs[0].items()}, **{"fused_" + k: v for k, v in outs[1].items()})
"""


@pytest.mark.parametrize("knob", ["EDGERUN_NO_IMPLICIT_CONV", "EDGERUN_NO_AVX512", "EDGERUN_FORCE_PORTABLE"])
def test_fused_residual_add_on_other_kernel_paths(tmp_path, knob):
    """im2col + GEMM, the AVX2 6x16 tile and the portable tile: their epilogues add the
    residual in the same order too."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERUN_")}
    env[knob] = "1"
    for name in ("resnet", "bottleneck", "mobilenet"):
        model, _ = CASES[name]()
        path = tmp_path / f"{name}.erg"
        erg.write_erg(model, path)
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        out = tmp_path / f"{name}.npz"
        r = subprocess.run([sys.executable, "-c", _PATHS_PROBE, str(path), ",".join(map(str, [2] + dims[1:])), str(out)],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        got = np.load(out)
        keys = [k[len("plain_"):] for k in got.files if k.startswith("plain_")]
        assert keys
        for k in keys:
            np.testing.assert_array_equal(got["fused_" + k], got["plain_" + k], err_msg=f"{knob} {name} {k}")
