"""Fused 1x1 -> depthwise -> 1x1 chains (cpp/src/engine_fuse.cpp).

The engine runs such a chain by strips of output rows when its inner tensors are large;
every output value comes from the same kernels in the same order as the unfused run, so
fused and unfused outputs must be bit-identical, and the inner tensors must leave the
activation arena. EDGERUN_FUSE_KB shrinks the strip budget so these small chains fuse,
with strips that do not divide the rows evenly.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.engine import NativeEngine, OrtEngine
from edgerun.exporters import erg

pytestmark = pytest.mark.runtime

NATIVE_VS_ORT_RTOL = 1e-4  # fp32 chain vs onnxruntime, relative to the output's max |value|
SMALL_BUDGET_KB = "8"      # a few rows per strip for the shapes below


def _chain_model(cin, cexp, h, w, k, stride, pads):
    """x -> 1x1 (cin -> cexp) + ReLU6 -> kxk depthwise (stride) + ReLU6 -> 1x1 (cexp -> cin)."""
    rng = np.random.default_rng(cin * k + stride)
    oh = (h + pads[0] + pads[2] - k) // stride + 1
    ow = (w + pads[1] + pads[3] - k) // stride + 1
    inits = {
        "we": rng.standard_normal((cexp, cin, 1, 1)).astype(np.float32) / np.sqrt(cin),
        "be": rng.standard_normal(cexp).astype(np.float32) * 0.1,
        "wd": rng.standard_normal((cexp, 1, k, k)).astype(np.float32) / k,
        "bd": rng.standard_normal(cexp).astype(np.float32) * 0.1,
        "wp": rng.standard_normal((cin, cexp, 1, 1)).astype(np.float32) / np.sqrt(cexp),
        "bp": rng.standard_normal(cin).astype(np.float32) * 0.1,
        "lo": np.float32(0.0), "hi": np.float32(6.0),
    }
    nodes = [
        helper.make_node("Conv", ["x", "we", "be"], ["e"], name="expand", kernel_shape=[1, 1]),
        helper.make_node("Clip", ["e", "lo", "hi"], ["e6"], name="relu6_e"),
        helper.make_node("Conv", ["e6", "wd", "bd"], ["d"], name="dw", group=cexp, kernel_shape=[k, k],
                         strides=[stride, stride], pads=pads),
        helper.make_node("Clip", ["d", "lo", "hi"], ["d6"], name="relu6_d"),
        helper.make_node("Conv", ["d6", "wp", "bp"], ["y"], name="project", kernel_shape=[1, 1]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", cin, h, w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cin, oh, ow])
    g = helper.make_graph(nodes, "chain", [x], [y], [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in inits.items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8))


CASES = [  # cin, cexp, h, w, k, stride, pads (TF "same" at stride 2 is asymmetric)
    (8, 24, 23, 29, 3, 1, [1, 1, 1, 1]),
    (8, 24, 23, 29, 3, 2, [0, 0, 1, 1]),
    (48, 64, 17, 21, 5, 2, [2, 2, 2, 2]),   # K = 48 / 64: the int8 GEMM runs both 1x1s
    (48, 64, 15, 40, 5, 1, [2, 2, 2, 2]),
]


def _run(path, x, monkeypatch, fuse: bool, threads: int = 1):
    monkeypatch.setenv("EDGERUN_FUSE_KB", SMALL_BUDGET_KB)
    if fuse:
        monkeypatch.delenv("EDGERUN_NO_FUSE", raising=False)
    else:
        monkeypatch.setenv("EDGERUN_NO_FUSE", "1")
    eng = NativeEngine(path, max_batch=2, threads=threads)
    kernels = [s["kernel"] for s in eng.profile_layers(x, runs=1, warmup=0)]
    return eng.run(x)["y"], eng.arena_bytes, kernels


def _dequantized_model(model, prec):
    """The model with every Conv weight replaced by its round-to-nearest quantized value."""
    from edgerun.exporters.erg_quant import fake_quantize

    m = onnx.ModelProto()
    m.CopyFrom(model)
    convs = {n.input[1] for n in m.graph.node if n.op_type == "Conv"}
    for init in m.graph.initializer:
        if init.name in convs:
            w = numpy_helper.to_array(init)
            wq = fake_quantize(prec, w.reshape(w.shape[0], -1)).reshape(w.shape)
            init.CopyFrom(numpy_helper.from_array(wq.astype(np.float32), init.name))
    return m


# "int8-a32": int8 weights, fp32 activations on the 1x1s (dequantized once per run, before
# the strips); "int4": dequantized per run too (depthwise stays int8).
@pytest.mark.parametrize("prec", ["fp32", "int8", "int8-a32", "int4"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])))
def test_fused_chain_is_bit_identical_to_unfused_and_frees_the_arena(tmp_path, monkeypatch, case, prec):
    model = _chain_model(*case)
    path = tmp_path / "chain.erg"
    layers = erg.weight_layers(model)
    wprec = prec.split("-")[0]
    precisions = {l["name"]: "int8" if wprec == "int4" and l["depthwise"] else wprec for l in layers} \
        if prec != "fp32" else None
    fp32_acts = [l["name"] for l in layers if not l["depthwise"]] if prec == "int8-a32" else ()
    erg.write_erg(model, path, precisions=precisions, fp32_acts=fp32_acts)
    x = np.random.default_rng(1).standard_normal((2, case[0], case[2], case[3])).astype(np.float32)
    fused, arena_fused, kinds = _run(path, x, monkeypatch, fuse=True)
    plain, arena_plain, plain_kinds = _run(path, x, monkeypatch, fuse=False)
    assert kinds == ["fused-1x1-dw-1x1", "(fused)", "(fused)"], kinds
    assert "fused-1x1-dw-1x1" not in plain_kinds
    np.testing.assert_array_equal(fused, plain)
    assert arena_fused < arena_plain  # the expanded tensors are never stored whole
    for threads in (2, 3):  # strips shared out among the threads, unevenly at 3
        again, _, _ = _run(path, x, monkeypatch, fuse=True, threads=threads)
        np.testing.assert_array_equal(again, fused)
    if prec in ("fp32", "int8-a32"):  # fp32 compute: onnxruntime on the same (dequantized) weights
        onnx_path = tmp_path / "chain.onnx"
        onnx.save(model if prec == "fp32" else _dequantized_model(model, "int8"), onnx_path)
        ref = OrtEngine(onnx_path).run(x)["y"]
        assert np.abs(ref - fused).max() <= NATIVE_VS_ORT_RTOL * np.abs(ref).max()


def test_small_chains_stay_unfused_by_default(tmp_path, monkeypatch):
    """With the default budget (1 MiB strips, chains >= 3 MiB) a small chain runs layer by layer."""
    model = _chain_model(*CASES[0])
    path = tmp_path / "chain.erg"
    erg.write_erg(model, path)
    monkeypatch.delenv("EDGERUN_FUSE_KB", raising=False)
    monkeypatch.delenv("EDGERUN_NO_FUSE", raising=False)
    eng = NativeEngine(path, max_batch=1)
    x = np.zeros((1, 8, 23, 29), np.float32)
    assert [s["kernel"] for s in eng.profile_layers(x, runs=1, warmup=0)] == ["conv-1x1", "conv-dw", "conv-1x1"]
