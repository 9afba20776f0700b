"""The native engine against onnxruntime: small models, edge cases, and every
intermediate tensor (= every cut's front half) of both zoo models."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.engine import NativeEngine, OrtEngine, make_engine
from edgerun.errors import ConfigError
from edgerun.exporters import erg

from _models import perturbed_export  # noqa: E402 - tests/runtime/_models.py

import torch  # noqa: E402
nn = torch.nn
F = torch.nn.functional

# fp32 kernels differ from onnxruntime only in summation order (GEMM blocking,
# FMA): ~1e-6 of the output scale for K in the thousands. 1e-4 keeps 100x
# headroom and still catches any indexing bug (those are O(1) errors).
NATIVE_VS_ORT_RTOL = 1e-4


def assert_close(ref: np.ndarray, got: np.ndarray, what: str) -> None:
    assert ref.shape == got.shape, f"{what}: shape {got.shape} != {ref.shape}"
    scale = max(float(np.abs(ref).max()), 1e-3)
    err = float(np.abs(ref - got).max()) / scale
    assert err <= NATIVE_VS_ORT_RTOL, f"{what}: max error {err:.2e} of scale {scale:.3g}"


class ConvZoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.dw2 = nn.Conv2d(16, 16, 5, stride=2, padding=2, groups=16)
        self.gr = nn.Conv2d(16, 24, 3, padding=2, dilation=2, groups=4)
        self.pw = nn.Conv2d(24, 16, 1)
        self.asym = nn.Conv2d(16, 8, (3, 2), stride=(1, 2))

    def forward(self, x):
        y = F.relu(self.bn(self.c0(x)))
        y = y + F.relu6(self.dw(y))                      # residual
        y = F.hardswish(self.dw2(y))
        y = F.silu(self.gr(y))
        y = F.hardsigmoid(self.pw(y))
        return self.asym(F.pad(y, (0, 1, 1, 1)))         # zero pad folded into Conv pads


class PoolLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(16 * 4 * 4 + 16, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        y = torch.sigmoid(self.c(x))
        a = F.max_pool2d(y, 3, stride=2, ceil_mode=True)
        b = F.avg_pool2d(y, 3, stride=2, padding=1, count_include_pad=False)
        y = torch.cat([a, b - 0.5], dim=1) / 2.0
        g = F.adaptive_avg_pool2d(y, 1).flatten(1)
        y = F.avg_pool2d(y, 2, padding=1, count_include_pad=True)
        y = torch.cat([torch.flatten(y, 1), g], 1)
        return self.fc2(F.relu(self.fc(y)))


class TokenMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 8)

    def forward(self, x):  # x: [N, 6, 16]: MatMul on 3-D input (+ bias Add)
        return self.b(F.silu(self.a(x))) * 2.0 + 1.0


def _export(module, example, tmp_path, name):
    _, onnx_path, erg_path, _ = perturbed_export(module, example, tmp_path, name)
    return onnx_path, erg_path


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine_models")
    return {
        "conv": (_export(ConvZoo(), torch.randn(1, 3, 20, 20), d, "conv"), (3, 20, 20)),
        "pool": (_export(PoolLinear(), torch.randn(1, 3, 14, 14), d, "pool"), (3, 14, 14)),
        "mlp": (_export(TokenMLP(), torch.randn(1, 6, 16), d, "mlp"), (6, 16)),
    }


@pytest.mark.parametrize("name", ["conv", "pool", "mlp"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("threads", [1, 2])
def test_small_models_match_ort(small_models, name, batch, threads):
    (onnx_path, erg_path), shape = small_models[name]
    x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
    ref = OrtEngine(onnx_path).run(x)
    got = NativeEngine(erg_path, max_batch=4, threads=threads).run(x)
    for k in ref:
        assert_close(ref[k], got[k], f"{name} b{batch} t{threads} {k}")


def _onnx_model(nodes, inits, in_shape, out_shape):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *in_shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *out_shape])
    g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return onnx.shape_inference.infer_shapes(m)


def test_hand_built_ops_match_ort(tmp_path):
    """Ops torch's exporter folds away: standalone BN and Pad, Clip without bounds,
    Gemm with transB=0/alpha/beta, Constant nodes, Identity, ReduceMean on one axis."""
    rng = np.random.default_rng(0)
    c = 4
    nodes = [
        helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["bn"], name="bn", epsilon=1e-3),
        helper.make_node("Constant", [], ["pads"], value=numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 0], np.int64))),
        helper.make_node("Pad", ["bn", "pads", "pv"], ["pad"], name="pad"),
        helper.make_node("Clip", ["pad"], ["clip"], name="clip_noop"),
        helper.make_node("Identity", ["clip"], ["id"], name="id"),
        helper.make_node("ReduceMean", ["id", "ax"], ["rm"], name="rm", keepdims=0),
        helper.make_node("Flatten", ["rm"], ["fl"], name="fl", axis=1),
        helper.make_node("Gemm", ["fl", "W", "C"], ["y"], name="gemm", alpha=0.5, beta=2.0),
    ]
    inits = {"g": rng.uniform(0.5, 2, c).astype(np.float32), "b": rng.standard_normal(c).astype(np.float32),
             "m": rng.standard_normal(c).astype(np.float32), "v": rng.uniform(0.5, 2, c).astype(np.float32),
             "pv": np.array(0.25, np.float32), "ax": np.array([3], np.int64),
             "W": rng.standard_normal((c * 8, 5)).astype(np.float32), "C": rng.standard_normal(5).astype(np.float32)}
    m = _onnx_model(nodes, inits, (c, 5, 6), (5,))
    onnx.save(m, tmp_path / "h.onnx")
    erg.write_erg(m, tmp_path / "h.erg")
    x = rng.standard_normal((2, c, 5, 6)).astype(np.float32)
    assert_close(OrtEngine(tmp_path / "h.onnx").run(x)["y"], NativeEngine(tmp_path / "h.erg").run(x)["y"], "hand")


@pytest.mark.parametrize("k, n", [(300, 600), (301, 603)])
def test_classifier_gemm_at_small_and_large_batch(tmp_path, k, n):
    """A k -> n fully connected layer + ReLU: batches 1-2 take the streaming path (B read
    once, four k rows per pass, no packing), batch 3 the packed GEMM; both match
    onnxruntime, and a thread count changes no bit (the columns are shared out, each sum
    keeps its order). 301 x 603 leaves a k row after the passes of four and columns after
    the 8-wide vectors: the tails must sum like the body."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Gemm", ["x", "W", "C"], ["g"], name="fc", transB=1),
             helper.make_node("Relu", ["g"], ["y"], name="relu")]
    inits = {"W": rng.standard_normal((n, k)).astype(np.float32) / 17,
             "C": rng.standard_normal(n).astype(np.float32)}
    m = _onnx_model(nodes, inits, (k,), (n,))
    onnx.save(m, tmp_path / "fc.onnx")
    erg.write_erg(m, tmp_path / "fc.erg")
    ort = OrtEngine(tmp_path / "fc.onnx")
    one, two = NativeEngine(tmp_path / "fc.erg", max_batch=3), NativeEngine(tmp_path / "fc.erg", max_batch=3, threads=2)
    for batch in (1, 2, 3):
        x = rng.standard_normal((batch, k)).astype(np.float32)
        got = one.run(x)["y"]
        assert_close(ort.run(x)["y"], got, f"fc batch {batch}")
        np.testing.assert_array_equal(two.run(x)["y"], got)
        if batch <= 2:  # each row alone: the same bits as in the batch
            np.testing.assert_array_equal(one.run(x[-1:])["y"], got[-1:])


@pytest.mark.parametrize("cin, cout, side", [(300, 192, 7), (300, 40, 28), (48, 1152, 7)])
def test_pointwise_conv_rows_shared_out_over_threads(tmp_path, cin, cout, side):
    """1x1 convs whose GEMM is one or an odd number of row x column blocks (192 channels
    on a 7x7 plane was one task: a thread idle; 40 channels on 28x28 seven column blocks)
    split their rows (weights the larger operand) or their columns (40 x 784: into 80-column
    blocks, 16-wide strip tails) so two threads share the work evenly; K = 300 spans two K
    blocks. Same bits on 1 and 2 threads, and onnxruntime's values."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="pw"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="relu6")]
    inits = {"W": rng.standard_normal((cout, cin, 1, 1)).astype(np.float32) / cin**0.5,
             "B": rng.standard_normal(cout).astype(np.float32),
             "lo": np.float32(0.0), "hi": np.float32(6.0)}
    m = _onnx_model(nodes, inits, (cin, side, side), (cout, side, side))
    onnx.save(m, tmp_path / "pw.onnx")
    erg.write_erg(m, tmp_path / "pw.erg")
    x = rng.standard_normal((1, cin, side, side)).astype(np.float32)
    one = NativeEngine(tmp_path / "pw.erg").run(x)["y"]
    np.testing.assert_array_equal(NativeEngine(tmp_path / "pw.erg", threads=2).run(x)["y"], one)
    assert_close(OrtEngine(tmp_path / "pw.onnx").run(x)["y"], one, f"1x1 conv {cin}->{cout} on {side}x{side}")


@pytest.mark.parametrize("h, w, k, dil", [(1, 1, 3, 1), (2, 2, 3, 1), (3, 7, 3, 1), (5, 5, 5, 1),
                                          (8, 8, 3, 1), (9, 6, 3, 2), (4, 4, 5, 2), (40, 40, 3, 1),
                                          (36, 30, 5, 1)])
def test_same_padded_convs_on_small_planes(tmp_path, h, w, k, dil):
    """'Same'-padded stride-1 convs (output as wide as the input) build their column
    matrix from one block copy per tap and zero the wrapped edge columns: planes so small
    that every tap row is all edge (1x1, 2x2), one valid row, dilated taps, non-square.
    Matches onnxruntime on 1 and 2 threads (the threads split the tap rows of column
    matrices of >= 64K floats: the 40x40 and 36x30 cases), and 2 threads give 1 thread's bits."""
    rng = np.random.default_rng(7)
    pad = dil * (k - 1) // 2
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[pad] * 4,
                              dilations=[dil, dil], kernel_shape=[k, k])]
    inits = {"W": rng.standard_normal((6, 5, k, k)).astype(np.float32), "B": rng.standard_normal(6).astype(np.float32)}
    m = _onnx_model(nodes, inits, (5, h, w), (6, h, w))
    onnx.save(m, tmp_path / "c.onnx")
    erg.write_erg(m, tmp_path / "c.erg")
    x = rng.standard_normal((2, 5, h, w)).astype(np.float32)
    ref = OrtEngine(tmp_path / "c.onnx").run(x)["y"]
    outs = [NativeEngine(tmp_path / "c.erg", threads=threads).run(x)["y"] for threads in (1, 2)]
    assert_close(ref, outs[0], f"{h}x{w} k{k} d{dil}")
    np.testing.assert_array_equal(outs[1], outs[0])


def _run_fast_path(stem, x, kernel, what):
    """The one-layer model stem.erg runs `kernel` (on AVX-512 machines, where it exists),
    matches stem.onnx under onnxruntime and gives the same bits on 2 threads. Returns the
    engine and its outputs for x."""
    from edgerun import _core

    fast = NativeEngine(f"{stem}.erg", max_batch=2)
    if _core.gemm_path() == "avx512":
        assert [r["kernel"] for r in fast.profile_layers(x[:1], runs=1)][0] == kernel
    got = fast.run(x)["y"]
    assert_close(OrtEngine(f"{stem}.onnx").run(x)["y"], got, what)
    np.testing.assert_array_equal(NativeEngine(f"{stem}.erg", max_batch=2, threads=2).run(x)["y"], got)
    return fast, got


def _assert_fallback_same_bits(monkeypatch, stem, x, got, off_env, fallback_kernel):
    """With `off_env`=1 the layer runs `fallback_kernel` and gives exactly `got`."""
    monkeypatch.setenv(off_env, "1")
    slow = NativeEngine(f"{stem}.erg", max_batch=2)
    assert [r["kernel"] for r in slow.profile_layers(x[:1], runs=1)][0] == fallback_kernel
    np.testing.assert_array_equal(slow.run(x)["y"], got)


@pytest.mark.parametrize("cin, cout, side", [(300, 192, 7), (48, 40, 7), (20, 64, 9), (16, 33, 5), (8, 32, 3)])
def test_pointwise_small_planes_match_the_gemm_path_bit_for_bit(tmp_path, monkeypatch, cin, cout, side):
    """1x1 convs on small planes (7x7: the GEMM ran 64 lanes for 49 pixels) take the
    channel-lane kernel with weights packed at load: the same sums in the same order as
    the GEMM, so the outputs equal EDGERUN_NO_SMALL_N=1's bit for bit (K = 300: two K
    blocks; 40 and 33 channels: a part-filled panel; 9x9, 5x5, 3x3: short pixel tiles),
    at batch 2 and on 2 threads too, and onnxruntime's values."""
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="pw"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="relu6")]
    inits = {"W": rng.standard_normal((cout, cin, 1, 1)).astype(np.float32) / cin**0.5,
             "B": rng.standard_normal(cout).astype(np.float32), "lo": np.float32(0.0), "hi": np.float32(6.0)}
    m = _onnx_model(nodes, inits, (cin, side, side), (cout, side, side))
    onnx.save(m, tmp_path / "pw.onnx")
    erg.write_erg(m, tmp_path / "pw.erg")
    x = rng.standard_normal((2, cin, side, side)).astype(np.float32) * 2
    small, got = _run_fast_path(tmp_path / "pw", x, "conv-1x1-small", f"1x1 {cin}->{cout} on {side}x{side}")
    np.testing.assert_array_equal(small.run(x[1:])["y"], got[1:])
    _assert_fallback_same_bits(monkeypatch, tmp_path / "pw", x, got, "EDGERUN_NO_SMALL_N", "conv-1x1")


@pytest.mark.parametrize("cin, cout, h, w, pads", [(3, 32, 30, 30, [1, 1, 1, 1]), (3, 16, 31, 37, [0, 0, 1, 1]),
                                                  (7, 48, 20, 18, [1, 0, 0, 1]), (1, 16, 9, 5, [1, 1, 1, 1])])
def test_stride2_stem_convs_match_the_gemm_path_bit_for_bit(tmp_path, monkeypatch, cin, cout, h, w, pads):
    """3x3 stride-2 convs with few input channels (image stems) read their input directly
    on AVX-512 (no im2col): the same products in the GEMM's k order, so the outputs equal
    EDGERUN_NO_DIRECT_CONV=1's (im2col + GEMM) bit for bit: asymmetric pads, odd and
    under-16 output widths, cin 1..7 (K up to 63), 16..48 channels, batch 2, 2 threads."""
    m = _conv_model(cout, 3, pads, 2, h, w, cin)
    onnx.save(m, tmp_path / "c.onnx")
    erg.write_erg(m, tmp_path / "c.erg")
    x = np.random.default_rng(cin + h).standard_normal((2, cin, h, w)).astype(np.float32)
    _, got = _run_fast_path(tmp_path / "c", x, "conv-3x3s2-direct", f"stem {cin}->{cout} {h}x{w} {pads}")
    from edgerun import _core

    # The fallback is the GEMM conv: implicit (B packed from the input) on AVX-512 unless turned off.
    implicit = _core.gemm_path() == "avx512" and os.environ.get("EDGERUN_NO_IMPLICIT_CONV", "") in ("", "0")
    _assert_fallback_same_bits(monkeypatch, tmp_path / "c", x, got, "EDGERUN_NO_DIRECT_CONV",
                               "conv-implicit" if implicit else "conv")


def test_same_shape_add_is_shared_out_over_threads(tmp_path):
    """A residual-style Add of two same-shape tensors (7500 values: one whole 4096-value
    chunk and a partial one per sample) gives a + b exactly on 1 and 2 threads, at batch 1
    and 2: the chunks the threads share must cover every value once."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Add", ["x", "r"], ["y"], name="add")]
    m = _onnx_model(nodes, {}, (3, 50, 50), (3, 50, 50))
    erg.write_erg(m, tmp_path / "add.erg")
    for threads in (1, 2):
        eng = NativeEngine(tmp_path / "add.erg", max_batch=2, threads=threads)
        for batch in (1, 2):
            x = rng.standard_normal((batch, 3, 50, 50)).astype(np.float32)
            np.testing.assert_array_equal(eng.run(x)["y"], x + np.maximum(x, 0))


def test_batch_too_large_and_wrong_shape(small_models):
    (_, erg_path), shape = small_models["conv"]
    eng = NativeEngine(erg_path, max_batch=2)
    with pytest.raises(ConfigError, match="max_batch"):
        eng.run(np.zeros((3, *shape), np.float32))
    with pytest.raises(ConfigError, match="shape"):
        eng.run(np.zeros((1, 3, 21, 20), np.float32))
    with pytest.raises(ConfigError, match="missing inputs"):
        eng.run({"nope": np.zeros((1, *shape), np.float32)})


def test_engine_reports_memory(small_models):
    (_, erg_path), _ = small_models["conv"]
    eng = NativeEngine(erg_path, max_batch=4)
    assert eng.arena_bytes > 0 and eng.weight_bytes > 0
    assert eng.input_names == ["input"] and len(eng.output_names) == 1


def test_make_engine_kinds(small_models):
    (onnx_path, erg_path), _ = small_models["mlp"]
    assert isinstance(make_engine("native", erg_path=erg_path), NativeEngine)
    assert isinstance(make_engine("ort", onnx_path=onnx_path, threads=2), OrtEngine)
    with pytest.raises(ConfigError, match="native, ort"):
        make_engine("tensorrt", erg_path=erg_path)


# ---- every intermediate tensor of the zoo models ------------------------------
def _sweep(traced, tmp_path, batch: int) -> int:
    model = traced.model
    inits = {i.name for i in model.graph.initializer}
    final = [o.name for o in model.graph.output]
    inter = [o for n in model.graph.node for o in n.output if o and o not in inits and o not in final]
    info = erg.write_erg(model, tmp_path / "all.erg", extra_outputs=inter)
    assert set(info["outputs"]) == set(final + inter)
    full = onnx.ModelProto()
    full.CopyFrom(model)
    vis = {v.name: v for v in model.graph.value_info}
    full.graph.output.extend(vis[o] for o in inter)
    onnx.save(full, tmp_path / "all.onnx")
    example = traced.source.example.numpy()
    rng = np.random.default_rng(0)
    x = np.concatenate([example] + [example + 0.1 * rng.standard_normal(example.shape).astype(np.float32)
                                    for _ in range(batch - 1)])
    ref = OrtEngine(tmp_path / "all.onnx").run(x)
    got = NativeEngine(tmp_path / "all.erg", max_batch=batch).run(x)
    for name in final + inter:
        assert_close(ref[name], got[name], name)
    return len(inter)


def test_digits_every_intermediate_matches_ort(digits_traced, tmp_path):
    assert _sweep(digits_traced, tmp_path, batch=3) >= 10


@pytest.mark.slow
def test_effnet_every_intermediate_matches_ort(effnet_traced, tmp_path):
    assert _sweep(effnet_traced, tmp_path, batch=2) >= 80


# Depthwise shapes that exercise every branch of the vectorised kernel: row
# tails (widths not a multiple of 8 / 32), stride 2 de-interleave, asymmetric
# pads, dilation, kernels other than 3x3/5x5, and a row narrower than a vector.
DEPTHWISE_CASES = [
    # (c, h, w, kh, kw, stride, pads [t, l, b, r], dilation)
    (5, 13, 37, 3, 3, 1, [1, 1, 1, 1], 1),
    (4, 14, 70, 5, 5, 2, [2, 2, 2, 2], 1),
    (3, 11, 33, 3, 3, 2, [0, 1, 1, 0], 1),
    (3, 9, 6, 5, 5, 1, [2, 2, 2, 2], 1),
    (2, 16, 41, 3, 3, 1, [2, 2, 2, 2], 2),
    (2, 10, 19, 7, 7, 2, [3, 3, 3, 3], 1),
    (3, 8, 9, 3, 2, 1, [0, 0, 0, 1], 1),
    (2, 12, 23, 3, 3, 3, [1, 1, 1, 1], 1),
    # Stride 2 on a row under 16 columns with an odd left pad (EfficientNet's 14 -> 7),
    # and a stride-1 row under 4 columns: the interior copy's short-row branches.
    (3, 14, 14, 5, 5, 2, [1, 1, 2, 2], 1),
    (2, 5, 3, 3, 3, 1, [1, 1, 1, 1], 1),
    # Narrow stride-1 planes (rows of <= 16 outputs) read the input directly: 8-row
    # blocks plus a 1-7 row tail, asymmetric pads, exactly 16 columns.
    (4, 14, 14, 3, 3, 1, [1, 1, 1, 1], 1),
    (3, 7, 7, 5, 5, 1, [2, 2, 2, 2], 1),
    (2, 9, 12, 3, 3, 1, [0, 1, 1, 0], 1),
    (2, 20, 16, 5, 5, 1, [2, 2, 2, 2], 1),
    (2, 6, 18, 3, 3, 1, [0, 0, 0, 0], 1),
]
NARROW_DEPTHWISE = DEPTHWISE_CASES[-5:]


def _depthwise_model(c, h, w, kh, kw, stride, pads, dil, act):
    rng = np.random.default_rng(c * h + w)
    wt = rng.standard_normal((c, 1, kh, kw)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    oh = (h + pads[0] + pads[2] - dil * (kh - 1) - 1) // stride + 1
    ow = (w + pads[1] + pads[3] - dil * (kw - 1) - 1) // stride + 1
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="dw", group=c, kernel_shape=[kh, kw],
                              strides=[stride, stride], pads=pads, dilations=[dil, dil])]
    inits = {"W": wt, "B": b}
    if act:
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="relu6"))
        inits.update(lo=np.float32(0.0), hi=np.float32(6.0))
    else:
        nodes.append(helper.make_node("Identity", ["c"], ["y"], name="id"))
    return _onnx_model(nodes, inits, (c, h, w), (c, oh, ow))


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=lambda c: "x".join(map(str, c[:6])))
@pytest.mark.parametrize("act", [False, True])
def test_depthwise_shapes_match_ort(tmp_path, case, act):
    c, h, w, kh, kw, stride, pads, dil = case
    model = _depthwise_model(c, h, w, kh, kw, stride, pads, dil, act)
    onnx_path, erg_path = tmp_path / "dw.onnx", tmp_path / "dw.erg"
    onnx.save(model, onnx_path)
    erg.write_erg(model, erg_path)
    x = np.random.default_rng(1).standard_normal((2, c, h, w)).astype(np.float32)
    ref = OrtEngine(onnx_path).run(x)
    for threads in (1, 2):
        got = NativeEngine(erg_path, max_batch=2, threads=threads).run(x)
        assert_close(ref["y"], got["y"], f"depthwise {case} act={act} t{threads}")


_DW_PROBE = """
import json, sys, numpy as np
from edgerun.engine import NativeEngine
from edgerun import _core
def run(p):
    e = NativeEngine(p, max_batch=1)
    x = np.random.default_rng(3).standard_normal((1, *e.input_shapes[0][1:])).astype(np.float32)
    return e.run(x)["y"].ravel().tolist()
print(json.dumps({"gemm": _core.gemm_path(), "y": [run(p) for p in sys.argv[1:]]}))
"""


def _conv_model(cout, k, pads, stride=1, h=13, w=37, cin=5):
    rng = np.random.default_rng(cout + 100 * stride + w)
    wt = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    oh = (h + pads[0] + pads[2] - k) // stride + 1
    ow = (w + pads[1] + pads[3] - k) // stride + 1
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", kernel_shape=[k, k], pads=pads,
                              strides=[stride, stride]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="relu6")]
    inits = {"W": wt, "B": b, "lo": np.float32(0.0), "hi": np.float32(6.0)}
    return _onnx_model(nodes, inits, (cin, h, w), (cout, oh, ow))


# Stride-2 im2col (a vision model's stem): the vector row gathers (16 / 8 outputs per
# step) with tails, output widths below one vector, and pads that cut the first and
# last columns (TF "same" at stride 2 pads only after).
STRIDED_CONV_CASES = [  # (cout, k, pads, h, w)
    (8, 3, [1, 1, 1, 1], 9, 37),
    (6, 3, [0, 0, 1, 1], 11, 70),
    (5, 3, [1, 1, 1, 1], 7, 150),
    (4, 5, [2, 2, 2, 2], 6, 12),
    (3, 3, [0, 0, 0, 0], 5, 33),
]


@pytest.mark.parametrize("case", STRIDED_CONV_CASES, ids=lambda c: f"k{c[1]}w{c[4]}")
def test_stride2_conv_matches_ort(tmp_path, case):
    cout, k, pads, h, w = case
    model = _conv_model(cout, k, pads, stride=2, h=h, w=w, cin=3)
    onnx_path, erg_path = tmp_path / "c.onnx", tmp_path / "c.erg"
    onnx.save(model, onnx_path)
    erg.write_erg(model, erg_path)
    x = np.random.default_rng(2).standard_normal((2, 3, h, w)).astype(np.float32)
    ref = OrtEngine(onnx_path).run(x)
    for threads in (1, 2):
        got = NativeEngine(erg_path, max_batch=2, threads=threads).run(x)
        assert_close(ref["y"], got["y"], f"stride-2 conv {case} t{threads}")


def test_kernel_paths_agree(tmp_path):
    """AVX-512, AVX2 (EDGERUN_NO_AVX512) and portable (EDGERUN_FORCE_PORTABLE) GEMM,
    depthwise and stride-2 im2col paths give the same result (short row / column tiles,
    fused epilogue, row gather tails)."""
    import json
    import os
    import subprocess
    import sys

    models = [_depthwise_model(5, 13, 37, kh, kh, stride, pads, 1, True)
              for kh, stride, pads in [(3, 1, [1, 1, 1, 1]), (5, 2, [2, 2, 2, 2]), (3, 2, [0, 1, 1, 0])]]
    # Rows wider than the AVX-512 kernel's 64-column block, 4-row groups plus a tail row.
    models += [_depthwise_model(5, 13, 150, kh, kh, stride, [kh // 2] * 4, 1, True) for kh, stride in [(3, 1), (5, 2)]]
    # Stride 1 wider than a vector read straight from the plane (no padded copy): EfficientNet's
    # 28x28 5x5, rows of 17 and 33 outputs (a tail vector of 1), an asymmetric pad, no pad.
    models += [_depthwise_model(3, 28, 28, 5, 5, 1, [2, 2, 2, 2], 1, True),
               _depthwise_model(2, 6, 17, 3, 3, 1, [0, 1, 1, 0], 1, True),
               _depthwise_model(2, 9, 35, 3, 3, 1, [0, 0, 0, 0], 1, True),
               _depthwise_model(2, 5, 70, 5, 5, 1, [1, 2, 2, 1], 1, True)]
    models += [_depthwise_model(*case, True) for case in NARROW_DEPTHWISE]
    # Stride 2 read straight from the plane (no padded copy): an odd left pad on a row of
    # under 16 outputs, and EfficientNet's 28 -> 14 and 112 -> 56 (two 16-lane vectors).
    models += [_depthwise_model(3, 14, 14, 5, 5, 2, [1, 1, 2, 2], 1, True),
               _depthwise_model(4, 28, 28, 3, 3, 2, [1, 1, 1, 1], 1, True),
               _depthwise_model(2, 9, 112, 3, 3, 2, [0, 0, 1, 1], 1, True)]
    # Planes of <= 8 columns run two channels per vector: an odd channel count (the last
    # plane alone), 7x7 3x3 and 5x5, an asymmetric pad, 8 columns exactly.
    models += [_depthwise_model(5, 7, 7, 5, 5, 1, [2, 2, 2, 2], 1, True),
               _depthwise_model(4, 7, 7, 3, 3, 1, [1, 1, 1, 1], 1, True),
               _depthwise_model(3, 10, 8, 3, 3, 1, [0, 1, 1, 0], 1, True)]
    n_dw = len(models)
    models += [_conv_model(13, 3, [1, 1, 1, 1]), _conv_model(19, 1, [0, 0, 0, 0])]
    models += [_conv_model(c, k, pads, 2, h, w, 3) for c, k, pads, h, w in STRIDED_CONV_CASES]
    paths = []
    for i, m in enumerate(models):
        paths.append(str(tmp_path / f"m{i}.erg"))
        erg.write_erg(m, paths[-1])
    outs = {}
    for key, env_add in {"best": {}, "avx2": {"EDGERUN_NO_AVX512": "1"},
                         "portable": {"EDGERUN_FORCE_PORTABLE": "1"}}.items():
        env = {k: v for k, v in os.environ.items() if k not in ("EDGERUN_NO_AVX512", "EDGERUN_FORCE_PORTABLE")}
        r = subprocess.run([sys.executable, "-c", _DW_PROBE, *paths], env={**env, **env_add},
                           capture_output=True, text=True, check=True)
        outs[key] = json.loads(r.stdout.strip().splitlines()[-1])
    assert outs["portable"]["gemm"] == "portable"
    assert outs["avx2"]["gemm"] in ("avx2-fma", "portable")
    for key in ("avx2", "portable"):
        for i, (ref, got) in enumerate(zip(outs["best"]["y"], outs[key]["y"])):
            assert_close(np.array(ref), np.array(got), f"{key} vs {outs['best']['gemm']} model {i}")
    # The AVX-512 and AVX2 depthwise kernels sum the taps in the same order with FMAs.
    for i in range(n_dw):
        assert outs["best"]["y"][i] == outs["avx2"]["y"][i], f"depthwise model {i}: AVX-512 != AVX2 bits"


def test_profile_layers_reports_each_step_and_leaves_run_unchanged(tmp_path):
    """Per-step timing: one entry per step in run order, the depthwise kernel named as
    such; profiling is off again afterwards and never changes the outputs."""
    model = _depthwise_model(4, 9, 11, 3, 3, 1, [1, 1, 1, 1], 1, True)
    erg_path = tmp_path / "dw.erg"
    erg.write_erg(model, erg_path)
    eng = NativeEngine(erg_path, max_batch=1)
    x = np.random.default_rng(0).standard_normal((1, 4, 9, 11)).astype(np.float32)
    before = eng.run(x)["y"]
    steps = eng.profile_layers(x, runs=3, warmup=1)
    assert [s["kernel"] for s in steps][0] == "conv-dw"
    assert all(s["us"] > 0 for s in steps)
    np.testing.assert_array_equal(eng.run(x)["y"], before)
    with pytest.raises(ConfigError):
        eng.profile_layers(x, runs=0)
