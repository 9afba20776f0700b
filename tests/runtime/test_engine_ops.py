"""Ops a user's model brings that the engine runs natively since 2026-12-06: LeakyRelu,
Gelu (exact and tanh), nearest upsampling by integer factors (Resize / Upsample),
1-D convolution and pooling (sensor and audio models), Transpose, Slice, Split and
Softmax, Tanh, ELU, Softplus, Mish and PReLU, LayerNorm and the product of two activations
(a small vision transformer), GroupNorm and InstanceNorm, bilinear Resize, each against onnxruntime; and the settings the engine refuses (they fall back
to onnxruntime by name, or are refused at load when a file is damaged)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.engine import NativeEngine, OrtEngine
from edgerun.errors import BundleError
from edgerun.exporters import erg

from _models import (Activations, ClsViT, Detector, ImuNet, Norms, Seg, Shuffle, SumPool, TinyViT,  # noqa: E402
                     perturbed_export)

import torch  # noqa: E402
nn = torch.nn
F = torch.nn.functional

RTOL = 1e-4  # as tests/runtime/test_engine.py: summation order only; indexing bugs are O(1)


def _close(ref: np.ndarray, got: np.ndarray, what: str) -> None:
    assert ref.shape == got.shape, f"{what}: shape {got.shape} != {ref.shape}"
    err = float(np.abs(ref - got).max()) / max(float(np.abs(ref).max()), 1e-3)
    assert err <= RTOL, f"{what}: max error {err:.2e}"


def _export(module: nn.Module, example: torch.Tensor, tmp_path, name: str):
    model, _, _, info = perturbed_export(module, example, tmp_path, name)
    return model, info


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ops")
    return d, {"detector": (_export(Detector(), torch.randn(1, 3, 12, 10), d, "detector"), (3, 12, 10)),
               "imu": (_export(ImuNet(), torch.randn(1, 6, 50), d, "imu"), (6, 50)),
               "shuffle": (_export(Shuffle(), torch.randn(2, 8, 9, 12), d, "shuffle"), (8, 9, 12)),
               "activations": (_export(Activations(), torch.randn(1, 3, 10, 9), d, "activations"), (3, 10, 9)),
               "vit": (_export(TinyViT(), torch.randn(2, 3, 16, 16), d, "vit"), (3, 16, 16)),
               "norms": (_export(Norms(), torch.randn(2, 3, 12, 10), d, "norms"), (3, 12, 10)),
               "seg": (_export(Seg(), torch.randn(2, 3, 12, 10), d, "seg"), (3, 12, 10)),
               "clsvit": (_export(ClsViT(), torch.randn(2, 3, 16, 16), d, "clsvit"), (3, 16, 16)),
               "sumpool": (_export(SumPool(), torch.randn(2, 3, 6, 5), d, "sumpool"), (3, 6, 5))}


@pytest.mark.parametrize("name", ["detector", "imu", "shuffle", "activations", "vit", "norms", "seg", "clsvit",
                                  "sumpool"])
@pytest.mark.parametrize("batch, threads", [(1, 1), (3, 2)])
def test_user_models_run_natively_and_match_ort(models, name, batch, threads):
    d, table = models
    (model, info), shape = table[name]
    assert erg.check_native_support(model) == []  # before: LeakyRelu, Gelu, Resize, 1-D Conv refused
    x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
    ref = OrtEngine(d / f"{name}.onnx").run(x)
    got = NativeEngine(d / f"{name}.erg", max_batch=4, threads=threads).run(x)
    for k in ref:
        _close(ref[k], got[k], f"{name} b{batch} t{threads}")


def test_the_ops_are_the_engines_own(models):
    _, table = models
    assert {"LeakyRelu", "Gelu", "Resize"} <= set(table["detector"][0][1]["ops"])
    imu_ops = table["imu"][0][1]["ops"]
    assert imu_ops["Conv"] == 3 and imu_ops["MaxPool"] == 1 and imu_ops["AveragePool"] == 1
    assert {"Transpose", "Slice", "Softmax"} <= set(table["shuffle"][0][1]["ops"])
    assert {"Tanh", "Elu", "Softplus", "Mish", "PRelu"} <= set(table["activations"][0][1]["ops"])
    assert table["vit"][0][1]["ops"]["LayerNorm"] == 4 and table["vit"][0][1]["ops"]["MatMulAct"] == 4
    assert table["norms"][0][1]["ops"]["LayerNorm"] == 2  # GroupNorm and InstanceNorm
    assert table["seg"][0][1]["ops"]["ResizeLinear"] == 2  # the target size's Shape ops run nowhere
    # The class token's Expand (its Shape -> Concat target runs nowhere) and the two Gathers.
    cls_ops = table["clsvit"][0][1]["ops"]
    assert cls_ops["Expand"] == 1 and "Shape" not in cls_ops and "Gather" not in cls_ops
    assert table["sumpool"][0][1]["ops"]["ReduceMean"] == 3  # each ReduceSum: a mean times its count


def _one_node_model(node, in_shape, out_shape, inits=None, opset=20):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *in_shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *out_shape])
    g = helper.make_graph([node], "g", [x], [y],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


@pytest.mark.parametrize("node, in_shape, out_shape, inits, why", [
    (helper.make_node("Transpose", ["x"], ["y"], name="n", perm=[1, 0, 2]), (3, 4), (None, 3, 4)[1:], None,
     "batch"),
    (helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"], name="n"), (6,), (3,),
     {"s": np.array([5]), "e": np.array([0]), "a": np.array([1]), "st": np.array([-2])}, "positive steps"),
    (helper.make_node("Slice", ["x", "s", "e"], ["y"], name="n"), (6,), (6,),
     {"s": np.array([0, 1]), "e": np.array([1, 9])}, "batch dim"),
    (helper.make_node("Softmax", ["x"], ["y"], name="n", axis=0), (6,), (6,), None, "batch dim"),
    (helper.make_node("Softmax", ["x"], ["y"], name="n", axis=1), (4, 5), (4, 5), None, "opset 11"),
    (helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"], name="n"), (4, 5), (4, 5),
     {"g": np.ones(5, np.float32)}, "Mean"),
    (helper.make_node("Expand", ["x", "s"], ["y"], name="n"), (1, 4), (3, 4), {"s": np.array([1, 3, 4])},
     "an Expand of an activation"),
    (helper.make_node("ReduceSum", ["x", "a"], ["y"], name="n", keepdims=0), (4,), (4,)[1:], {"a": np.array([0])},
     "over the batch dim"),
    (helper.make_node("Gather", ["x", "i"], ["y"], name="n", axis=0), (4,), (4,), {"i": np.array(0)},
     "batch dim"),
    (helper.make_node("Gather", ["x", "i"], ["y"], name="n", axis=1), (5,), (3,), {"i": np.array([4, 0, 2])},
     "evenly spaced"),
    (helper.make_node("Gather", ["x", "i"], ["y"], name="n", axis=1), (5, 2), (2, 2, 2),
     {"i": np.array([[0, 1], [2, 3]])}, "evenly spaced"),
])
def test_data_movement_the_engine_does_not_run_falls_back_by_name(tmp_path, node, in_shape, out_shape, inits, why):
    m = _one_node_model(node, in_shape, out_shape, inits, opset=11 if "opset" in why else 20)
    if "mean" in node.output:  # a used Mean output
        m.graph.output.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, None))
    m = onnx.shape_inference.infer_shapes(m)
    assert erg.check_native_support(m) == [("n", node.op_type)]
    with pytest.raises(Exception, match=why):
        erg.write_erg(m, tmp_path / "m.erg")


def _resize_model(in_hw, out_hw, **attrs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, *in_hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, *out_hw])
    scales = np.array([1, 1, out_hw[0] / in_hw[0], out_hw[1] / in_hw[1]], np.float32)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", **attrs)
    g = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(scales, "scales")])
    return onnx.shape_inference.infer_shapes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=9))


@pytest.mark.parametrize("coord, rounding", sorted(erg._NEAREST_FLOOR))
@pytest.mark.parametrize("out_hw", [(8, 15), (12, 5)])
def test_every_accepted_resize_mode_is_floor_of_i_over_s(tmp_path, coord, rounding, out_hw):
    m = _resize_model((4, 5), out_hw, mode="nearest", coordinate_transformation_mode=coord, nearest_mode=rounding)
    onnx.save(m, tmp_path / "r.onnx")
    erg.write_erg(m, tmp_path / "r.erg")
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    ref = OrtEngine(tmp_path / "r.onnx").run(x)["y"]
    np.testing.assert_array_equal(NativeEngine(tmp_path / "r.erg", max_batch=2).run(x)["y"], ref)


@pytest.mark.parametrize("out_hw, attrs, why", [
    ((8, 10), {"mode": "cubic"}, "mode 'cubic'"),
    ((8, 10), {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}, "tf_crop_and_resize"),
    ((8, 10), {"mode": "nearest", "coordinate_transformation_mode": "align_corners"}, "align_corners"),
    ((8, 10), {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
               "nearest_mode": "round_prefer_floor"}, "round_prefer_floor"),
    ((6, 10), {"mode": "nearest"}, "integer upsampling"),
    ((2, 5), {"mode": "nearest"}, "integer upsampling"),
])
def test_other_resizes_fall_back_with_the_reason(tmp_path, out_hw, attrs, why):
    m = _resize_model((4, 5), out_hw, **attrs)
    assert erg.check_native_support(m) == [("rs", "Resize")]
    with pytest.raises(Exception, match=why):
        erg.write_erg(m, tmp_path / "r.erg")


def _damaged(tmp_path, model, slot: int, value: int):
    erg.write_erg(model, tmp_path / "ok.erg")
    data = bytearray((tmp_path / "ok.erg").read_bytes())
    at = erg.read_erg_header(tmp_path / "ok.erg")["nodes_off"] + 24 + 8 * slot  # the first node's iattr
    data[at: at + 8] = np.int64(value).tobytes()
    (tmp_path / "bad.erg").write_bytes(bytes(data))
    return tmp_path / "bad.erg"


@pytest.mark.parametrize("value", [0, 2, 1 << 40])  # zero, a factor that does not give 15 from 5, absurd
def test_a_damaged_resize_factor_is_refused_at_load(tmp_path, value):
    bad = _damaged(tmp_path, _resize_model((4, 5), (8, 15), mode="nearest"), 1, value)
    with pytest.raises(BundleError, match="scale factors|times the scale"):
        NativeEngine(bad)


@pytest.mark.parametrize("slot, value, why", [
    (0, 1, "permut|moves the batch"), (1, 1, "permut"), (2, 7, "permut")])
def test_a_damaged_transpose_is_refused_at_load(tmp_path, slot, value, why):
    m = _one_node_model(helper.make_node("Transpose", ["x"], ["y"], name="t", perm=[0, 2, 1]), (3, 4), (4, 3))
    with pytest.raises(Exception, match=why):
        NativeEngine(_damaged(tmp_path, m, slot, value))


@pytest.mark.parametrize("slot, value", [(1, 4), (1, -1), (1 + 6, 0), (1 + 6, 1 << 62), (0, 1)])
def test_a_damaged_slice_is_refused_at_load(tmp_path, slot, value):
    """starts at iattr 0..5, steps at 6..11: a start past the end or negative, a zero or huge
    step, or a start on the batch dim never reads outside the input."""
    node = helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"], name="s")
    m = _one_node_model(node, (6,), (3,), {"s": np.array([1]), "e": np.array([6]), "a": np.array([1]),
                                           "st": np.array([2])})
    with pytest.raises(Exception, match="inside the input|batch dim"):
        NativeEngine(_damaged(tmp_path, onnx.shape_inference.infer_shapes(m), slot, value))


def test_a_damaged_gelu_mode_is_refused_at_load(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 7])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 7])
    g = helper.make_graph([helper.make_node("Gelu", ["x"], ["y"], name="g")], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    with pytest.raises(BundleError, match="approximate"):
        NativeEngine(_damaged(tmp_path, m, 0, 2))


def test_an_int8_conv1d_front_rounds_and_runs(models, tmp_path):
    """GPTQ reads a Conv1d's input as [N, C, 1, L] columns and simulates it in ONNX with its
    own 3-D weight; the int8 engine stays within int8 error of onnxruntime's fp32."""
    from edgerun.exporters.quant_rounding import FrontRounder

    _, table = models
    (model, info), shape = table["imu"]
    x = np.random.default_rng(5).standard_normal((16, *shape)).astype(np.float32)
    prec = {n: "int8" for n in info["precisions"]}
    rounded = FrontRounder(model, x, 32).sequential(prec)
    erg.write_erg(model, tmp_path / "q.erg", precisions=prec, rounded=rounded)
    onnx.save(model, tmp_path / "q.onnx")
    ref = OrtEngine(tmp_path / "q.onnx").run(x[:4])
    got = NativeEngine(tmp_path / "q.erg", max_batch=4).run(x[:4])
    for k in ref:
        err = float(np.linalg.norm(ref[k] - got[k]) / np.linalg.norm(ref[k]))
        assert 0 < err < 0.05, f"int8 Conv1d relative error {err:.3g}"


def _resize_with(tmp_path, in_shape, out_shape, scales=None, sizes=None, opset=19):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *in_shape[1:]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [out_shape[0] or "batch", *out_shape[1:]])
    inits, ins = [], ["x", ""]
    if scales is not None:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        ins.append("scales")
    else:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        ins += ["", "sizes"]
    node = helper.make_node("Resize", ins, ["y"], name="rs", mode="nearest",
                            coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    g = helper.make_graph([node], "g", [x], [y], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                                                               ir_version=9))


@pytest.mark.parametrize("scales, sizes, out_shape", [
    ([1, 1, 2.1, 2.1], None, (None, 3, 8, 10)),  # torch interpolate(scale_factor=2.1): not a x2
    ([2, 1, 2, 2], None, (None, 3, 8, 10)),      # scales the batch
    (None, [2, 3, 8, 10], (2, 3, 8, 10)),        # sizes that fix the batch
])
def test_resizes_the_engine_would_get_wrong_fall_back(tmp_path, scales, sizes, out_shape):
    """Found by a bug hunt: each was written as an integer x2 upsample (wrong rows for 2.1, a lost
    batch for the others) or as a file the loader called corrupt."""
    m = _resize_with(tmp_path, (None, 3, 4, 5), out_shape, scales, sizes)
    assert erg.check_native_support(m) == [("rs", "Resize")]


def test_old_opset_slice_and_pad_fall_back_by_name():
    """Slice before opset 10 and Pad before 11 take attributes: an IndexError before."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    s = helper.make_node("Slice", ["x"], ["y"], name="sl", starts=[1], ends=[4], axes=[1])
    m = helper.make_model(helper.make_graph([s], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 9)],
                          ir_version=4)
    assert erg.check_native_support(m) == [("sl", "Slice")]
    y2 = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    p = helper.make_node("Pad", ["x"], ["y"], name="pd", pads=[0, 1, 0, 1])
    m = helper.make_model(helper.make_graph([p], "g", [x], [y2]), opset_imports=[helper.make_opsetid("", 2)],
                          ir_version=4)
    assert erg.check_native_support(m) == [("pd", "Pad")]


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_a_ceil_mode_window_in_the_padding_falls_back(op):
    """L=5, k=2, s=2, pad 1, ceil_mode: onnx's shape inference says 4, onnxruntime (and torch)
    compute 3. The engine followed the 4 and gave an extra column (-3.4e38 for MaxPool)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node(op, ["x"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2],
                            pads=[1, 1, 1, 1], ceil_mode=1)
    m = onnx.shape_inference.infer_shapes(helper.make_model(helper.make_graph([node], "g", [x], [y]),
                                                            opset_imports=[helper.make_opsetid("", 19)], ir_version=9))
    assert erg.check_native_support(m) == [("pool", op)]


def _activation_model(op: str, attrs: dict, n: int) -> onnx.ModelProto:
    if op == "SiLU":  # x * Sigmoid(x): the engine fuses it into one Silu op
        nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="a"), helper.make_node("Mul", ["x", "s"], ["y"], name="m")]
    else:
        nodes = [helper.make_node(op, ["x"], ["y"], name="a", **attrs)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 20)],
                             ir_version=9)


@pytest.mark.parametrize("op", ["Sigmoid", "SiLU", "Tanh", "Softplus", "Mish", "Elu"])
def test_small_activation_values_keep_their_relative_precision(tmp_path, op):
    """Found by a bug hunt: tanh(1e-8) came out 0 (1 - 2 / (exp(2v) + 1) cancels) and
    softplus(-20) 0 (1 + 2e-9 rounds to 1); now within 1e-5 relative of float64 numpy (onnxruntime
    itself gives 0 for sigmoid(-60), so it is not the reference here)."""
    x = np.concatenate([np.linspace(-60, 60, 1201), np.geomspace(1e-30, 1e-2, 60), -np.geomspace(1e-30, 1e-2, 60)]
                       ).astype(np.float32)[None]
    m = _activation_model(op, {}, x.shape[1])
    erg.write_erg(m, tmp_path / "a.erg")
    v = x.astype(np.float64)
    ref = {"Sigmoid": 1 / (1 + np.exp(-v)), "SiLU": v / (1 + np.exp(-v)), "Tanh": np.tanh(v),
           "Softplus": np.logaddexp(0, v), "Mish": v * np.tanh(np.logaddexp(0, v)),
           "Elu": np.where(v > 0, v, np.expm1(v))}[op]
    got = NativeEngine(tmp_path / "a.erg", max_batch=1).run(x)["y"].astype(np.float64)
    bad = np.abs(got - ref) > 1e-5 * np.abs(ref) + 1e-37
    assert not bad.any(), list(zip(x[bad], ref[bad], got[bad]))[:5]


@pytest.mark.parametrize("op, attrs", [("Sigmoid", {}), ("SiLU", {}), ("HardSigmoid", {}), ("HardSwish", {}), ("Tanh", {}),
                                       ("LeakyRelu", {"alpha": 0.1}), ("Elu", {"alpha": 0.7}), ("Softplus", {}),
                                       ("Mish", {}), ("Gelu", {}), ("Gelu", {"approximate": "tanh"})])
def test_activations_match_onnxruntime_over_the_whole_float_range(tmp_path, op, attrs):
    """The activations run on the engine's own vectorized exp / log / erf (std::exp was a scalar
    call, 2-14 ns per element): values from -200 to 200, tiny ones, +-0, +-inf and NaN give
    onnxruntime's answer within 2e-6 absolute, and its NaN / inf in the same places."""
    x = np.concatenate([np.linspace(-200, 200, 4001), np.geomspace(1e-30, 1e-3, 50), -np.geomspace(1e-30, 1e-3, 50),
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 87.5, -87.5, 88.8, -88.8, 3e38, -3e38, 1e30, -1e30]]
                       ).astype(np.float32)[None]
    m = _activation_model(op, attrs, x.shape[1])
    onnx.save(m, tmp_path / "a.onnx")
    erg.write_erg(m, tmp_path / "a.erg")
    ref = OrtEngine(tmp_path / "a.onnx").run(x)["y"]
    got = NativeEngine(tmp_path / "a.erg", max_batch=1).run(x)["y"]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(got[np.isinf(ref)], ref[np.isinf(ref)])
    fin = np.isfinite(ref)
    assert float(np.abs(got[fin] - ref[fin]).max()) <= 2e-6 * max(1.0, float(np.abs(ref[fin]).max()) / 100)


@pytest.mark.parametrize("coord", ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"])
@pytest.mark.parametrize("in_hw, scales", [((4, 5), (2.0, 3.0)), ((6, 9), (0.5, 1.7)), ((1, 7), (3.0, 0.3))])
def test_bilinear_resize_matches_onnxruntime_in_every_coordinate_mode(tmp_path, coord, in_hw, scales):
    out_hw = tuple(int(np.floor(i * np.float32(s))) for i, s in zip(in_hw, scales))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, *in_hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, *out_hw])
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", mode="linear",
                            coordinate_transformation_mode=coord)
    g = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(np.array([1, 1, *scales], np.float32), "scales")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.save(m, tmp_path / "r.onnx")
    erg.write_erg(m, tmp_path / "r.erg")
    xx = np.random.default_rng(0).standard_normal((2, 3, *in_hw)).astype(np.float32)
    _close(OrtEngine(tmp_path / "r.onnx").run(xx)["y"], NativeEngine(tmp_path / "r.erg", max_batch=2).run(xx)["y"],
           f"linear {coord} {in_hw} x {scales}")


class _FoldBatch(nn.Module):
    """reshape(n * h * w, c): per-pixel rows for a Linear, the batch folded into them."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.c(x)
        n, c, h, w = y.shape
        return self.fc(y.permute(0, 2, 3, 1).reshape(n * h * w, c)).reshape(n, h * w * 2)


def test_a_reshape_that_folds_the_batch_falls_back_by_name(tmp_path):
    """The engine's first dim is the batch: such a Reshape was written as an alias and the loader
    then refused the file as corrupt; now the exporter names it and the front runs on onnxruntime."""
    model, _ = _export_only(_FoldBatch(), torch.randn(2, 3, 5, 5))
    bad = erg.check_native_support(model)
    assert bad and {op for _, op in bad} == {"Reshape"}


def _export_only(module, example):
    from edgerun.exporters.trace import to_onnx

    torch.manual_seed(0)
    return to_onnx(module.eval(), example), None


def test_resize_10_and_aspect_keeping_resizes_fall_back_by_name():
    """Found by a bug hunt: Resize-10 takes (X, scales) with asymmetric coordinates (written as
    half-pixel, or its 2.1 scale as x2), and keep_aspect_ratio_policy makes one scale of two sizes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 8, 10])
    sc = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    old = helper.make_model(helper.make_graph([helper.make_node("Resize", ["x", "scales"], ["y"], name="rs", mode="linear")],
                                              "g", [x], [y], [sc]), opset_imports=[helper.make_opsetid("", 10)], ir_version=5)
    assert erg.check_native_support(old) == [("rs", "Resize")]
    sizes = numpy_helper.from_array(np.array([8, 10], np.int64), "sizes")
    keep = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="rs", mode="linear", axes=[2, 3],
                            keep_aspect_ratio_policy="not_larger")
    m = helper.make_model(helper.make_graph([keep], "g", [x], [y], [sizes]), opset_imports=[helper.make_opsetid("", 19)],
                          ir_version=9)
    assert erg.check_native_support(m) == [("rs", "Resize")]


class _TwoExpands(nn.Module):
    """One class token expanded to two shapes (found by a bug hunt: the two one-sample constants
    shared a name, and the file was refused at load as corrupt)."""

    def __init__(self):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x):
        n = x.shape[0]
        return torch.cat([self.cls.expand(n, 1, 8), x, self.cls.expand(n, 3, 8)], 1)


def test_one_constant_expanded_to_two_shapes_runs_natively(tmp_path):
    model, info = _export(_TwoExpands(), torch.randn(2, 5, 8), tmp_path, "two")
    assert info["ops"]["Expand"] == 2
    x = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)
    ref = OrtEngine(tmp_path / "two.onnx").run(x)
    got = NativeEngine(tmp_path / "two.erg", max_batch=4).run(x)
    for k in ref:
        _close(ref[k], got[k], "two expands")


def _expand_graph(nodes, inits, out_dim0="N", value_info=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [out_dim0, 5, 8])], inits,
                          value_info=list(value_info))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_an_expand_to_a_first_dim_that_is_not_the_batch_falls_back(tmp_path):
    """Expand to 2 * N: its first dim is dynamic but not the batch (the engine gave N rows)."""
    i64 = lambda v, n: numpy_helper.from_array(np.array(v, np.int64), n)  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Mul", ["n", "two"], ["n2"]), helper.make_node("Unsqueeze", ["n2", "ax0"], ["n2u"]),
             helper.make_node("Concat", ["n2u", "td"], ["shp"], axis=0),
             helper.make_node("Expand", ["c", "shp"], ["y"], name="ex")]
    inits = [numpy_helper.from_array(np.ones((1, 5, 8), np.float32), "c"), i64(0, "zero"), i64(2, "two"),
             i64([0], "ax0"), i64([5, 8], "td")]
    m = _expand_graph(nodes, inits, out_dim0="M")
    assert erg.check_native_support(m) == [("ex", "Expand")]
    with pytest.raises(Exception, match=r"first dim \(M\) is not the input's batch \(N\)"):
        erg.write_erg(m, tmp_path / "m.erg")


def test_an_initializer_named_like_a_synthetic_weight_keeps_its_values(tmp_path):
    r = np.random.default_rng(0)
    inits = [numpy_helper.from_array(r.standard_normal((1, 5, 8)).astype(np.float32), "c"),
             numpy_helper.from_array(r.standard_normal((1, 5, 8)).astype(np.float32), "e::one")]
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Expand", ["c", "s"], ["e"]),
             helper.make_node("Mul", ["x", "e::one"], ["m"]), helper.make_node("Add", ["m", "e"], ["y"])]
    m = _expand_graph(nodes, inits, value_info=[helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 5, 8])])
    onnx.save(m, tmp_path / "m.onnx")
    erg.write_erg(m, tmp_path / "m.erg")
    x = r.standard_normal((2, 5, 8)).astype(np.float32)
    _close(OrtEngine(tmp_path / "m.onnx").run(x)["y"], NativeEngine(tmp_path / "m.erg", max_batch=4).run(x)["y"],
           "name clash")


@pytest.mark.parametrize("shape, axis", [((21, 20, 20), 1), ((5, 6, 7), 1), ((5, 6, 7), 2), ((300, 3), 1)])
def test_softmax_over_a_middle_dim_matches_ort_and_any_thread_count(tmp_path, shape, axis):
    """Class scores per pixel (softmax over C of NCHW) run a block of columns at a time when there
    are 8 or more (983 -> 54 us for 21x64x64), one column at a time below that: the same bits."""
    m = _one_node_model(helper.make_node("Softmax", ["x"], ["y"], axis=axis), shape, shape, opset=18)
    onnx.save(m, tmp_path / "m.onnx")
    erg.write_erg(m, tmp_path / "m.erg")
    x = (np.random.default_rng(0).standard_normal((3, *shape)) * 5).astype(np.float32)
    one = NativeEngine(tmp_path / "m.erg", max_batch=3, threads=1).run(x)["y"]
    two = NativeEngine(tmp_path / "m.erg", max_batch=3, threads=2).run(x)["y"]
    assert np.array_equal(one, two)
    _close(OrtEngine(tmp_path / "m.onnx").run(x)["y"], one, f"softmax {shape} axis {axis}")
