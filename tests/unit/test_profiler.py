"""`edgerun profile`: every cut is timed, several sweeps are combined, the TOML loads back."""

from __future__ import annotations

import pytest

from edgerun.errors import ConfigError
from edgerun.profiles import WHOLE, load_device, load_server

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def digits_profile():
    from edgerun.profiler import profile_machine

    return profile_machine(["zoo:digits-cnn"], repeats=2, passes=2, precisions=("fp32",), name="tiny")


def test_every_cut_and_the_whole_model_are_measured(digits_profile, digits_traced):
    cuts = {m["cut"] for m in digits_profile["device"]["measured"]}
    assert cuts == {WHOLE} | {c.index for c in digits_traced.cuts}
    assert all(m["ms"] > 0 for m in digits_profile["device"]["measured"])
    assert digits_profile["device"]["meta"]["passes"] == 2
    assert "--passes 2" in digits_profile["device"]["meta"]["measured_by"]


def test_written_profiles_load_back(digits_profile, tmp_path):
    from edgerun.profiler import write_toml

    dev = load_device(write_toml(digits_profile["device"], tmp_path / "tiny.toml"))
    srv = load_server(write_toml(digits_profile["server"], tmp_path / "tiny-server.toml"))
    m = digits_profile["device"]["measured"][0]
    assert dev.lookup("digits-cnn", m["cut"], "fp32") == pytest.approx(m["ms"])
    assert dev.compute["fp32"].gmacs > 0 and srv.compute["fp32"].gmacs > 0


def test_bad_counts_are_refused():
    from edgerun.profiler import profile_machine, profile_model

    with pytest.raises(ConfigError, match="repeats"):
        profile_machine(["zoo:digits-cnn"], repeats=0)
    with pytest.raises(ConfigError, match="passes"):
        profile_model("zoo:digits-cnn", repeats=1, passes=0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"models": ["zoo:digits-cnn", "zoo:nope"]}, "unknown zoo model 'zoo:nope'"),
    ({"models": ["missing.py:make"]}, "an existing file"),
    ({"threads": 0}, "threads=0"),
    ({"gap_ms": -1.0}, "gap_ms=-1.0"),
])
def test_bad_profile_options_fail_before_any_model_is_timed(kwargs, match, monkeypatch):
    """A bad second --model used to fail after the first one had been profiled (minutes)."""
    from edgerun import profiler

    monkeypatch.setattr(profiler, "profile_model", lambda *a, **k: pytest.fail("timed a model"))
    with pytest.raises(ConfigError, match=match):
        profiler.profile_machine(**{"models": ["zoo:digits-cnn"], **kwargs})
