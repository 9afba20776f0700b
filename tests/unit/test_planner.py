"""Planner: candidate space, cost arithmetic against the profiles, ranking, budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgerun.errors import ConfigError
from edgerun.profiles import WHOLE, load_device, load_link, load_server

MS_TOL = 1e-6


@pytest.fixture(scope="module")
def digits_plan(digits_traced):
    from edgerun.exporters.planner import plan

    return plan(digits_traced, "rpi4", "cpu-server", "lte")


def test_every_cut_and_both_extremes_are_candidates(digits_plan, digits_traced):
    idx = {c.cut_index for c in digits_plan.candidates}
    assert idx == {-1, WHOLE} | {c.index for c in digits_traced.cuts}
    combos = {(c.cut_index, c.front_precision, c.codec) for c in digits_plan.candidates}
    for cut in digits_traced.cuts:  # rpi4's profile has fp32 compute only; both codecs are planned
        assert {(cut.index, "fp32", "none"), (cut.index, "fp32", "tsq")} <= combos
    for c in digits_plan.candidates:
        if c.front_precision == "fp32" and c.codec == "none":
            assert c.metric_loss == 0.0  # lossless: exact by construction


def test_lossy_candidates_are_measured_only_when_they_could_win(digits_traced):
    """With only splits allowed over a slow link, the fastest split is a codec one: measured, chosen."""
    from edgerun.exporters.planner import Budgets, plan

    p = plan(digits_traced, "rpi4", "cpu-server", "lte", Budgets(max_accuracy_drop=0.01), splits_only=True)
    assert p.chosen is not None and p.chosen.codec == "tsq"
    assert p.chosen.metric_loss is not None and p.chosen.metric_loss <= 0.01
    slower_lossy = [c for c in p.candidates if c.codec == "tsq" and c.total_ms > p.chosen.total_ms]
    assert all(c.metric_loss is None and not c.feasible for c in slower_lossy)


def test_json_has_the_interface_fields(digits_plan):
    js = digits_plan.to_json()
    keys = {"cut", "front_precision", "codec", "device_ms", "wire_bytes", "network_ms", "server_ms", "total_ms",
            "device_mem_bytes", "metric_loss", "feasible"}
    assert keys <= set(js["candidates"][0]) and js["chosen"] is not None


def test_costs_follow_the_profiles(digits_plan, digits_traced):
    from edgerun.exporters.planner import MESSAGE_OVERHEAD_BYTES, TRANSPORT_OVERHEAD_MS

    link = load_link("lte")
    cut = digits_traced.cuts[3]
    c = next(c for c in digits_plan.candidates if c.cut_index == cut.index)
    out_bytes = 10 * 4  # digits logits
    up, down = cut.crossing_bytes + MESSAGE_OVERHEAD_BYTES, out_bytes + MESSAGE_OVERHEAD_BYTES
    assert c.wire_bytes == up + down
    assert abs(c.network_ms - (link.network_ms(up, down) + TRANSPORT_OVERHEAD_MS)) < MS_TOL
    dev = load_device("rpi4").compute["fp32"]
    assert c.device_ms > dev.overhead_ms and c.sources["device_ms"] == "model"
    assert c.sources["server_ms"] == "measured"  # cpu-server holds measured back-half times
    assert abs(c.total_ms - (c.device_ms + c.network_ms + c.server_ms)) < MS_TOL


def test_extremes(digits_plan):
    on_dev = next(c for c in digits_plan.candidates if c.cut == "output")
    on_srv = next(c for c in digits_plan.candidates if c.cut == "input")
    assert on_dev.wire_bytes == 0 and on_dev.network_ms == 0 and on_dev.server_ms == 0
    assert on_srv.device_ms == 0 and on_srv.device_mem_bytes == 8 * 8 * 4


def test_ranked_feasible_first_then_fastest(digits_plan):
    feasible = [c.feasible for c in digits_plan.candidates]
    assert feasible == sorted(feasible, reverse=True)
    totals = [c.total_ms for c in digits_plan.candidates if c.feasible]
    assert totals == sorted(totals)
    assert digits_plan.chosen == digits_plan.candidates[0]
    assert digits_plan.choice() == (digits_plan.chosen.cut, "fp32", "none")


def test_slow_link_pushes_work_to_the_device(digits_traced):
    from edgerun.exporters.planner import plan

    # the digits CNN is tiny: over LTE the round trip dominates, so everything stays on the device
    assert plan(digits_traced, "x86-minipc", "gpu-a100", "lte").chosen.cut == "output"


def test_memory_budget_excludes_big_fronts(digits_traced):
    from edgerun.exporters.planner import Budgets, plan

    p = plan(digits_traced, "rpi4", "cpu-server", "ethernet", Budgets(max_device_mem_mb=0.01))
    assert p.chosen is not None and p.chosen.device_mem_bytes <= 0.01 * 2**20
    assert all("max_device_mem_mb" in c.violations for c in p.candidates if c.device_mem_bytes > 0.01 * 2**20)


def test_the_devices_own_memory_bounds_the_front_half(digits_traced, tmp_path):
    """memory_mb was read and never used: a plan put a 27 MiB model on an 8 MiB device."""
    import dataclasses

    from edgerun.exporters.planner import plan

    tiny = dataclasses.replace(load_device("rpi4"), memory_mb=0.01)
    p = plan(digits_traced, tiny, "cpu-server", "lte")
    assert p.budgets.max_device_mem_mb == 0.01
    assert p.chosen is not None and p.chosen.device_mem_bytes <= 0.01 * 2**20
    assert p.chosen.cut != "output"  # all on the device (0.1 MiB) is what lte alone would choose


def test_all_on_the_device_at_int8_is_measured_and_can_be_chosen(digits_traced):
    """The whole model quantized was never measured ("loss_not_measured"), so it never won."""
    from edgerun.exporters.planner import plan

    p = plan(digits_traced, "this-machine", "gpu-a100", "lte")  # its profile has int8 (and int4) times
    whole_int8 = next(c for c in p.candidates if c.cut_index == WHOLE and c.front_precision == "int8")
    assert whole_int8.metric_loss is not None and whole_int8.feasible
    assert p.chosen.cut == "output" and p.chosen.front_precision == "int8"


def test_infeasible_latency_says_by_how_much(digits_traced):
    from edgerun.exporters.planner import Budgets, plan

    p = plan(digits_traced, "rpi4", "cpu-server", "lte", Budgets(max_latency_ms=0.001))
    assert p.chosen is None and "max_latency_ms=0.001 cannot be met" in p.reason and "over" in p.reason
    with pytest.raises(ConfigError, match="max_latency_ms"):
        p.choice()


def test_negative_budget_rejected():
    from edgerun.exporters.planner import Budgets

    with pytest.raises(ConfigError, match="max_latency_ms"):
        Budgets(max_latency_ms=-1)


def test_unknown_profile_is_a_config_error(digits_traced):
    from edgerun.exporters.planner import plan

    with pytest.raises(ConfigError, match="no profile named"):
        plan(digits_traced, "no-such-device", "cpu-server", "lte")


def test_registries_offer_the_baseline():
    from edgerun.exporters.planner import available_codecs, available_precisions

    assert available_precisions()[0] == "fp32" and available_codecs()[0] == "none"


def test_loaded_profiles_are_accepted(digits_traced):
    from edgerun.exporters.planner import plan

    p = plan(digits_traced, load_device("rpi4"), load_server("gpu-a100"), load_link("5g"))
    assert p.device == "rpi4" and p.server == "gpu-a100" and p.link == "5g"


@pytest.mark.slow
def test_the_default_accuracy_budget_refuses_a_lossy_fastest_split(effnet_traced):
    """Without --max-accuracy-drop the fastest split won whatever its loss: EfficientNet-Lite0 on
    this-machine over wifi chose int4 + tsq at blocks.0, 70 % of its calibration crops changed."""
    from edgerun.exporters.planner import DEFAULT_MAX_ACCURACY_DROP, Budgets, plan

    p = plan(effnet_traced, "this-machine", "cpu-server", "wifi", Budgets(max_device_mem_mb=4), splits_only=True)
    assert p.chosen is not None and p.chosen.metric_loss <= DEFAULT_MAX_ACCURACY_DROP
    refused = [c for c in p.candidates if c.violations == ("max_accuracy_drop",)]
    assert refused and min(c.total_ms for c in refused) < p.chosen.total_ms


@pytest.mark.runtime
def test_the_planner_prices_the_codec_the_exporter_writes(digits_traced, tmp_path):
    """The planner used a fixed tsq budget (1e-3) while the exporter chooses one on calibration
    data: its wire bytes and loss were for a codec no bundle carried. Both now use one rule."""
    from edgerun.exporters.pipeline import ExportConfig, export
    from edgerun.exporters.planner_loss import LossMeter

    meter = LossMeter(digits_traced, digits_traced.source.zoo.calib_data(32))
    cut = next(c for c in digits_traced.cuts if c.label == "down")
    entry = meter.codec_entry(cut.index)
    b = export(digits_traced, ExportConfig(cut="down", codec="tsq", evaluate=False), tmp_path / "b")
    written = b.manifest["codec"]
    assert (entry["budget"], entry["layout"]) == (written["budget"], written["layout"])
    assert entry["budget"] != 1e-3  # digits tolerates far more than the old fixed estimate
    report_bytes = json.loads(b.file("report.json").read_text())["bytes_per_request"]
    assert abs(meter.codec_bytes(cut.index) - report_bytes) <= 0.02 * report_bytes


def test_a_plan_on_a_this_machine_profile_from_another_cpu_says_so(digits_traced, tmp_path):
    """Planned device times come from the profile: measured on another CPU they are off by the
    CPUs' ratio, so the plan carries the warning (printed by `edgerun plan` / `export --device`)."""
    from edgerun.exporters.planner import plan

    src = load_device("this-machine")
    text = Path(src.path).read_text()
    cpu_line = next(line for line in text.splitlines() if line.startswith("cpu = "))
    other = tmp_path / "this-machine.toml"
    other.write_text(text.replace(cpu_line, 'cpu = "Some Other CPU (GenuineIntel family 6 model 1)"'))
    p = plan(digits_traced, str(other), "cpu-server", "lte")
    assert len(p.notes) == 1 and "Some Other CPU" in p.notes[0] and p.to_json()["notes"] == list(p.notes)
    assert plan(digits_traced, "rpi4", "cpu-server", "lte").notes == ()  # not this machine's profile
