"""Early exits against a real broker and a real server: confident exits, deadlines, and outages.

The server is stopped mid-run: every later request must still be answered, by the device's
deepest exit, and marked local. A device on a bundle with exits starts while the broker is
down and connects once it comes up.
"""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager

import numpy as np
import pytest

from edgerun.broker import Mosquitto
from edgerun.bundle import Bundle
from edgerun.procs import die_with_parent
from edgerun.device import Device

DEADLINE_MS = 400.0          # per request; generous for a loaded 2-core box
RECONNECT_WAIT_S = 20.0


@pytest.fixture(scope="module")
def exits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """digits-cnn cut at block2 (the front half is ~all of the model) with auto exits."""
    from edgerun.exporters import ExportConfig, export

    return export("zoo:digits-cnn", ExportConfig(cut="block2", exits="auto", evaluate=False),
                  tmp_path_factory.mktemp("exits") / "digits-exits")


@contextmanager
def serving(bundle: Bundle, url: str, argv: list[str], wait_online):
    """One `edgerun serve` for ``bundle``, online before the body runs; killed after."""
    proc = subprocess.Popen(die_with_parent([*argv, "serve", str(bundle.path), "--broker", url]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_online(bundle, url, 1, [])
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def engine(exits_bundle: Bundle) -> str:
    return "native" if exits_bundle.manifest["exits"]["points"][0]["erg"] else "ort"


def test_server_stopped_mid_run_every_request_answered_locally(exits_bundle, engine, digits_test_set, cli_argv,
                                                              wait_online):
    x, y = digits_test_set
    with Mosquitto() as broker, serving(exits_bundle, broker.url, cli_argv, wait_online) as server:
        with Device(exits_bundle, broker=broker.url, engine=engine, budget="off") as dev:
            before = [dev.infer(x[i: i + 1], deadline_ms=DEADLINE_MS * 10) for i in range(8)]
            assert all(r.answered_by == "server" and r.reason == "server replied" for r in before)
            assert dev.rtt_ms is not None and dev.rtt_ms > 0
            server.terminate()
            server.wait()
            after = [dev.infer(x[i: i + 1], deadline_ms=DEADLINE_MS) for i in range(len(x))]
    assert len(after) == len(x)  # 100% answered
    deepest = len(exits_bundle.manifest["exits"]["points"]) - 1
    assert all(r.local and r.answered_by == f"exit:{deepest}" for r in after)
    assert all(r.reason.startswith(("deadline:", "server unreachable:")) for r in after)
    top1 = np.array([int(r.output[exits_bundle.outputs[0].name].argmax()) for r in after])
    assert np.mean(top1 == y) >= 0.9  # the deepest exit is a real answer, not a placeholder


def test_predicted_round_trip_over_the_deadline_answers_at_once(exits_bundle, engine, digits_test_set, cli_argv,
                                                               wait_online):
    x, _ = digits_test_set
    with Mosquitto() as broker, serving(exits_bundle, broker.url, cli_argv, wait_online):
        with Device(exits_bundle, broker=broker.url, engine=engine, budget="off") as dev:
            assert dev.infer(x[:1], deadline_ms=DEADLINE_MS * 10).answered_by == "server"
            dev.rtt_ms = 80.0  # as if the link had slowed down
            r = dev.infer(x[:1], deadline_ms=12.0)
    assert r.local and r.reason.startswith("deadline: predicted round trip 80.0 ms >")


def test_one_too_short_deadline_is_not_taken_for_an_outage(exits_bundle, engine, digits_test_set, cli_argv,
                                                            wait_online):
    """A reply that missed its deadline marked the server "unreachable" for a second: every request in
    that second was answered locally, whatever its deadline. The late reply proves the server is up:
    its round trip is learned instead."""
    x, _ = digits_test_set
    with Mosquitto() as broker, serving(exits_bundle, broker.url, cli_argv, wait_online):
        with Device(exits_bundle, broker=broker.url, engine=engine, budget="off") as dev:
            missed = dev.infer(x[:1], deadline_ms=0.01)  # no round trip measured yet: it is sent, and missed
            assert missed.local and missed.reason.startswith("deadline:")
            give_up = time.monotonic() + RECONNECT_WAIT_S
            while dev.dropped_replies == 0 and time.monotonic() < give_up:
                time.sleep(0.01)
            assert dev.dropped_replies == 1 and dev.rtt_ms is not None  # the late reply, measured
            r = dev.infer(x[1:2], deadline_ms=DEADLINE_MS * 10)
            assert r.answered_by == "server", r.reason
            short = dev.infer(x[2:3], deadline_ms=0.01)  # now predicted, not sent
            assert short.local and short.reason.startswith("deadline: predicted round trip")


def test_a_stale_round_trip_prediction_does_not_keep_every_request_local(exits_bundle, engine, digits_test_set,
                                                                         cli_argv, wait_online, monkeypatch):
    """A server frozen (SIGSTOP) for a few seconds answers its backlog when it wakes, and the device learnt
    round trips of seconds from those late replies: it then predicted every later request to miss its
    deadline and answered each on the device, for good (a request kept local measures nothing), while the
    server answered in a millisecond again. A prediction older than RTT_STALE_S still answers at once, but
    sends the request too: its late reply measures the round trip afresh."""
    from edgerun import device as device_mod

    now = [1000.0]  # the device's clock, moved by hand
    monkeypatch.setattr(device_mod, "_clock", lambda: now[0], raising=False)
    x, _ = digits_test_set
    with Mosquitto() as broker, serving(exits_bundle, broker.url, cli_argv, wait_online):
        with Device(exits_bundle, broker=broker.url, engine=engine, budget="off") as dev:
            assert dev.infer(x[:1], deadline_ms=DEADLINE_MS * 10).answered_by == "server"
            for _ in range(20):  # the late replies to what was sent during the stall, as the device learns them
                dev._observe_rtt(5000.0)
            r = dev.infer(x[1:2], deadline_ms=DEADLINE_MS)
            assert r.local and r.reason.startswith("deadline: predicted round trip") and r.bytes_sent == 0
            now[0] += 1.0  # RTT_STALE_S: nothing learnt for that long, the prediction is history
            probe = dev.infer(x[2:3], deadline_ms=DEADLINE_MS)
            assert probe.local and probe.reason.startswith("deadline: predicted round trip"), probe.reason
            assert probe.bytes_sent > 0  # answered at once, and sent to measure
            give_up = time.monotonic() + RECONNECT_WAIT_S
            while dev.dropped_replies == 0 and time.monotonic() < give_up:
                time.sleep(0.01)
            assert dev.rtt_ms < DEADLINE_MS  # its late reply, measured afresh (not averaged with the stall's)
            after = [dev.infer(x[i: i + 1], deadline_ms=DEADLINE_MS) for i in range(3, 6)]
            assert [a.answered_by for a in after] == ["server"] * 3, [a.reason for a in after]


def test_confident_exits_answer_most_requests_locally(exits_bundle, engine, digits_test_set, cli_argv, wait_online):
    x, y = digits_test_set
    with Mosquitto() as broker, serving(exits_bundle, broker.url, cli_argv, wait_online):
        with Device(exits_bundle, broker=broker.url, engine=engine, budget="balanced") as dev:
            rs = [dev.infer(x[i: i + 1], deadline_ms=DEADLINE_MS * 10) for i in range(len(x))]
    local = [r for r in rs if r.local]
    assert len(local) >= len(rs) // 2
    assert all(r.reason.startswith("confident: max_prob") for r in local)
    top1 = np.array([int(r.output[exits_bundle.outputs[0].name].argmax()) for r in rs])
    assert np.mean(top1 == y) >= 0.95
    assert np.mean([r.front_compute_fraction for r in rs]) < 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_device_starts_with_the_broker_down_and_connects_later(exits_bundle, engine, digits_test_set):
    x, _ = digits_test_set
    port = _free_port()
    with Device(exits_bundle, broker=f"mqtt://127.0.0.1:{port}", engine=engine, budget="off") as dev:
        r = dev.infer(x[:1], deadline_ms=DEADLINE_MS)
        assert r.local and r.reason.startswith("server unreachable: cannot reach the MQTT broker")
        with Mosquitto(port=port):
            t0 = time.monotonic()
            while not dev._client.connected and time.monotonic() - t0 < RECONNECT_WAIT_S:
                time.sleep(0.1)
            assert dev._client.connected, "the device did not connect after the broker came up"


def test_budget_on_a_bundle_without_exits_is_a_config_error(digits_bundle, broker):
    from edgerun.errors import ConfigError

    with pytest.raises(ConfigError, match="early exits"):
        Device(digits_bundle, broker=broker.url, engine="ort", budget="fast")


def test_a_batch_over_max_batch_says_how_to_raise_it(exits_bundle, engine, digits_test_set):
    """A batch of 16 failed in the engine with "load with a larger max_batch", an option Device lacked."""
    from edgerun.errors import ConfigError

    x, _ = digits_test_set
    url = f"mqtt://127.0.0.1:{_free_port()}"  # no broker: exits answer locally
    with Device(exits_bundle, broker=url, engine=engine, budget="off") as dev:
        with pytest.raises(ConfigError, match="larger max_batch"):
            dev.infer(x[:16], deadline_ms=DEADLINE_MS)
    with Device(exits_bundle, broker=url, engine=engine, budget="off", max_batch=16) as dev:
        r = dev.infer(x[:16], deadline_ms=DEADLINE_MS)
    assert r.local and r.output[exits_bundle.outputs[0].name].shape[0] == 16


def test_close_does_not_wait_for_a_background_connect_to_a_silent_broker(exits_bundle, engine, digits_test_set,
                                                                         monkeypatch):
    """A device with exits whose broker accepts TCP and never answers (hung, or the robot's network
    black-holed): its background connect waits seconds for a CONNACK, and close() joined that thread for up
    to 10 s, so Ctrl-C / SIGTERM of the robot's loop hung that long. close() now returns at once; a connect
    that succeeds after it ends its own client."""
    import threading

    from edgerun import transport
    from edgerun.errors import TransportError

    entered, release = threading.Event(), threading.Event()
    calls = []

    def stuck_open(self, client):
        calls.append(client)
        if len(calls) == 1:  # the constructor's connect: the broker is down
            raise TransportError("cannot reach the MQTT broker (test)")
        entered.set()  # the reconnector's: a broker that takes TCP and never sends its CONNACK
        release.wait(60)
        raise TransportError("did not accept the connection (test)")

    monkeypatch.setattr(Device, "_open", stuck_open)
    monkeypatch.setattr(transport.MqttClient, "close", lambda self, *a, **k: None)
    x, _ = digits_test_set
    dev = Device(exits_bundle, broker=f"mqtt://127.0.0.1:{_free_port()}", engine=engine, budget="off")
    try:
        assert dev.infer(x[:1], deadline_ms=DEADLINE_MS).local
        assert entered.wait(60), "the background reconnect never started"
        closed = threading.Event()
        closer = threading.Thread(target=lambda: (dev.close(), closed.set()), daemon=True)
        closer.start()
        returned_while_stuck = closed.wait(5)  # a bound on a hang, far under the 10 s the join took
    finally:
        release.set()
    closer.join(60)
    assert returned_while_stuck, "close() waited for the background connect"
