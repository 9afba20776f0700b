"""What `edgerun export` promises about the device memory budget and the codec's bytes."""

from __future__ import annotations

import json

import pytest

from edgerun.errors import ConfigError

pytestmark = pytest.mark.runtime


def test_a_fixed_precision_front_is_checked_against_the_memory_budget(digits_traced, tmp_path):
    """A plan can choose int8 under --max-device-mem-mb: the export must take the budget (it
    used to refuse it outside `auto`) and refuse a front half that does not fit, saying what to do."""
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(digits_traced, ExportConfig(front_precision="int8", max_device_mem_mb=1.0, evaluate=False),
               tmp_path / "fits")
    rep = json.loads(b.file("report.json").read_text())
    assert rep["front_arena_bytes"] > 0 and rep["front_weight_bytes"] > 0
    assert rep["front_weight_bytes"] + rep["front_arena_bytes"] <= 1.0 * 2**20
    with pytest.raises(ConfigError, match="--front-precision auto") as exc:
        export(digits_traced, ExportConfig(front_precision="int8", max_device_mem_mb=0.01, evaluate=False),
               tmp_path / "tight")
    assert "over --max-device-mem-mb 0.01" in str(exc.value)
    assert not (tmp_path / "tight").exists()  # nothing half-written is left behind


def test_without_evaluation_the_codec_bytes_are_measured_on_calibration_data(digits_traced, tmp_path):
    """--no-eval used to report the fp32 size as the tsq bundle's bytes per request (1.00x)."""
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(digits_traced, ExportConfig(codec="tsq", evaluate=False), tmp_path / "b")
    rep = json.loads(b.file("report.json").read_text())
    assert rep["bytes_per_request"] * 4 < rep["bytes_per_request_fp32"]  # digits: ~9-11x at the default cut
    assert rep["bytes_per_request_on"].startswith("calibration data")
