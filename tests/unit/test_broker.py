"""The private Mosquitto launcher and broker URL parsing."""

from __future__ import annotations

import shutil
import threading

import paho.mqtt.client as mqtt
import pytest

from edgerun import transport
from edgerun.broker import Mosquitto, parse_broker_url, port_open
from edgerun.errors import ConfigError, TransportError, UserError

_HAVE_MOSQUITTO = bool(shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto"))


def needs_mosquitto(fn):
    """These start a real broker process: marked integration so `-m "not integration"` stays process-free."""
    return pytest.mark.integration(pytest.mark.skipif(not _HAVE_MOSQUITTO, reason="mosquitto not installed")(fn))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1884", ("127.0.0.1", 1884)),
        ("tcp://broker.local:8883", ("broker.local", 8883)),
        ("mqtt://example.org", ("example.org", 1883)),
        ("10.0.0.2:1999", ("10.0.0.2", 1999)),
        ("localhost", ("localhost", 1883)),
        ("mqtt://[::1]:1883", ("::1", 1883)),
    ],
)
def test_parse_broker_url(url, expected):
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    "bad", ["", "   ", "http://h:1", "mqtt://h:notaport", "mqtt://h:70000", "mqtt://:1883", "mqtt://h:0", "mqtt://h:1/x"]
)
def test_parse_broker_url_rejects_bad_urls(bad):
    with pytest.raises(ConfigError, match="broker URL"):
        parse_broker_url(bad)


def test_missing_binary_says_how_to_install(monkeypatch):
    import edgerun.broker as broker

    monkeypatch.setattr(broker.os, "access", lambda *a: False)
    monkeypatch.setattr(broker.shutil, "which", lambda *a: None)
    with pytest.raises(UserError, match="apt-get install -y mosquitto"):
        Mosquitto()


@needs_mosquitto
def test_broker_starts_serves_mqtt5_and_stops():
    with Mosquitto() as b:
        assert b.url.startswith("mqtt://127.0.0.1:") and b.running
        got: list[bytes] = []
        done = threading.Event()

        def on_msg(msg):
            got.append(bytes(msg.payload))
            done.set()

        c = transport.MqttClient(b.url, "t-sub", on_message=on_msg)
        c.connect()
        c.subscribe("edgerun/test/#")
        c.publish("edgerun/test/x", b"hello", response_topic="edgerun/test/r", correlation=b"\x01" * 8)
        assert done.wait(5), "message did not come back through the broker"
        assert got == [b"hello"]
        c.close()
        port = b.port
    assert not b.running and not port_open("127.0.0.1", port)


@needs_mosquitto
def test_two_brokers_get_different_ports():
    with Mosquitto() as a, Mosquitto() as b:
        assert a.port != b.port


@needs_mosquitto
def test_dead_broker_gives_transport_error_with_url_and_hint():
    with Mosquitto() as b:
        url = b.url
    client = transport.MqttClient(url, "t-dead")
    with pytest.raises(TransportError,
                       match=r"cannot reach the MQTT broker at mqtt://127\.0\.0\.1:\d+.*"
                             r"is it running\? \(`edgerun broker` starts one"):
        client.connect(timeout_s=2)


@needs_mosquitto
def test_broker_that_cannot_bind_reports_its_log():
    with Mosquitto() as a:
        with pytest.raises(UserError, match="already in use"):
            Mosquitto(port=a.port, start_timeout_s=2).start()


def test_shared_subscription_filter_is_valid_for_paho():
    # paho validates filters on subscribe; a filter it rejects would fail only at run time.
    f = transport.shared_request_filter("m", "0" * 32, "edgerun")
    assert mqtt.topic_matches_sub(f.split("/", 2)[2], "edgerun/v1/m/" + "0" * 32 + "/req/dev")


def test_broker_that_exits_at_once_reports_did_not_start(tmp_path):
    fake = tmp_path / "fake-mosquitto"
    fake.write_text("#!/bin/sh\necho 'Error: bad config' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(UserError, match="did not start"):
        Mosquitto(binary=str(fake), start_timeout_s=2).start()


def test_negative_packet_size_is_a_config_error():
    with pytest.raises(ConfigError, match="max_packet_size"):
        Mosquitto(max_packet_size=-1, binary="/bin/true")


@needs_mosquitto
def test_interrupt_while_starting_stops_the_broker(monkeypatch):
    """Ctrl-C / SIGTERM while start() waits for the port: no `with` exit runs (__enter__ never
    returned), so start() itself must stop the process it spawned and remove its directory."""
    spawned = {}
    real_spawn = Mosquitto._spawn

    def spawn(self):
        real_spawn(self)
        spawned["proc"], spawned["dir"] = self._proc, self._dir.name

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Mosquitto, "_spawn", spawn)
    monkeypatch.setattr(Mosquitto, "_wait_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Mosquitto().start()
    assert spawned["proc"].poll() is not None
    import os

    assert not os.path.exists(spawned["dir"])


# -- children end with their parent (procs.die_with_parent) ----------------------------------
def test_a_child_started_from_the_main_thread_gets_the_parent_death_signal():
    from edgerun import procs

    argv = ["mosquitto", "-c", "x.conf"]
    wrapped = procs.die_with_parent(argv)
    if procs._setpriv_pdeathsig() is None:
        assert wrapped == argv  # no setpriv here: started as before
    else:
        assert wrapped[1:] == ["--pdeathsig", "TERM", "--", *argv]


def test_from_another_thread_or_when_turned_off_the_command_is_unchanged(monkeypatch):
    # The kernel sends the signal when the starting *thread* ends: a child started from a
    # short-lived thread would be killed with it, so none is set there.
    from edgerun import procs

    argv = ["python", "-m", "edgerun", "serve"]
    out: list[list[str]] = []
    t = threading.Thread(target=lambda: out.append(procs.die_with_parent(argv)))
    t.start()
    t.join()
    assert out == [argv]
    monkeypatch.setenv("EDGERUN_NO_PDEATHSIG", "1")
    assert procs.die_with_parent(argv) == argv


@needs_mosquitto
def test_a_broker_started_by_root_keeps_its_identity(tmp_path):
    # Switching to the `mosquitto` user would clear its parent-death signal.
    import os

    with Mosquitto() as broker:
        conf = (broker.log_path.parent / "mosquitto.conf").read_text()
        assert ("user root" in conf.splitlines()) == (os.geteuid() == 0)


# -- brokers that want a user and password ------------------------------------------------------
def test_credentials_come_from_the_url_and_never_show_in_messages():
    from edgerun.broker import broker_credentials, redact_broker_url

    assert broker_credentials("mqtt://robot:s%40cret@h:1884") == ("robot", "s@cret")
    assert broker_credentials("h:1884") == (None, None)
    assert redact_broker_url("mqtt://robot:s3cret@h:1884") == "mqtt://robot:***@h:1884"
    assert redact_broker_url("mqtt://h:1884") == "mqtt://h:1884"
    with pytest.raises(ConfigError) as exc:
        parse_broker_url("mqtt://robot:s3cret@h:notaport")
    assert "s3cret" not in str(exc.value)


@needs_mosquitto
def test_a_broker_with_passwords_takes_the_urls_and_names_a_refusal(tmp_path):
    """The user and password in the URL were dropped: the client retried as anonymous and then said
    the broker "did not accept the connection ... start one", though it was up and had refused us."""
    import subprocess

    from configured_mosquitto import configured_mosquitto

    pw = tmp_path / "passwd"
    pw.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "robot", "s3cret"], check=True, capture_output=True)
    with configured_mosquitto(tmp_path, f"allow_anonymous false\npassword_file {pw}\nuser root\n") as port:
        ok = transport.MqttClient(f"mqtt://robot:s3cret@127.0.0.1:{port}", "t-ok")
        ok.connect()
        ok.close()
        bad = transport.MqttClient(f"mqtt://robot:wrong@127.0.0.1:{port}", "t-bad")
        with pytest.raises(TransportError, match="refused the connection .*check the user and password") as exc:
            bad.connect(timeout_s=3)
        assert "wrong" not in str(exc.value) and "robot:***@" in str(exc.value)


def test_the_unsent_message_cap_refuses_past_it_and_zero_means_none():
    """Devices cap what paho may hold unsent (a backlog replayed after an outage); servers pass 0:
    paho counts replies awaiting the broker's ack against the cap, and a capped server lost replies
    it had computed under a burst."""
    capped = transport.MqttClient("mqtt://127.0.0.1:1", "t-capped", max_queued=2)  # never connected
    for i in range(2):
        capped.publish("t/x", b"1")
    with pytest.raises(TransportError, match="has not yet acknowledged the last 2 messages"):
        capped.publish("t/x", b"1")
    uncapped = transport.MqttClient("mqtt://127.0.0.1:1", "t-free", max_queued=0)
    for i in range(transport.MAX_QUEUED_MESSAGES + 10):
        uncapped.publish("t/x", b"1")


def test_a_broker_that_accepts_tcp_but_never_answers_is_named_as_silent_not_as_closing():
    """A frozen broker (mosquitto under SIGSTOP, a hung host): the kernel accepts the TCP connection and no
    CONNACK ever comes. The connect waited out its timeout and then said the broker "closed the connection
    before accepting it: does it listen with TLS?", because its own close() after the wait counted as the
    broker's: a robot's operator went looking for a TLS listener that was never there."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)  # accepted by the kernel, never read: a broker that does not answer
    try:
        c = transport.MqttClient(f"mqtt://127.0.0.1:{srv.getsockname()[1]}", "t-silent")
        with pytest.raises(TransportError) as exc:
            c.connect(timeout_s=0.3)
    finally:
        srv.close()
    assert "did not accept the connection within 0.3 s" in str(exc.value)
    assert "closed the connection" not in str(exc.value)
