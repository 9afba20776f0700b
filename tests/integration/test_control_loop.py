"""`edgerun run --rate HZ` against a real `serve`: a control loop that counts a missed deadline and goes on
(it used to end at the first miss with an error), and ends with a summary of what it saw."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest


def _run(cli_argv, bundle, url, *args):
    return subprocess.run([*cli_argv, "run", str(bundle.path), "--broker", url, "--json", *args],
                          capture_output=True, text=True, timeout=120)


def test_a_paced_loop_answers_every_tick_and_sums_up(digits_bundle, start_servers, broker, cli_argv):
    start_servers(1)
    r = _run(cli_argv, digits_bundle, broker.url, "--rate", "50", "--limit", "6", "--deadline-ms", "5000")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [ln["i"] for ln in lines[:-1]] == list(range(6))
    s = lines[-1]["summary"]
    assert (s["requests"], s["answered_by_server"], s["missed"], s["rate_hz"]) == (6, 6, 0, 50.0)
    assert s["bytes_sent_mean"] > 4 * 32 and set(s["total_ms"]) == {"p50", "p95", "p99"}


def test_missed_deadlines_are_counted_and_the_loop_goes_on(digits_bundle, start_servers, broker, cli_argv):
    (server,) = start_servers(1)
    server.send(signal.SIGSTOP)  # a frozen worker: no reply in time, the broker still holds its subscription
    try:
        r = _run(cli_argv, digits_bundle, broker.url, "--rate", "20", "--limit", "3", "--deadline-ms", "150")
    finally:
        server.send(signal.SIGCONT)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [("missed" in ln) for ln in lines[:3]] == [True, True, True]
    s = lines[-1]["summary"]
    assert (s["requests"], s["missed"], s["answered_by_server"]) == (3, 3, 0) and "no reply" in s["last_miss"]
    plain = _run(cli_argv, digits_bundle, broker.url, "--limit", "1", "--deadline-ms", "5000", "--summary")
    assert plain.returncode == 0 and json.loads(plain.stdout.splitlines()[-1])["summary"]["answered_by_server"] == 1


@pytest.mark.parametrize("sig, rc", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stopping_a_paced_loop_still_prints_its_summary(digits_bundle, start_servers, broker, cli_argv, tmp_path,
                                                        sig, rc):
    """A control loop runs until it is stopped, but Ctrl-C ended `run --rate` with no summary (exit 130) and
    SIGTERM killed it outright: what the loop saw was lost. Now it stops at once and sums up what it ran."""
    import numpy as np

    start_servers(1)
    np.save(tmp_path / "x.npy", np.repeat(digits_bundle.samples()[:1], 1000, axis=0))
    p = subprocess.Popen([*cli_argv, "run", str(digits_bundle.path), "--broker", broker.url, "--json", "--rate", "20",
                          "--input", str(tmp_path / "x.npy"), "--deadline-ms", "5000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert [json.loads(p.stdout.readline())["i"] for _ in range(2)] == [0, 1]
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == rc, err[-2000:]
    s = json.loads(out.splitlines()[-1])["summary"]
    assert 2 <= s["requests"] < 1000 and s["answered_by_server"] == s["requests"] and s["stopped"] is True
    assert "Traceback" not in err


def test_requests_answered_locally_after_they_went_out_count_their_bytes(broker, cli_argv, tmp_path):
    """A device with exits whose server is down sends each request, then answers it with an exit at the
    deadline: Result.bytes_sent was 0, and the loop's summary said "0 B sent per request"."""
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export("zoo:digits-cnn", ExportConfig(exits="auto", evaluate=False), tmp_path / "exits")
    r = _run(cli_argv, b, broker.url, "--rate", "20", "--limit", "2", "--deadline-ms", "100", "--budget", "off")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout.splitlines()[-1])["summary"]
    assert s["answered_on_device"] == 2 and s["bytes_sent_mean"] > 4 * 32
