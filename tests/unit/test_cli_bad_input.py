"""Bad input to the model-bundle commands: one line that says what to do, exit 2, no traceback.

Each case was found by an adversarial audit of `edgerun verify / run / bench / profile / plan /
demo / export` and failed (a traceback, a hang, a misleading message or a silent pass) before its
fix. Bundles are copies of the golden bundle with the manifest edited and resealed (no export,
no torch); nothing here starts a broker or a server.
"""

from __future__ import annotations

import json
import math

import pytest


from golden_bundle import golden_copy_at, reseal as _reseal
from cli_checks import closed_port as _closed_port, run_cli as _cli


@pytest.fixture
def golden_copy(tmp_path):
    return golden_copy_at(tmp_path / "b")


def _set(path, value):
    def edit(m):
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return edit


def _del(path):
    def edit(m):
        d = m
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return edit


# -- a resealed manifest with entries of the wrong shape ------------------------------------------

@pytest.mark.parametrize("edit,match", [
    (_set(["inputs"], 5), "'inputs' must be a non-empty list"),
    (_set(["outputs"], []), "'outputs' must be a non-empty list"),
    (_set(["split"], "conv1"), "'split' must be an object"),
    (_del(["split", "tensors"]), "'split.tensors' must be a non-empty list"),
    (_del(["split", "label"]), "'split.label' must be a string"),
    (_set(["native"], "yes"), "'native' must be a JSON object"),
    (_set(["native", "ok"], "yes"), "'native.ok' must be true or false"),
    (_set(["precisions"], "fp32"), "'precisions' must be a JSON object"),
    (_set(["precisions", "back"], "fp8"), "'precisions.back' is 'fp8'"),
    (_set(["precisions", "front_calib_rel_err"], "x"), "'precisions.front_calib_rel_err' must be a finite number"),
    (_set(["codec"], "tsq"), "'codec' must be a JSON object"),
    (_set(["codec"], {"id": "tsq"}), "'codec.params' must map each cut tensor"),
    (_set(["codec"], {"id": "tsq", "params": {"conv2d": "zz"}}), "'codec.params.conv2d' must be a hex string"),
    (_set(["model_id"], 5), "'model_id' must be a non-empty string"),
    (_set(["inputs", 0, "shape"], [None, -1, 6, 6]), "has shape \\[None, -1, 6, 6\\]"),
    (_set(["inputs", 0, "shape"], [None, 1, 6, 10**12]), "a shape is a list of sizes"),
    (_set(["inputs", 0, "dtype"], "int8"), "has dtype 'int8'"),
])
def test_verify_names_a_malformed_manifest_entry(golden_copy, edit, match):
    """Before: a traceback (TypeError / AttributeError / KeyError / ValueError) or a silent pass."""
    r = _cli("verify", str(_reseal(golden_copy, edit)))
    assert r.exit_code == 2, r.output
    assert "manifest.json's" in r.output and "re-export the bundle" in r.output
    import re

    assert re.search(match, r.output), r.output


def test_the_golden_bundle_still_verifies(golden_copy):
    r = _cli("verify", str(golden_copy), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ok"]


def test_verify_refuses_samples_that_do_not_match_the_manifest_input(golden_copy):
    """Before: `verify` said ok, and `run` then refused every one of those inputs."""
    _reseal(golden_copy, _set(["inputs", 0, "shape"], [None, 1, 7, 6]))
    r = _cli("verify", str(golden_copy))
    assert r.exit_code == 2
    assert "samples.npz holds inputs of shape [8, 1, 6, 6]" in r.output
    assert "[None, 1, 7, 6]" in r.output


# -- numeric options ------------------------------------------------------------------------------

@pytest.fixture
def no_ort_session(monkeypatch):
    """A session created at all means the bad option was not refused first (it used to start
    100000 onnxruntime threads: a hang)."""
    import onnxruntime

    def refuse(*a, **k):
        raise AssertionError("an onnxruntime session was created before the option was checked")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)


@pytest.mark.parametrize("threads", ["100000", "257"])
def test_verify_refuses_too_many_threads_before_onnxruntime_starts_them(golden_copy, no_ort_session, threads):
    r = _cli("verify", str(golden_copy), "--threads", threads)
    assert r.exit_code == 2
    assert f"threads must be in 1..256, got {threads}" in r.output


def test_run_on_onnxruntime_refuses_too_many_threads(golden_copy, no_ort_session):
    r = _cli("run", str(golden_copy), "--broker", f"mqtt://127.0.0.1:{_closed_port()}", "--engine", "ort",
             "--threads", "100000")
    assert r.exit_code == 2
    assert "threads must be in 1..256" in r.output


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0", "1e308"])
def test_run_refuses_a_bad_deadline_before_the_broker(golden_copy, value):
    """Before: nan / -5 / 0 were reported as an unreachable broker, and 1e308 with a live broker
    ended in a traceback (the MQTT expiry interval overflowed)."""
    r = _cli("run", str(golden_copy), "--broker", f"mqtt://127.0.0.1:{_closed_port()}", "--deadline-ms", value)
    assert r.exit_code == 2
    assert "--deadline-ms" in r.output and "must be a finite number of ms > 0" in r.output
    assert "cannot reach the MQTT broker" not in r.output


@pytest.mark.parametrize("flags", [["--max-sessions", "4"], ["--session-ttl-s", "5"],
                                   ["--max-sessions", "32", "--session-ttl-s", "600"]])
def test_serve_refuses_session_options_for_a_model_bundle_before_the_broker(golden_copy, flags):
    """Before: `serve MODEL --max-sessions 4` started and ignored the option (only a split LLM
    bundle keeps sessions), so the user believed a limit was in force. Given at its default value
    it is refused too: what counts is that the user asked for it."""
    r = _cli("serve", str(golden_copy), "--broker", f"mqtt://127.0.0.1:{_closed_port()}", *flags)
    assert r.exit_code == 2
    assert "only a split LLM bundle (edgerun llm export) keeps sessions" in r.output
    assert "drop --" in r.output and "cannot reach the MQTT broker" not in r.output


def test_device_refuses_an_overflowing_deadline():
    from edgerun.device_checks import MAX_DEADLINE_MS, check_deadline_ms
    from edgerun.errors import ConfigError

    import numpy as np

    check_deadline_ms(None)
    check_deadline_ms(MAX_DEADLINE_MS)
    check_deadline_ms(np.float32(50.0))  # a deadline computed with numpy is a number too
    check_deadline_ms(np.int64(50))
    for bad in (1e308, math.inf, math.nan, 0, -1, True, np.float64("nan"), "50"):
        with pytest.raises(ConfigError, match="at most 86400000"):
            check_deadline_ms(bad)


def test_profile_refuses_an_infinite_gap_before_timing(monkeypatch, tmp_path):
    """Before: --gap-ms inf passed the `>= 0` check and time.sleep overflowed (a traceback) after
    the models were traced and partly timed."""
    import edgerun.profiler as profiler

    monkeypatch.setattr(profiler, "profile_model", lambda *a, **k: pytest.fail("timed before the check"))
    r = _cli("profile", "--out", str(tmp_path / "p.toml"), "--model", "zoo:digits-cnn", "--gap-ms", "inf")
    assert r.exit_code == 2
    assert "gap_ms=inf must be in 0..60000" in r.output


# -- paths ----------------------------------------------------------------------------------------

def test_plan_calls_a_profile_directory_a_directory(tmp_path):
    """Before: `--device /some/dir` said the profile file "does not exist"."""
    r = _cli("plan", "zoo:digits-cnn", "--device", str(tmp_path), "--server", "cpu-server", "--link", "wifi")
    assert r.exit_code == 2
    assert "is a directory, not a file" in r.output and "does not exist" not in r.output


def test_bench_refuses_a_link_it_cannot_connect_over_before_starting_anything(golden_copy, tmp_path, monkeypatch):
    """Before: a link profile with an RTT of seconds started Mosquitto and the servers and ended
    with "the MQTT broker ... did not accept the connection within 5 s" (blaming the broker)."""
    import edgerun.broker

    monkeypatch.setattr(edgerun.broker.Mosquitto, "__init__",
                        lambda *a, **k: pytest.fail("a broker was started before the link was checked"))
    link = tmp_path / "slow.toml"
    link.write_text('kind = "link"\nname = "slow"\nrtt_ms = 10000.0\nup_mbps = 10.0\ndown_mbps = 10.0\n')
    r = _cli("bench", str(golden_copy), "--link", str(link), "--requests", "1", "--warmup", "0")
    assert r.exit_code == 2
    assert "link slow" in r.output and "the bench waits 5000 ms for a connection" in r.output


@pytest.mark.parametrize("args,match", [
    (["--limit", "0"], "--limit 0: give the number of test samples"),
    (["--engine", "tpu"], "--engine 'tpu'"),
    (["--budget", "nope"], "--budget 'nope'"),
    (["--codec", "bogus"], "codec 'bogus'"),
])
def test_demo_checks_its_options_before_training_exporting_or_starting_a_broker(monkeypatch, args, match):
    """Before: --limit 0 trained, exported, started Mosquitto and `serve`, then failed as
    "batch 0 is outside 1..max_batch"; a bad --engine / --budget also failed only after all that."""
    from edgerun.exporters import zoo

    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("the model was prepared before the check"))
    r = _cli("demo", *args)
    assert r.exit_code == 2
    assert match in r.output
