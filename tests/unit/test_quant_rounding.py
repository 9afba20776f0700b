"""Data-aware weight rounding (GPTQ + bias correction): format, error, determinism."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun.errors import ConfigError, ExportError
from edgerun.exporters import erg
from edgerun.exporters import erg_quant as q
from edgerun.exporters.quant_rounding import FrontRounder, RoundingConfig, round_matrix, to_stored

# GPTQ minimises the layer output error, so on correlated inputs it must beat plain
# rounding clearly; it is allowed to reach at most this fraction of RTN's error.
GPTQ_MAX_FRACTION_OF_RTN = 0.8
# After bias correction the mean output error per channel is 0 up to float rounding of
# the calibration statistics (relative to the output's rms).
MEAN_ERR_TOL = 1e-5


def _correlated(rng, n: int, k: int) -> np.ndarray:
    """Inputs with strongly correlated features and a non-zero mean (like activations)."""
    mix = rng.standard_normal((k, k)) * 0.3 + np.eye(k)
    return (rng.standard_normal((n, 4)) @ rng.standard_normal((4, k)) * 2.0
            + rng.standard_normal((n, k)) @ mix + 0.5).astype(np.float32)


def _out_err(w, wq, x):
    return float(np.mean(((x @ (w - wq).T) ** 2)))


@pytest.mark.parametrize("prec", ["int8", "int4"])
def test_gptq_beats_round_to_nearest_and_keeps_format(prec):
    rng = np.random.default_rng(1)
    rows, k, gs = 24, 72, 32
    w = rng.standard_normal((rows, k)).astype(np.float32)
    x = _correlated(rng, 4000, k)
    h = (x.T.astype(np.float64) @ x / len(x))[None]
    errs = {}
    for method in ("rtn", "gptq"):
        qi, s = round_matrix(prec, w[None], h, gs, RoundingConfig(method=method))
        qv, sc = to_stored(prec, qi, s, k, gs)
        if prec == "int8":
            assert qv.dtype == np.int8 and qv.shape == (rows, k) and np.abs(qv).max() <= 127
        else:
            assert qv.dtype == np.uint8 and qv.shape == (rows, 3 * gs // 2) and sc.shape == (rows, 3)
        assert np.all(sc > 0) and np.all(np.isfinite(sc))
        wq = q.dequantize(q.PREC_DTYPE[prec], qv, sc, k=k, group_size=gs)
        errs[method] = _out_err(w, wq, x)
    assert errs["gptq"] <= GPTQ_MAX_FRACTION_OF_RTN * errs["rtn"], errs


def test_rtn_without_data_is_the_reference_quantizer():
    w = np.random.default_rng(2).standard_normal((5, 40)).astype(np.float32)
    for prec in ("int8", "int4"):
        qi, s = round_matrix(prec, w[None], None, 16)
        qv, sc = to_stored(prec, qi, s, 40, 16)
        ref_q, ref_s = q.quantize(prec, w, 16)
        assert np.array_equal(qv, ref_q) and np.array_equal(sc, ref_s)


def test_bad_rounding_config():
    for kw in ({"method": "awq"}, {"damp": -1.0}, {"clip_ratios": ()}, {"clip_ratios": (1.5,)},
               {"chunk": 0}):
        with pytest.raises(ConfigError):
            RoundingConfig(**kw)


def _two_convs(rng) -> onnx.ModelProto:
    """A regular 3x3 conv (with bias) -> ReLU -> a depthwise 3x3 conv (no bias)."""
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5
    b1 = rng.standard_normal(8).astype(np.float32) * 0.1
    w2 = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="dw", pads=[1, 1, 1, 1], group=8)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 10, 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 10, 10])],
                          [numpy_helper.from_array(a, n) for n, a in {"w1": w1, "b1": b1, "w2": w2}.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10  # what the installed onnxruntime reads
    return m


def _ort_out(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def _calib(rng, n=16) -> np.ndarray:
    return (rng.standard_normal((n, 3, 10, 10)) + 0.7).astype(np.float32)


def test_bias_correction_zeroes_the_mean_output_error():
    rng = np.random.default_rng(3)
    model, x = _two_convs(rng), _calib(rng)
    ref = _ort_out(model, x)
    prec = {"conv1": "int4", "dw": "int4"}  # coarse, so the uncorrected mean error is visible
    means = {}
    for bc in (False, True):
        r = FrontRounder(model, x, 16, RoundingConfig(method="rtn", bias_correction=bc))
        rounded = r.sequential(prec)
        out = ort.InferenceSession(r._model(rounded, ["y"]), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]
        means[bc] = np.abs((out - ref).mean(axis=(0, 2, 3))).max() / np.sqrt(np.mean(ref ** 2))
    assert means[True] <= MEAN_ERR_TOL < means[False]
    assert rounded["dw"].bias is not None and rounded["dw"].bias.shape == (8,)


def test_rounded_weights_write_deterministic_erg(tmp_path):
    rng = np.random.default_rng(4)
    model, x = _two_convs(rng), _calib(rng)
    prec = {"conv1": "int8", "dw": "int8"}
    blobs = []
    for i in range(2):
        rounded = FrontRounder(model, x, 32).sequential(prec)
        erg.write_erg(model, tmp_path / f"m{i}.erg", precisions=prec, rounded=rounded)
        blobs.append((tmp_path / f"m{i}.erg").read_bytes())
    assert blobs[0] == blobs[1]
    for r in rounded.values():  # decodes with the reference dequantize
        assert np.abs(r.q.astype(np.int16)).max() <= 127 and np.all(r.scales > 0)
        assert r.dequantized().shape == (8, r.k)


def test_rounded_weights_must_match_the_precisions(tmp_path):
    rng = np.random.default_rng(5)
    model, x = _two_convs(rng), _calib(rng)
    rounded = FrontRounder(model, x, 32).sequential({"conv1": "int8"})
    with pytest.raises(ExportError, match="do not match"):
        erg.write_erg(model, tmp_path / "a.erg", precisions={"conv1": "int4"}, rounded=rounded)
    with pytest.raises(ExportError, match="not quantized"):
        erg.write_erg(model, tmp_path / "b.erg", precisions={"dw": "int8"}, rounded=rounded)
    with pytest.raises(ExportError, match="calibration"):
        FrontRounder(model, x[:0], 32)


def test_sequential_gptq_output_error_not_worse_than_rtn():
    rng = np.random.default_rng(6)
    model, x = _two_convs(rng), _calib(rng, 32)
    ref = _ort_out(model, x)
    prec = {"conv1": "int4", "dw": "int8"}
    err = {}
    for method in ("rtn", "gptq"):
        r = FrontRounder(model, x, 16, RoundingConfig(method=method, bias_correction=False))
        out = ort.InferenceSession(r._model(r.sequential(prec), ["y"]), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]
        err[method] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    assert err["gptq"] <= err["rtn"], err


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_alone_rounding_of_an_int8_gemm_layer(method):
    """A layer the engine runs on its int8 GEMM (K >= 40: quantized activations emulated)."""
    rng = np.random.default_rng(10)
    w = rng.standard_normal((4, 48, 1, 1)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="pw")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 48, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 4, 4])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    x = np.abs(rng.standard_normal((8, 48, 4, 4))).astype(np.float32)
    r = FrontRounder(m, x, 32, RoundingConfig(method=method)).alone("pw", "int8")
    assert r.q.shape == (4, 48) and r.bias is not None and np.all(np.isfinite(r.bias))


# The emulated run-time activation quantization is within half a step (max - min) / 255 / 2
# of each value, up to float32 rounding of u * step + min (relative to the value).
ACT_HALF_STEP_SLACK = 1.0 + 1e-3
ACT_FLOAT_RTOL = 1e-6


def test_act_quant_emulation_is_per_pixel_asymmetric_8_bit():
    from edgerun.exporters.quant_rounding import ACT_QMAX, _act_quant

    rng = np.random.default_rng(12)
    cols = rng.standard_normal((5, 2, 50)).astype(np.float32)
    cols[1] = np.clip(cols[1] * 3, 0, 6)  # ReLU6-like: the full 0..255 code on [0, max]
    cols[2] += 100.0                      # far from 0
    cols[3] = 2.5                         # constant pixel: exact (u = 0, x = min)
    cols[4] = 0.0
    q = _act_quant(cols)
    mn, mx = cols.min(-1, keepdims=True), cols.max(-1, keepdims=True)
    half = (mx - mn) / ACT_QMAX / 2 * ACT_HALF_STEP_SLACK
    assert np.all(np.abs(q - cols) <= half + ACT_FLOAT_RTOL * np.abs(cols))
    np.testing.assert_array_equal(q.min(-1), mn[..., 0])  # the minimum is code 0: exact
    np.testing.assert_array_equal(q[3:], cols[3:])
    assert q.dtype == np.float32


# GPTQ in order of decreasing H_jj ("act-order") must lower the output error e H e^T of
# int8 per-channel rounding on inputs whose feature scales differ a lot; measured 0.75
# (one group) and 0.85 (depthwise-like groups) of the natural order's error at these seeds.
ACT_ORDER_MAX_FRACTION = 0.95


def _uneven_h(rng, groups: int, k: int) -> np.ndarray:
    hs = []
    for _ in range(groups):
        mix = rng.standard_normal((k, k)) * 0.3 + np.diag(rng.uniform(0.1, 3.0, k))
        x = rng.standard_normal((4000, k)) @ mix + 0.5
        hs.append(x.T @ x / len(x))
    return np.stack(hs)


@pytest.mark.parametrize("groups,rows,k", [(1, 24, 72), (5, 1, 9)])
def test_act_order_lowers_int8_output_error(groups, rows, k):
    rng = np.random.default_rng(20)
    w = rng.standard_normal((groups, rows, k)).astype(np.float32)
    h = _uneven_h(rng, groups, k)
    err, out = {}, {}
    for ao in (False, True):
        qi, s = round_matrix("int8", w, h, 32, RoundingConfig(act_order=ao))
        e = w - qi * s[..., None]
        err[ao] = float(np.sum(np.matmul(e, h) * e))
        out[ao] = (qi, s)
        assert np.abs(qi).max() <= 127 and np.all(s > 0)
    assert err[True] <= ACT_ORDER_MAX_FRACTION * err[False], err
    again = round_matrix("int8", w, h, 32, RoundingConfig(act_order=True))  # deterministic
    assert np.array_equal(again[0], out[True][0]) and np.array_equal(again[1], out[True][1])


# With bias correction the mean output error is removed anyway, so GPTQ on the centred
# second moment (center=1) must leave a smaller output error than on E[x x^T] when the
# inputs have a large mean; measured 0.77-0.85 of it over seeds 21-23 (1x1 conv, K=32).
CENTER_MAX_FRACTION = 0.9


def test_centering_lowers_error_after_bias_correction():
    rng = np.random.default_rng(22)
    k, o = 32, 16
    w = rng.standard_normal((o, k, 1, 1)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="pw")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", k, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", o, 6, 6])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    latent = rng.standard_normal((64, 4, 6, 6))  # correlated features with a large mean
    x = (np.einsum("nlhw,lk->nkhw", latent, rng.standard_normal((4, k)))
         + 0.3 * rng.standard_normal((64, k, 6, 6)) + rng.uniform(2, 5, (1, k, 1, 1))).astype(np.float32)
    ref = _ort_out(model, x)
    err = {}
    for c in (0.0, 1.0):
        r = FrontRounder(model, x, 32, RoundingConfig(center=c, act_order=False))
        out = ort.InferenceSession(r._model(r.sequential({"pw": "int8"}), ["y"]),
                                   providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        err[c] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    assert err[1.0] <= CENTER_MAX_FRACTION * err[0.0], err


def test_bad_center_and_defaults():
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError):
            RoundingConfig(center=bad)
    d = RoundingConfig()  # the measured defaults (benchmarks/results/quant.md)
    assert d.center == 1.0 and d.act_order and d.bias_correction and d.fp32_target


def test_a_layer_whose_gptq_statistics_would_not_fit_is_rounded_to_nearest(monkeypatch):
    """GPTQ keeps G x k x k float64 statistics per layer: a 5x5 conv on ~600 channels (k = 14,950)
    took 19 GB before. Above quant_stats.MAX_H_BYTES the layer gets no statistics, so it is rounded
    to nearest (round_matrix with h=None), and the mean for the bias correction is still kept."""
    from edgerun.exporters import quant_stats

    cols = np.random.default_rng(0).standard_normal((64, 1, 40)).astype(np.float32)  # [P, G, k]
    kept = quant_stats._Stats()
    kept.add(cols, with_h=True, cols_f=cols)
    assert kept.done().h.shape == (1, 40, 40) and kept.cross is not None
    monkeypatch.setattr(quant_stats, "MAX_H_BYTES", 1 * 40 * 40 * 8 - 1)
    big = quant_stats._Stats()
    big.add(cols, with_h=True, cols_f=cols)
    big.done()
    assert big.h is None and big.cross is None
    np.testing.assert_allclose(big.mean, kept.mean)


def test_the_layers_rounded_to_nearest_instead_of_gptq_are_named(monkeypatch):
    """A layer past MAX_H_BYTES is rounded to nearest silently unless the export says which: each
    RoundedLayer records its method, and the plan names the fallbacks in its printed table and in
    what report.json carries (``front_rounding``)."""
    from edgerun.exporters import quant_stats
    from edgerun.exporters.quantize_front import PrecisionPlan

    rng = np.random.default_rng(11)
    model, x = _two_convs(rng), _calib(rng)
    # conv1's statistics are 1 x 27 x 27 float64 (5,832 B), dw's 8 x 9 x 9 (5,184 B): only conv1 falls back
    monkeypatch.setattr(quant_stats, "MAX_H_BYTES", 1 * 27 * 27 * 8 - 1)
    r = FrontRounder(model, x, 32)
    prec = {"conv1": "int8", "dw": "int8"}
    rounded = r.sequential(prec)
    assert rounded["conv1"].method == "rtn" and rounded["dw"].method == "gptq"
    rtn_q, _ = to_stored("int8", *round_matrix("int8", r.by_name["conv1"].grouped(), None), k=27, group_size=32)
    assert np.array_equal(rounded["conv1"].q, rtn_q)  # plain rounding (the bias is still corrected)

    plan = PrecisionPlan(prec, {"conv1": 216, "dw": 72}, {}, 288, 0, 0.0, rounding="gptq", rounded=rounded)
    assert plan.rounding_report() == {"method": "gptq", "gptq": 1, "rtn_fallback": ["conv1"]}
    assert plan.table().splitlines()[-1].startswith("rounding: 1 layer(s) rounded to nearest, not GPTQ")
    assert plan.table().endswith(": conv1")
    fits = PrecisionPlan(prec, {"conv1": 216, "dw": 72}, {}, 288, 0, 0.0, rounding="gptq",
                         rounded={"dw": rounded["dw"]})
    assert fits.rounding_report()["rtn_fallback"] == [] and "rounded to nearest" not in fits.table()
