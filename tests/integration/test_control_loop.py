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
    """A device with exits whose server is down sends a request, then answers it with an exit (at the broker's
    PUBACK: no subscriber; at the deadline where the broker does not say so): Result.bytes_sent was 0, and the
    loop's summary said "0 B sent per request". The next request stays here while the server is suspect."""
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export("zoo:digits-cnn", ExportConfig(exits="auto", evaluate=False), tmp_path / "exits")
    r = _run(cli_argv, b, broker.url, "--rate", "20", "--limit", "2", "--deadline-ms", "100", "--budget", "off")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout.splitlines()[-1])["summary"]
    assert s["answered_on_device"] == 2 and s["bytes_sent_mean"] > 4 * 32


def _error_server(broker_url, b, code="internal"):
    """A responder for bundle ``b`` that answers every request with an ERROR frame (a back half that fails)."""
    from edgerun import transport, wire

    def answer(msg) -> None:
        corr = msg.properties.CorrelationData
        srv.publish(msg.properties.ResponseTopic,
                    wire.error_frame(transport.correlation_id(corr), b.hash16, code, "the back half failed"),
                    correlation=corr)

    srv = transport.MqttClient(broker_url, "error-server", on_message=answer)
    srv.connect()
    srv.subscribe(transport.shared_request_filter(b.model_id, b.topic_id, "edgerun"))
    return srv


def test_an_error_reply_is_counted_and_the_loop_goes_on(digits_bundle, broker, cli_argv):
    """A server answering with an error ended the paced loop at its first request, with no summary."""
    srv = _error_server(broker.url, digits_bundle)
    try:
        r = _run(cli_argv, digits_bundle, broker.url, "--rate", "50", "--limit", "3", "--deadline-ms", "5000")
    finally:
        srv.close()
    assert r.returncode == 1, r.stderr[-2000:]  # the loop ran to the end; the status says requests failed
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [ln["i"] for ln in lines[:-1]] == [0, 1, 2] and all("the back half failed" in ln["error"] for ln in lines[:-1])
    s = lines[-1]["summary"]
    assert (s["requests"], s["errors"], s["answered_by_server"], s["missed"]) == (3, 3, 0, 0)
    assert "the back half failed" in s["last_error"]


def test_a_device_with_exits_answers_a_server_error_from_its_deepest_exit(broker, tmp_path):
    """With exits the device has an answer of its own: a server error raised out of infer() (and ended a robot's
    loop) where an unreachable server is answered locally."""
    import numpy as np

    from edgerun.device import Device
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export("zoo:digits-cnn", ExportConfig(exits="auto", evaluate=False), tmp_path / "exits")
    x = np.asarray(b.samples())[:1]
    srv = _error_server(broker.url, b)
    try:
        with Device(b, broker=broker.url, budget="off") as dev:
            r = dev.infer(x, deadline_ms=5000)
            deepest = len(b.manifest["exits"]["points"]) - 1
            assert r.answered_by == f"exit:{deepest}" and r.reason.startswith("server error: ")
            assert "the back half failed" in r.reason and r.bytes_sent > 0
    finally:
        srv.close()
    with Device(b, broker=broker.url, budget="off") as dev:  # no server at all: the same local answer
        alone = dev.infer(x, deadline_ms=300)
    np.testing.assert_array_equal(alone.output["logits"], r.output["logits"])
