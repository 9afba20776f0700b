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
RECONNECT_WAIT_S = 30.0  # covers paho's reconnect backoff (1 s doubling) with margin


def dead_broker_url() -> str:
    with Mosquitto() as b:
        return b.url  # stopped on exit: nothing listens there any more


def sample(bundle) -> np.ndarray:
    return np.zeros((1, *bundle.inputs[0].shape[1:]), np.float32)


def test_device_with_dead_broker_raises_transport_error(digits_bundle):
    url = dead_broker_url()
    with pytest.raises(TransportError, match=rf"cannot reach the MQTT broker at {url}.*`edgerun broker` starts one"):
        Device(digits_bundle, broker=url, engine="ort")


def test_server_with_dead_broker_raises_transport_error(digits_bundle):
    url = dead_broker_url()
    with pytest.raises(TransportError, match=rf"cannot reach the MQTT broker at {url}.*`edgerun broker` starts one"):
        serve(digits_bundle, url)


def test_serve_cli_with_dead_broker_exits_with_a_clear_message(digits_bundle, cli_argv):
    url = dead_broker_url()
    p = subprocess.run([*cli_argv, "serve", str(digits_bundle.path), "--broker", url],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "cannot reach the MQTT broker" in p.stderr + p.stdout and url in p.stderr + p.stdout


def test_no_server_means_transport_error_naming_the_bundle_at_the_brokers_puback(digits_bundle, broker):
    """With no `serve` subscribed the broker drops the request and says so in its PUBACK (MQTT 5 reason 0x10, no
    matching subscribers): the device said "no reply ... is `edgerun serve` running?" only at its deadline."""
    with Device(digits_bundle, broker=broker.url, engine="ort", timeout_ms=60_000) as dev:
        for _ in range(2):
            with pytest.raises(TransportError, match=rf"nothing subscribes to .*{digits_bundle.topic_id}.*"
                                                     r"No matching subscribers.*start `edgerun serve`"):
                dev.infer(sample(digits_bundle))
        assert not dev._pending  # an ended request leaves nothing behind


def test_a_server_that_comes_late_answers_the_next_request(digits_bundle, broker, start_servers):
    """The PUBACK's "no subscriber" ends one request; it does not mark the device or the topic as dead."""
    with Device(digits_bundle, broker=broker.url, engine="ort", timeout_ms=60_000) as dev:
        with pytest.raises(TransportError, match="No matching subscribers"):
            dev.infer(sample(digits_bundle))
        start_servers(1)
        assert dev.infer(sample(digits_bundle)).answered_by == "server"


@pytest.mark.parametrize("bad,match", [
    (np.full((1, 1, 8, 8), np.nan, np.float32), "NaN or Inf"),
    (np.zeros((1, 3, 5, 5), np.float32), "has shape"),
    (np.zeros((1, 1, 8, 8), np.float64), "convert with"),
    # finite, but the front half overflows: NaN / Inf at the cut was sent, and answered as a class
    (np.full((1, 1, 8, 8), 3e38, np.float32), "NaN or Inf at the cut"),
])
def test_bad_input_is_refused_before_anything_is_sent(digits_bundle, broker, bad, match):
    """No server runs: a request that reached the wire would time out instead of raising ConfigError."""
    with Device(digits_bundle, broker=broker.url, engine="ort", timeout_ms=300) as dev:
        with pytest.raises(ConfigError, match=match):
            dev.infer(bad)
        assert not dev._pending


@pytest.mark.parametrize("deadline_ms", [0.0, -5.0, float("inf"), float("nan")])
def test_a_deadline_must_be_a_finite_positive_number_of_ms(digits_bundle, broker, deadline_ms):
    # inf used to end in an OverflowError from the reply wait
    with Device(digits_bundle, broker=broker.url, engine="ort", timeout_ms=300) as dev:
        with pytest.raises(ConfigError, match="finite number of ms > 0"):
            dev.infer(sample(digits_bundle), deadline_ms=deadline_ms)


def test_run_cli_with_an_unreadable_input_file_says_what_to_pass(digits_bundle, broker, cli_argv, tmp_path):
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not an array")
    for path in (junk, tmp_path / "missing.npy"):
        p = subprocess.run([*cli_argv, "run", str(digits_bundle.path), "--broker", broker.url, "--input", str(path)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode != 0 and "Traceback" not in p.stderr
        assert f"cannot read --input {path}" in p.stderr and "np.save" in p.stderr


def test_run_cli_checks_every_input_sample_before_sending(digits_bundle, broker, cli_argv, tmp_path):
    """Each of these was a traceback, "Aborted.", a silent exit 0 or an error naming the wrong sample."""
    with_nan = np.zeros((3, 1, 8, 8), np.float32)
    with_nan[1, 0, 2, 2] = np.nan
    cases = {
        "empty.npy": (None, "cannot read --input"),                # 0 bytes: numpy's EOFError
        "scalar.npy": (np.float32(1), "holds no samples"),         # 0-d
        "none.npy": (np.zeros((0, 1, 8, 8), np.float32), "holds no samples"),
        "nan.npy": (with_nan, "sample 1 holds NaN"),                # named by its index in the file
        "huge.npy": (np.full((2, 1, 8, 8), 1e300), "beyond float32's range"),  # float64 -> inf
    }
    for name, (arr, match) in cases.items():
        path = tmp_path / name
        if arr is None:
            path.write_bytes(b"")
        else:
            np.save(path, arr)
        p = subprocess.run([*cli_argv, "run", str(digits_bundle.path), "--broker", broker.url, "--input", str(path)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "Traceback" not in p.stderr, (name, p.stderr)
        assert match in p.stderr, (name, p.stderr)
    p = subprocess.run([*cli_argv, "run", str(digits_bundle.path), "--broker", broker.url, "--limit", "-1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--limit -1" in p.stderr  # was: all samples but the last


def test_a_deadline_shorter_than_the_round_trip_is_named_as_the_cause(digits_bundle, broker, start_servers):
    """With a server up, a too-short deadline said "is `edgerun serve` running?", and the reply that
    came after it was logged as one for an unknown request."""
    start_servers(1)
    x = sample(digits_bundle)
    with Device(digits_bundle, broker=broker.url, engine="ort", timeout_ms=KILLED_SERVER_TIMEOUT_MS) as dev:
        assert dev.infer(x).answered_by == "server"  # a measured round trip
        with pytest.raises(TransportError, match=r"round trips to the server have taken .* give a longer deadline"):
            dev.infer(x, deadline_ms=1e-3)
        deadline = time.monotonic() + HANG_GUARD_S
        while dev.dropped_replies == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dev.dropped_replies == 1 and not dev._late_ids  # the late reply, recognised as late
        assert dev.infer(x).answered_by == "server"


def test_a_reply_between_the_deadline_and_the_bookkeeping_counts_as_late(digits_bundle, broker, start_servers):
    """A reply that came after infer() gave up but before it settled its pending ids resolved a future
    nobody read: not counted as dropped, its round trip not learnt (seen as a flaky CI run of the test
    above on a loaded machine). The window is held open here until the reply is in."""
    start_servers(1)
    x = sample(digits_bundle)
    with Device(digits_bundle, broker=broker.url, engine="ort", timeout_ms=KILLED_SERVER_TIMEOUT_MS) as dev:
        assert dev.infer(x).answered_by == "server"
        settle = dev._settle

        def settle_after_the_reply(fut, sent, in_time=True):
            deadline = time.monotonic() + HANG_GUARD_S
            while not fut.done() and time.monotonic() < deadline:
                time.sleep(0.005)
            settle(fut, sent, in_time)

        dev._settle = settle_after_the_reply
        rtt_before = dev.rtt_ms
        with pytest.raises(TransportError, match="give a longer deadline"):
            dev.infer(x, deadline_ms=1e-3)
        assert dev.dropped_replies == 1 and not dev._late_ids and not dev._pending
        assert dev.rtt_ms != rtt_before  # the late round trip was learnt
        dev._settle = settle
        assert dev.infer(x).answered_by == "server"


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
            give_up = time.monotonic() + RECONNECT_WAIT_S  # paho's backoff is 1 s doubling to 16 s
            while answered is None and time.monotonic() < give_up:
                try:
                    answered = dev.infer(x)
                except TransportError:  # at once while the device is disconnected: nothing is sent
                    time.sleep(0.1)
            assert answered is not None and answered.answered_by == "server"
        assert server.stop() == 0
        assert "reconnecting" in server.stderr and "subscriptions renewed" in server.stderr
    finally:
        first.stop()
        second.stop()


def test_with_the_broker_gone_a_request_fails_at_once_and_nothing_piles_up(digits_bundle):
    """paho queued every request made while the broker was away (unbounded: ~600 MB in a 15 s outage
    at 4 MB per request) and replayed them all on reconnect; each also waited out its whole timeout."""
    from edgerun.broker import Mosquitto

    b = Mosquitto().start()
    try:
        with Device(digits_bundle, broker=b.url, engine="ort", timeout_ms=30000) as dev:
            b.stop()
            deadline = time.monotonic() + HANG_GUARD_S
            while dev._client.connected and time.monotonic() < deadline:
                time.sleep(0.02)
            for _ in range(5):  # refused before publishing: no wait for a reply that cannot come
                with pytest.raises(TransportError, match="nothing was sent"):
                    dev.infer(sample(digits_bundle))
            assert len(dev._client._client._out_messages) == 0 and not dev._pending
    finally:
        b.stop()


def test_two_devices_given_one_device_id_do_not_kick_each_other_off_the_broker(digits_bundle, broker, start_servers):
    """A robot names its devices after itself (device_id="robot7"), e.g. one Device per model it runs. The MQTT
    client id was "edgerun-<device_id>" with no random part, so the second connection took over the first's
    session, the first reconnected and took it back, and so on: every other request failed with "lost the
    broker". Client ids end in random hex, as the server's do (docs/TOPICS.md)."""
    start_servers(1)
    x = digits_bundle.samples()[:1]
    a = Device(digits_bundle, broker=broker.url, engine="ort", device_id="robot7")
    b = Device(digits_bundle, broker=broker.url, engine="ort", device_id="robot7")
    try:
        answered = [d.infer(x, deadline_ms=5000).answered_by for _ in range(10) for d in (a, b)]
    finally:
        a.close()
        b.close()
    assert answered == ["server"] * 20
