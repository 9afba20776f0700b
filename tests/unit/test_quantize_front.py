"""Weight quantization formats (numpy) and the front-half precision planner."""

from __future__ import annotations

import numpy as np
import pytest

from edgerun.errors import ConfigError, ExportError
from edgerun.exporters import erg_quant as q
from edgerun.exporters.quantize_front import FrontPrecisionConfig, _auto

# Round-to-nearest quantization error bound: half a step of the scale.
HALF_STEP = 0.5 + 1e-6


def test_int8_per_channel_round_trip_and_zero_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 27)).astype(np.float32) * np.arange(1, 6, dtype=np.float32)[:, None]
    w[2] = 0.0
    qv, s = q.quantize_int8(w)
    assert qv.dtype == np.int8 and np.abs(qv).max() <= 127 and np.all(s > 0)
    assert np.all(qv[2] == 0)
    back = q.dequantize(q.DTYPE_INT8, qv, s, k=27)
    assert np.all(np.abs(back - w) <= HALF_STEP * s[:, None])
    assert np.all(back[2] == 0.0)


@pytest.mark.parametrize("k,gs", [(27, 32), (64, 32), (9, 2), (100, 16)])
def test_int4_groupwise_round_trip(k, gs):
    rng = np.random.default_rng(k)
    w = rng.standard_normal((4, k)).astype(np.float32)
    packed, s = q.quantize_int4(w, gs)
    groups = -(-k // gs)
    assert packed.shape == (4, groups * gs // 2) and s.shape == (4, groups)
    back = q.dequantize(q.DTYPE_INT4, packed, s, k=k, group_size=gs)
    step = np.repeat(s, gs, axis=1)[:, :k]
    assert np.all(np.abs(back - w) <= HALF_STEP * step)
    assert q.weight_bytes("int4", 4, k, gs) == packed.nbytes + s.nbytes


def test_bad_group_size_and_config():
    for gs in (0, 3, 5000, 2.5):
        with pytest.raises(ConfigError):
            q.check_group_size(gs)
    with pytest.raises(ConfigError):
        FrontPrecisionConfig(mode="int3")
    with pytest.raises(ConfigError):
        FrontPrecisionConfig(mode="auto", max_device_mem_mb=0)
    with pytest.raises(ConfigError):
        FrontPrecisionConfig(mode="int8", max_device_mem_mb=1.0)
    # "auto" without a budget used to keep every layer fp32 without a word.
    with pytest.raises(ConfigError, match="--max-device-mem-mb"):
        FrontPrecisionConfig(mode="auto")
    with pytest.raises(ConfigError):
        FrontPrecisionConfig(group_size=7)
    with pytest.raises(ConfigError, match="activation precision"):
        FrontPrecisionConfig(mode="int8", act="int4")


def _layers():
    return [{"name": "a", "rows": 64, "k": 64, "depthwise": False},
            {"name": "b", "rows": 64, "k": 64, "depthwise": False}]


def test_auto_moves_least_sensitive_per_byte_first():
    sens = {"a": {"int8": 0.001, "int4": 0.01}, "b": {"int8": 0.1, "int4": 0.5}}
    fp32 = q.weight_bytes("fp32", 64, 64)
    # room for one fp32 layer + one int8 layer: only the insensitive layer "a" moves
    budget = fp32 + q.weight_bytes("int8", 64, 64)
    assert _auto(_layers(), sens, 0, 0, budget, 32) == {"a": "int8", "b": "fp32"}
    # generous budget: nothing moves
    assert _auto(_layers(), sens, 0, 0, 2 * fp32, 32) == {"a": "fp32", "b": "fp32"}


def test_auto_raises_with_smallest_reachable():
    sens = {"a": {"int8": 0.0, "int4": 0.0}, "b": {"int8": 0.0, "int4": 0.0}}
    # "cannot fit 0.000 MiB ... raise max_device_mem_mb": the budget printed as 0, an option named that no command has
    with pytest.raises(ExportError, match=r"cannot fit 9\.537e-06 MiB: the smallest reachable is .* raise "
                                          r"--max-device-mem-mb to at least 0\.0"):
        _auto(_layers(), sens, 1000, 0, 10, 32)


def _conv_net():
    """conv 3x3 (3->16) -> Relu -> conv 1x1 (16->48) -> Relu -> conv 1x1 (48->8): small K
    layers and one with K = 48, just above the engine's int8 GEMM threshold (kS8MinK = 40,
    mirrored by quant_rounding's default act_quant_min_k)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits = {"w1": rng.standard_normal((16, 3, 3, 3)) * 0.4, "b1": rng.standard_normal(16) * 0.1,
             "w2": rng.standard_normal((48, 16, 1, 1)) * 0.3, "w3": rng.standard_normal((8, 48, 1, 1)) * 0.2}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="c2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
             helper.make_node("Conv", ["r2", "w3"], ["y"], name="c3")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8])],
                          [numpy_helper.from_array(a.astype(np.float32), n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    return m


@pytest.mark.runtime
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_plan_with_data_aware_rounding_is_not_worse(mode, tmp_path):
    from edgerun.engine import NativeEngine
    from edgerun.exporters.erg import write_erg
    from edgerun.exporters.quantize_front import plan_front_precision

    front = _conv_net()
    calib = (np.random.default_rng(8).standard_normal((24, 3, 8, 8)) + 0.5).astype(np.float32)
    plans = {r: plan_front_precision(front, calib, FrontPrecisionConfig(mode, 32, rounding=r))
             for r in ("rtn", "gptq")}
    assert plans["rtn"].rounded == {} and set(plans["gptq"].rounded) == {"c1", "c2", "c3"}
    assert plans["gptq"].error <= plans["rtn"].error, (plans["gptq"].error, plans["rtn"].error)
    assert "gptq rounding" in plans["gptq"].table()
    p = plans["gptq"]
    write_erg(front, tmp_path / "f.erg", precisions=p.precisions, rounded=p.rounded)
    out = NativeEngine(tmp_path / "f.erg", max_batch=4).run(calib[:4])
    assert np.all(np.isfinite(next(iter(out.values()))))
    with pytest.raises(ConfigError):
        FrontPrecisionConfig("int8", rounding="awq")


@pytest.mark.runtime
def test_fp32_activations_plan_matches_its_simulation(tmp_path):
    """act="fp32": every int8 Conv is marked to run on fp32 activations, the rounding does
    not emulate activation quantization, and the engine then computes what the rounding
    simulated (no 8-bit activation error left between them)."""
    import onnxruntime as ort

    from edgerun.engine import NativeEngine
    from edgerun.exporters.erg import write_erg
    from edgerun.exporters.quant_rounding import FrontRounder, RoundingConfig
    from edgerun.exporters.quantize_front import plan_front_precision

    front = _conv_net()
    x = (np.random.default_rng(9).standard_normal((16, 3, 8, 8)) + 0.5).astype(np.float32)
    plans = {a: plan_front_precision(front, x, FrontPrecisionConfig("int8", act=a)) for a in ("int8", "fp32")}
    assert plans["int8"].fp32_acts == [] and plans["fp32"].fp32_acts == ["c1", "c2", "c3"]
    assert "activations: fp32 on 3" in plans["fp32"].table()
    p = plans["fp32"]
    write_erg(front, tmp_path / "f.erg", precisions=p.precisions, rounded=p.rounded, fp32_acts=p.fp32_acts)
    eng = NativeEngine(tmp_path / "f.erg", max_batch=16).run(x)["y"]
    sim_model = FrontRounder(front, x, 32, RoundingConfig(act_quant_min_k=None))._model(p.rounded, ["y"])
    sim = ort.InferenceSession(sim_model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert float(np.abs(sim - eng).max() / np.abs(eng).max()) <= SIM_VS_ENGINE_TOL


# The rounding's onnxruntime simulation (with the engine's 8-bit activation quantization
# emulated) must reproduce the native engine's int8 outputs up to float rounding and the
# rare activation rounding tie; relative to the output's max magnitude.
SIM_VS_ENGINE_TOL = 1e-4


@pytest.mark.runtime
def test_rounding_simulation_matches_the_native_engine(tmp_path):
    import onnxruntime as ort

    from edgerun.engine import NativeEngine
    from edgerun.exporters.erg import write_erg
    from edgerun.exporters.quant_rounding import FrontRounder, RoundingConfig

    front = _conv_net()
    x = (np.random.default_rng(9).standard_normal((16, 3, 8, 8)) + 0.5).astype(np.float32)
    # c3 (K = 48) runs the int8 GEMM; this fails if the engine's kS8MinK leaves 40..48
    prec = {"c1": "int8", "c2": "int8", "c3": "int8"}
    errs = {}
    for min_k in (40, None):
        r = FrontRounder(front, x, 32, RoundingConfig(act_quant_min_k=min_k))
        rounded = r.sequential(prec)
        sim = ort.InferenceSession(r._model(rounded, ["y"]), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]
        write_erg(front, tmp_path / "f.erg", precisions=prec, rounded=rounded)
        eng = NativeEngine(tmp_path / "f.erg", max_batch=16).run(x)["y"]
        errs[min_k] = float(np.abs(sim - eng).max() / np.abs(eng).max())
    assert errs[40] <= SIM_VS_ENGINE_TOL < errs[None], errs


@pytest.mark.runtime
@pytest.mark.parametrize("prec", ["int8", "int4"])
def test_rounded_gemm_and_matmul_layers_match_the_engine(prec, tmp_path):
    """Gemm (transB, alpha, beta folded by the converter) and MatMul + Add layers."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgerun.engine import NativeEngine
    from edgerun.exporters.erg import write_erg
    from edgerun.exporters.quant_rounding import FrontRounder

    rng = np.random.default_rng(11)
    inits = {"B": rng.standard_normal((16, 48)), "C": rng.standard_normal(16),
             "M": rng.standard_normal((16, 8)), "A": rng.standard_normal(8)}
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "B", "C"], ["g"], name="gemm", transB=1, alpha=0.5, beta=2.0),
             helper.make_node("Relu", ["g"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "M"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "A"], ["y"], name="add")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    x = rng.standard_normal((64, 3, 4, 4)).astype(np.float32)
    r = FrontRounder(m, x, 16)
    rounded = r.sequential({"gemm": prec, "mm": prec})
    sim = ort.InferenceSession(r._model(rounded, ["y"]), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    write_erg(m, tmp_path / "g.erg", precisions={"gemm": prec, "mm": prec}, group_size=16, rounded=rounded)
    eng = NativeEngine(tmp_path / "g.erg", max_batch=64).run(x)["y"]
    assert np.abs(sim - eng).max() <= SIM_VS_ENGINE_TOL * np.abs(eng).max()
