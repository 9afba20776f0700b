"""Dead broker, killed server, load split: the device never hangs and nothing is answered twice."""

from __future__ import annotations

import signal
import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgerun import transport
from edgerun.broker import Mosquitto
from edgerun.device import Device
from edgerun.errors import ConfigError, TransportError
from edgerun.server import serve

pytestmark = pytest.mark.integration

KILLED_SERVER_TIMEOUT_MS = 1500.0
HANG_GUARD_S = 30.0  # only to turn a hang into a failure, not a performance bound
N_SPLIT_REQUESTS = 60
RECONNECT_TRIES = 15  # x timeout 2 s: covers paho's reconnect backoff with margin


def dead_broker_url() -> str:
    with Mosquitto() as b:
        return b.url  # stopped on exit: nothing listens there any more


def sample(bundle) -> np.ndarray:
    return np.zeros((1, *bundle.inputs[0].shape[1:]), np.float32)


def test_device_with_dead_broker_raises_transport_error(digits_bundle):
    url = dead_broker_url()
    with pytest.raises(TransportError, match=rf"cannot reach the MQTT broker at {url}.*start one"):
        Device(digits_bundle, broker=url, engine="ort")


def test_server_with_dead_broker_raises_transport_error(digits_bundle):
    url = dead_broker_url()
    with pytest.raises(TransportError, match=rf"cannot reach the MQTT broker at {url}.*start one"):
        serve(digits_bundle, url)


def test_serve_cli_with_dead_broker_exits_with_a_clear_message(digits_bundle, cli_argv):
    url = dead_broker_url()
    p = subprocess.run([*cli_argv, "serve", str(digits_bundle.path), "--broker", url],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "cannot reach the MQTT broker" in p.stderr + p.stdout and url in p.stderr + p.stdout


def test_no_server_means_transport_error_naming_the_bundle(digits_bundle, broker):
    with Device(digits_bundle, broker=broker.url, engine="ort", timeout_ms=300) as dev:
        with pytest.raises(TransportError, match=rf"no reply from a server for bundle {digits_bundle.topic_id}"):
            dev.infer(sample(digits_bundle))
        with pytest.raises(TransportError, match="within 100 ms"):
            dev.infer(sample(digits_bundle), deadline_ms=100)
        assert not dev._pending  # a timed-out request leaves nothing behind


@pytest.mark.parametrize("bad,match", [
    (np.full((1, 1, 8, 8), np.nan, np.float32), "NaN or Inf"),
    (np.zeros((1, 3, 5, 5), np.float32), "has shape"),
    (np.zeros((1, 1, 8, 8), np.float64), "convert with"),
])
def test_bad_input_is_refused_before_anything_is_sent(digits_bundle, broker, bad, match):
    """No server runs: a request that reached the wire would time out instead of raising ConfigError."""
    with Device(digits_bundle, broker=broker.url, engine="ort", timeout_ms=300) as dev:
        with pytest.raises(ConfigError, match=match):
            dev.infer(bad)
        assert not dev._pending


def test_run_cli_with_an_unreadable_input_file_says_what_to_pass(digits_bundle, broker, cli_argv, tmp_path):
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not an array")
    for path in (junk, tmp_path / "missing.npy"):
        p = subprocess.run([*cli_argv, "run", str(digits_bundle.path), "--broker", broker.url, "--input", str(path)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode != 0 and "Traceback" not in p.stderr
        assert f"cannot read --input {path}" in p.stderr and "np.save" in p.stderr


def test_server_killed_mid_request_gives_transport_error_not_a_hang(digits_bundle, broker, start_servers):
    (server,) = start_servers(1)
    x = sample(digits_bundle)
    with Device(digits_bundle, broker=broker.url, engine="ort", timeout_ms=KILLED_SERVER_TIMEOUT_MS) as dev:
        assert dev.infer(x).answered_by == "server"
        # Freeze the server so the next request is delivered but cannot be answered, then kill it.
        server.send(signal.SIGSTOP)
        outcome: list[BaseException | object] = []

        def ask() -> None:
            try:
                outcome.append(dev.infer(x))
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                outcome.append(exc)

        t = threading.Thread(target=ask)
        t.start()
        time.sleep(0.3)
        server.send(signal.SIGKILL)
        t.join(HANG_GUARD_S)
        assert not t.is_alive(), "infer() hung after the server was killed"
    assert len(outcome) == 1 and isinstance(outcome[0], TransportError), outcome
    assert "no reply from a server" in str(outcome[0])
    assert server.stop() == -signal.SIGKILL


def test_two_servers_split_the_load_and_answer_each_request_once(digits_bundle, broker, start_servers):
    servers = start_servers(2)
    b = digits_bundle
    # A watcher sees every reply on the wire, to prove none is sent twice.
    seen: dict[int, int] = {}
    lock = threading.Lock()

    def on_reply(msg) -> None:
        rid = transport.correlation_id(msg.properties.CorrelationData)
        with lock:
            seen[rid] = seen.get(rid, 0) + 1

    watcher = transport.MqttClient(broker.url, "reply-watcher", on_message=on_reply)
    watcher.connect()
    watcher.subscribe(f"{transport.base_topic(b.model_id, b.topic_id)}/resp/+")
    rng = np.random.default_rng(0)
    xs = rng.random((N_SPLIT_REQUESTS, *b.inputs[0].shape[1:]), dtype=np.float32)
    devices = [Device(b, broker=broker.url, engine="ort", device_id=f"dev-{i}") for i in range(3)]
    try:
        with ThreadPoolExecutor(len(devices)) as pool:
            results = list(pool.map(lambda i: devices[i % len(devices)].infer(xs[i : i + 1]), range(len(xs))))
    finally:
        for d in devices:
            d.close()
    workers = {r.worker for r in results}
    assert len(workers) == 2, f"one worker served everything: {workers}"
    ids = [r.request_id for r in results]
    assert len(set(ids)) == len(ids) == N_SPLIT_REQUESTS
    assert sum(d.dropped_replies for d in devices) == 0
    for _ in range(100):  # the watcher may lag the devices by a few ms
        with lock:
            if len(seen) >= len(ids):
                break
        time.sleep(0.05)
    watcher.close()
    assert {rid: n for rid, n in seen.items() if rid in set(ids)} == {rid: 1 for rid in ids}
    assert [s.stop() for s in servers] == [0, 0]
    stats = [s.stats() for s in servers]
    assert sum(st["served"] for st in stats) == N_SPLIT_REQUESTS
    assert all(st["served"] > 0 for st in stats)


def test_serve_stops_cleanly_on_stop_event_and_publishes_offline(digits_bundle, broker):
    stop = threading.Event()
    ready = threading.Event()
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("stats", serve(digits_bundle, broker.url, stop=stop,
                                                                       ready=ready.set, worker_id="w-test")))
    t.start()
    assert ready.wait(HANG_GUARD_S)
    with Device(digits_bundle, broker=broker.url, engine="ort") as dev:
        dev.infer(sample(digits_bundle))
    stop.set()
    t.join(HANG_GUARD_S)
    assert not t.is_alive() and out["stats"].served == 1
    # the retained presence now says offline
    got = threading.Event()
    body: dict = {}

    def on_msg(msg) -> None:
        body.update(json.loads(msg.payload))
        got.set()

    c = transport.MqttClient(broker.url, "presence-reader", on_message=on_msg)
    c.connect()
    c.subscribe(transport.presence_topic(digits_bundle.model_id, digits_bundle.topic_id, "server", "w-test"))
    assert got.wait(HANG_GUARD_S)
    c.close()
    assert body["status"] == "offline" and body["id"] == "w-test"


def test_killed_server_leaves_offline_presence_via_last_will(digits_bundle, broker, spawn_server, wait_online):
    """The broker publishes the retained will when a worker vanishes without a DISCONNECT."""
    p = spawn_server()
    wait_online(digits_bundle, broker.url, 1, [p])
    p.stop(signal.SIGKILL)
    # The broker sees the TCP close at once (the process died), so the will fires without keepalive delay.
    status: list[str] = []
    got = threading.Event()

    def on_msg(msg) -> None:
        status.append(json.loads(msg.payload)["status"])
        if status[-1] == "offline":
            got.set()

    c = transport.MqttClient(broker.url, "will-reader", on_message=on_msg)
    c.connect()
    c.subscribe(f"{transport.base_topic(digits_bundle.model_id, digits_bundle.topic_id)}/presence/server/+")
    assert got.wait(HANG_GUARD_S), status
    c.close()


def test_server_and_device_reconnect_after_a_broker_restart(digits_bundle, spawn_server, wait_online):
    """Broker lost later: paho reconnects with backoff and renews the subscriptions on both sides."""
    first = Mosquitto().start()
    second = Mosquitto(port=first.port)
    try:
        server = spawn_server(url=first.url)
        wait_online(digits_bundle, first.url, 1, [server])
        x = sample(digits_bundle)
        with Device(digits_bundle, broker=first.url, engine="ort", timeout_ms=2000) as dev:
            assert dev.infer(x).answered_by == "server"
            first.stop()
            second.start()  # same port: both clients find it again on their own
            answered = None
            for _ in range(RECONNECT_TRIES):  # paho's backoff is 1 s doubling to 16 s
                try:
                    answered = dev.infer(x)
                    break
                except TransportError:
                    continue
            assert answered is not None and answered.answered_by == "server"
        assert server.stop() == 0
        assert "reconnecting" in server.stderr and "subscriptions renewed" in server.stderr
    finally:
        first.stop()
        second.stop()
