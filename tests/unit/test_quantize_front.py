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
    with pytest.raises(ConfigError):
        FrontPrecisionConfig(group_size=7)


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
    with pytest.raises(ExportError, match="smallest reachable"):
        _auto(_layers(), sens, 1000, 0, 10, 32)
