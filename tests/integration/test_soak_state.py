"""Endurance guards: state that must not grow while a device or a server runs for days.

Each test drives a real Mosquitto and a real `edgerun serve` through what weeks of a robot's life do many
times over (the broker restarted, a server frozen so that requests time out, devices that come and go) and
then counts the state left behind: bookkeeping entries, pending requests, file descriptors, threads,
retained messages. The counts are deterministic; the waits are hang guards only.
benchmarks/bench_soak.py measures the same over long runs (RSS, fds, threads of device, server, broker)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from conftest import ServerProc, wait_servers_online
from edgerun import transport
from edgerun.broker import Mosquitto
from edgerun.errors import TransportError

pytestmark = pytest.mark.integration
HANG_GUARD_S = 60.0
FD_SLACK = 2  # a socket the kernel has not finished closing, a log file opened late


def _fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _threads(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _until(cond, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > HANG_GUARD_S:
            pytest.fail(f"hang guard: {what}")
        time.sleep(0.05)


def _answered_by_server(dev, x) -> None:
    """Retry until the server answers (after a restart the device and the server each reconnect)."""
    def ok() -> bool:
        try:
            return dev.infer(x, deadline_ms=2000).answered_by == "server"
        except TransportError:
            return False
    _until(ok, "no answer from the server")


def test_broker_restarts_leave_no_subscription_bookkeeping(digits_bundle, digits_test_set, device_engine):
    """Each reconnect renews the device's subscription; its SUBACK, which nobody waits for, was filed as
    "arrived early" and kept for good: one entry per subscription and broker restart (4 restarts: 4), and once
    paho's 16-bit message id came round, a later subscribe() with that id returned before its own SUBACK. The
    device's descriptors and threads also come back to where they were after each restart."""
    from edgerun.device import Device

    x = digits_test_set[0][:1]
    first = Mosquitto().start()
    port = first.port
    server = ServerProc(digits_bundle, first.url)
    brokers = [first]
    try:
        wait_servers_online(digits_bundle, first.url, 1, [server])
        with Device(digits_bundle, broker=first.url, engine=device_engine) as dev:
            _answered_by_server(dev, x)
            fds, threads = _fds(), _threads()
            for _ in range(4):
                brokers[-1].stop()
                _until(lambda: not dev._client.connected, "the device did not see the broker go")
                brokers.append(Mosquitto(port=port).start())
                _answered_by_server(dev, x)  # renewed: its reply comes on the response topic again
            with dev._client._lock:
                acks = dict(dev._client._acks)
            assert acks == {}, f"{len(acks)} subscription acks kept after 4 reconnects"
            assert _fds() <= fds + FD_SLACK, (fds, _fds())
            assert _threads() == threads
    finally:
        server.stop(signal.SIGKILL)
        for b in brokers:
            b.stop()


@pytest.mark.parametrize("hedge_ms", [None, 5.0], ids=["plain", "hedged"])
def test_requests_that_time_out_leave_nothing_pending(digits_bundle, digits_test_set, device_engine, broker,
                                                      monkeypatch, hedge_ms):
    """The server frozen (SIGSTOP): every request times out. None stays in the device's pending map; their ids
    are remembered (so that a late reply is not "unknown") up to LATE_IDS_KEPT, oldest out; after the server
    thaws, the device answers again and its pending map is empty."""
    from edgerun import device as device_mod
    from edgerun.device import Device

    kept = 8
    monkeypatch.setattr(device_mod, "LATE_IDS_KEPT", kept)
    monkeypatch.setattr(device_mod, "HEDGE_LOSERS_KEPT", kept)
    x = digits_test_set[0][:1]
    server = ServerProc(digits_bundle, broker.url)
    try:
        wait_servers_online(digits_bundle, broker.url, 1, [server])
        with Device(digits_bundle, broker=broker.url, engine=device_engine, hedge_ms=hedge_ms) as dev:
            _answered_by_server(dev, x)
            server.send(signal.SIGSTOP)
            n = 3 * kept
            for _ in range(n):
                with pytest.raises(TransportError, match="no reply"):
                    dev.infer(x, deadline_ms=30)
            assert len(dev._pending) == 0
            assert len(dev._late_ids) == kept  # each went late, the oldest forgotten past the cap
            assert len(dev._hedge_losers) <= kept  # copies that lost to a twin answered before the freeze
            server.send(signal.SIGCONT)
            _answered_by_server(dev, x)
            assert len(dev._pending) == 0
            assert len(dev._late_ids) <= kept and len(dev._hedge_losers) <= kept
    finally:
        server.send(signal.SIGCONT)
        server.stop(signal.SIGKILL)


def test_devices_that_came_and_went_leave_nothing_behind(digits_bundle, digits_test_set, device_engine, broker):
    """40 short-lived devices, each opening, asking 5 times and closing, against one `serve` worker: the
    worker's descriptors and threads are where they were after the first device, and the broker keeps no
    retained presence of any of them (each Device has a new id: one left behind per device would pile up).
    In the devices' process, a closed Device is gone once dropped, with no wait for the cyclic garbage
    collector: paho's wake-up socket pair stayed open and its callbacks held the Device (engine included) in a
    reference cycle, 2 sockets per closed Device until a full collection."""
    import gc
    import weakref

    from edgerun.device import Device

    x = digits_test_set[0][:1]
    server = ServerProc(digits_bundle, broker.url)
    gc_was_on = gc.isenabled()
    try:
        wait_servers_online(digits_bundle, broker.url, 1, [server])
        with Device(digits_bundle, broker=broker.url, engine=device_engine) as dev:
            _answered_by_server(dev, x)
        del dev
        gc.collect()
        fds, threads = _fds(server.pid), _threads(server.pid)
        my_fds = _fds()
        gone = []
        gc.disable()  # what refcounting alone frees: a process that allocates little rarely runs a full collection
        for _ in range(40):
            with Device(digits_bundle, broker=broker.url, engine=device_engine) as dev:
                for _ in range(5):
                    assert dev.infer(x, deadline_ms=5000).answered_by == "server"
            gone.append(weakref.ref(dev))
            del dev
        assert _fds() <= my_fds + FD_SLACK, (my_fds, _fds())
        assert sum(ref() is not None for ref in gone) == 0, "closed Devices kept alive by a reference cycle"
        assert _fds(server.pid) <= fds + FD_SLACK, (fds, _fds(server.pid))
        assert _threads(server.pid) == threads
        assert _retained_device_presence(digits_bundle, broker.url) == []
    finally:
        if gc_was_on:
            gc.enable()
        server.stop(signal.SIGKILL)


def _retained_device_presence(bundle, url: str) -> list[str]:
    """Device presence topics the broker keeps retained (a fresh subscriber gets them at once)."""
    got: list[str] = []
    done = threading.Event()
    marker = f"{transport.base_topic(bundle.model_id, bundle.topic_id)}/presence/device/zz-soak-marker"

    def on_msg(msg) -> None:
        if msg.topic == marker:  # published after the SUBACK: the retained ones came before it
            done.set()
        elif msg.retain and msg.payload:
            got.append(f"{msg.topic} {json.loads(msg.payload).get('status')}")

    watcher = transport.MqttClient(url, f"soak-watch-{os.getpid()}", on_message=on_msg)
    watcher.connect()
    try:
        watcher.subscribe(transport.presence_filter(bundle.model_id, bundle.topic_id, "device"))
        watcher.publish(marker, b"{}")
        _until(done.is_set, "the marker did not come back")
    finally:
        watcher.close()
    return got
