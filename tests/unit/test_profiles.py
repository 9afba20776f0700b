"""Profiles: every shipped profile loads; a missing or malformed field is a ConfigError naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerun.errors import ConfigError
from edgerun.profiles import Compute, devices_dir, load_device, load_link, load_server
from edgerun.profiler import to_toml

DEVICES = ("rpi4", "jetson-orin-nano", "x86-minipc", "this-machine")
SERVERS = ("gpu-a100", "cpu-server")
LINKS = ("wifi", "lte", "5g", "ethernet")
MS_TOL = 1e-9  # pure arithmetic


@pytest.mark.parametrize("name", DEVICES)
def test_shipped_device_profiles_load(name):
    d = load_device(name)
    assert d.name == name and d.memory_mb > 0 and "fp32" in d.compute


@pytest.mark.parametrize("name", SERVERS)
def test_shipped_server_profiles_load(name):
    assert "fp32" in load_server(name).compute


@pytest.mark.parametrize("name", LINKS)
def test_shipped_link_profiles_load(name):
    link = load_link(name)
    assert link.rtt_ms >= 0 and link.up_mbps > 0 and link.down_mbps > 0


def test_every_shipped_profile_is_documented():
    readme = (devices_dir() / "README.md").read_text()
    for p in devices_dir().glob("*.toml"):
        assert f"`{p.name}`" in readme, f"{p.name} has no entry in devices/README.md"


def test_load_by_path(tmp_path):
    src = devices_dir() / "wifi.toml"
    dst = tmp_path / "mylink.toml"
    dst.write_text(src.read_text())
    assert load_link(dst).rtt_ms == load_link("wifi").rtt_ms


def test_compute_model_arithmetic():
    c = Compute(gmacs=2.0, overhead_ms=0.5, per_node_us=10.0)
    # 2e6 MACs at 2 GMAC/s = 1 ms; 100 nodes x 10 us = 1 ms; + 0.5 ms
    assert abs(c.ms(2_000_000, 100) - 2.5) < MS_TOL


def test_network_ms_is_rtt_plus_serialization_plus_jitter():
    link = load_link("lte")
    up, down = 8000, 1000
    want = link.rtt_ms + up * 8 / (link.up_mbps * 1e3) + down * 8 / (link.down_mbps * 1e3) + link.jitter_ms
    assert abs(link.network_ms(up, down) - want) < MS_TOL


def test_measured_time_wins_over_the_model():
    d = load_device("this-machine")
    m = d.measured[0]
    ms, src = d.predict_ms(m.model, m.cut, m.precision, macs=10**12, nodes=10**6)
    assert (ms, src) == (m.ms, "measured")
    _, src2 = d.predict_ms("no-such-model", 3, "fp32", macs=1000, nodes=3)
    assert src2 == "model"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="wifi"):
        load_link("no-such-link")


def test_missing_file_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_link(tmp_path / "absent.toml")


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.toml"
    p.write_text(text)
    return p


def test_missing_field_names_file_and_field(tmp_path):
    p = _write(tmp_path, 'kind = "link"\nname = "x"\nrtt_ms = 3.0\nup_mbps = 1.0\n')
    with pytest.raises(ConfigError) as ei:
        load_link(p)
    assert str(p) in str(ei.value) and "down_mbps" in str(ei.value)


def test_wrong_type_names_the_field(tmp_path):
    p = _write(tmp_path, 'kind = "link"\nname = "x"\nrtt_ms = "fast"\nup_mbps = 1.0\ndown_mbps = 1.0\n')
    with pytest.raises(ConfigError, match="rtt_ms"):
        load_link(p)


@pytest.mark.parametrize("field,value", [("up_mbps", "0.0"), ("rtt_ms", "-1.0"), ("loss", "1.5"),
                                         ("rtt_ms", "nan"), ("jitter_ms", "nan"), ("up_mbps", "inf")])
def test_out_of_range_values(tmp_path, field, value):
    base = {"rtt_ms": "3.0", "up_mbps": "1.0", "down_mbps": "1.0", "loss": "0.0"}
    base[field] = value
    body = 'kind = "link"\nname = "x"\n' + "".join(f"{k} = {v}\n" for k, v in base.items())
    with pytest.raises(ConfigError, match=field):
        load_link(_write(tmp_path, body))


def test_wrong_kind(tmp_path):
    with pytest.raises(ConfigError, match="kind"):
        load_device(devices_dir() / "wifi.toml")


def test_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_link(_write(tmp_path, "kind = = 3"))


def test_device_compute_section_errors(tmp_path):
    head = 'kind = "device"\nname = "d"\nmemory_mb = 100\n'
    with pytest.raises(ConfigError, match="compute"):
        load_device(_write(tmp_path, head))
    with pytest.raises(ConfigError, match="compute.fp32.gmacs"):
        load_device(_write(tmp_path, head + "[compute.fp32]\noverhead_ms = 1.0\n"))
    with pytest.raises(ConfigError, match="gmacs"):
        load_device(_write(tmp_path, head + "[compute.fp32]\ngmacs = 0.0\n"))
    with pytest.raises(ConfigError, match="unknown precision"):
        load_device(_write(tmp_path, head + "[compute.fp7]\ngmacs = 1.0\n"))


def test_written_toml_round_trips(tmp_path):
    prof = {"kind": "device", "name": "rt", "memory_mb": 512, "meta": {"measured_by": "x"},
            "compute": {"fp32": {"gmacs": 3.5, "overhead_ms": 0.1, "per_node_us": 2.0}},
            "measured": [{"model": "m", "cut": 2, "precision": "fp32", "ms": 1.25}]}
    p = tmp_path / "rt.toml"
    p.write_text(to_toml(prof))
    d = load_device(p)
    assert d.compute["fp32"].gmacs == 3.5 and d.lookup("m", 2, "fp32") == 1.25


def test_a_profile_measured_on_another_cpu_is_flagged(tmp_path):
    """this-machine.toml describes whichever CPU ran `edgerun profile`: measured on a Xeon and read
    on a Zen 5 (both KVM guests), emulated boards and planned device times were off by the two
    CPUs' ratio without a word. The CPU is recorded (vendor, family, model) and compared."""
    from edgerun.profiles import cpu_name, stale_profile_note

    def prof(meta: str):
        p = tmp_path / "this-machine.toml"
        p.write_text('kind = "device"\nname = "this-machine"\nmemory_mb = 512\n' + meta
                     + "[compute.fp32]\ngmacs = 3.5\n")
        return load_device(p)

    here = cpu_name()
    if Path("/proc/cpuinfo").exists():
        assert "family" in here  # "AMD EPYC" alone named both a Zen 1 and a Zen 5 guest
    assert stale_profile_note(prof(f"[meta]\ncpu = {here!r}\n".replace("'", '"'))) == ""
    other = stale_profile_note(prof('[meta]\ncpu = "Intel(R) Xeon(R) Platinum (GenuineIntel family 6 model 143)"\n'))
    assert "Xeon" in other and "re-run `edgerun profile`" in other
    assert "does not record" in stale_profile_note(prof(""))


def test_emulated_device_is_this_machine_scaled():
    """The bench's emulated rpi4 runs this machine's engine `factor` times slower: its profile is
    this-machine's, every time scaled by the same factor, with the emulated board's memory."""
    from edgerun.profiles import emulated_device

    here, rpi = load_device("this-machine"), load_device("rpi4")
    emu, factor, note = emulated_device("rpi4")
    assert factor == pytest.approx(here.compute["fp32"].gmacs / rpi.compute["fp32"].gmacs)
    assert "EMULATED" in note and emu.memory_mb == rpi.memory_mb
    m = here.measured[-1]
    assert emu.lookup(m.model, m.cut, m.precision) == pytest.approx(m.ms * factor)
    c, ce = here.compute["fp32"], emu.compute["fp32"]
    assert ce.ms(10**7, 20) == pytest.approx(c.ms(10**7, 20) * factor)


def test_no_emulation_for_this_machine():
    from edgerun.profiles import emulated_device

    prof, factor, _ = emulated_device(None)
    assert factor == 1.0 and prof == load_device("this-machine")


def test_emulating_a_faster_device_is_refused():
    with pytest.raises(ConfigError, match="slower"):
        load_device("this-machine").scaled(0.5, "x", "")


def test_a_folder_named_like_a_profile_does_not_shadow_it(tmp_path, monkeypatch):
    (tmp_path / "rpi4").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_device("rpi4").name == "rpi4"


@pytest.mark.parametrize(("edit", "match"), [
    # NaN passed every `< 0` check: plans came out "nan ms predicted", feasible, exit 0
    (("overhead_ms = 0.01", "overhead_ms = nan"), "finite number"),
    (("per_node_us = 3.2", "per_node_us = inf"), "finite number"),
    (("memory_mb = 4096", "memroy_mb = 4096"), r"unknown field\(s\) \['memroy_mb'\]"),  # was ignored
])
def test_a_device_profile_with_non_finite_or_misspelt_fields_is_refused(tmp_path, edit, match):
    text = (devices_dir() / "rpi4.toml").read_text()
    assert edit[0] in text, edit[0]
    with pytest.raises(ConfigError, match=match):
        load_device(_write(tmp_path, text.replace(edit[0], edit[1], 1)))


def test_a_negative_measured_time_is_refused(tmp_path):
    """It was planned as the fastest candidate (-42 ms predicted)."""
    text = (devices_dir() / "rpi4.toml").read_text()
    text += '\n[[measured]]\nmodel = "digits-cnn"\ncut = 3\nprecision = "fp32"\nms = -50.0\n'
    with pytest.raises(ConfigError, match=r"measured\[0\]\.ms must be >= 0"):
        load_device(_write(tmp_path, text))


@pytest.mark.parametrize("outages", ["[[-5.0, 1.0]]", "[[0.0, 0.0]]", "[[nan, inf]]"])
def test_link_outages_must_be_finite_start_and_positive_length(tmp_path, outages):
    body = 'kind = "link"\nname = "x"\nrtt_ms = 3.0\nup_mbps = 1.0\ndown_mbps = 1.0\n' + f"outages = {outages}\n"
    with pytest.raises(ConfigError, match="outages"):
        load_link(_write(tmp_path, body))


@pytest.mark.parametrize(("compute", "match"), [
    ('[compute.int8]\ngmacs = 5.0\n', r"no \[compute.fp32\]"),             # was KeyError: 'fp32'
    ('[compute.fp32]\ngmacs = 1e-300\n', "emulates at most"),               # was an OverflowError in the sleep
])
def test_a_device_the_bench_cannot_emulate_says_why(tmp_path, compute, match):
    from edgerun.profiles import emulated_device

    body = 'kind = "device"\nname = "odd"\nmemory_mb = 512.0\n' + compute
    with pytest.raises(ConfigError, match=match):
        emulated_device(_write(tmp_path, body))
