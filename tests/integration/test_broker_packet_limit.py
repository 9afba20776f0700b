"""A broker with a Maximum Packet Size (mosquitto's `max_packet_size`, told to clients in its CONNACK).

A frame over it used to be sent anyway: the broker dropped the connection, paho sent the frame again after
each reconnect, and the device ended at its deadline saying to start `edgerun serve` (the server, whose reply
was over it, lost the broker in a loop). Now nothing over the limit is sent: the sender is told the size and
the limit at once, the connection stays up, and the next request that fits is answered."""

from __future__ import annotations

import subprocess
import threading

import numpy as np
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgerun import transport
from edgerun.broker import Mosquitto
from edgerun.device import Device
from edgerun.errors import FrameError

pytestmark = pytest.mark.integration

EXIT_BROKER = 4
EXPANDER = '''
import torch
import torch.nn as nn

def expander():  # a decoder: 16 values cross the cut, 4096 come back
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4096)), torch.randn(1, 8)
'''


def _delivered(url: str, topic: str, payload: bytes, props_of_a_request: bool) -> bool:
    """Whether the broker delivers ``payload`` published on ``topic`` (with a request's properties or none),
    the size check of our client turned off: the broker's own verdict."""
    got, sub = threading.Event(), transport.MqttClient(url, "limit-sub", on_message=lambda m: got.set())
    pub = transport.MqttClient(url, "limit-pub")
    sub.connect(), pub.connect()
    try:
        sub.subscribe(topic)
        pub.max_packet_bytes = 0
        kw = dict(response_topic="r/dev", correlation=bytes(8), expiry_s=2) if props_of_a_request else {}
        pub.publish(topic, payload, **kw)
        return got.wait(3.0)
    finally:
        sub.close(), pub.close()


@pytest.mark.parametrize("payload_bytes, props, length_bytes", [(3000, True, 2), (20000, False, 3)])
def test_the_packet_size_counted_is_the_brokers(payload_bytes, props, length_bytes):
    """Our count is the whole packet, as MQTT 5.0 (3.1.2.11.4) counts it: the topic, the packet id, the
    properties, the fixed header. Mosquitto 2.0 leaves the fixed header's remaining-length bytes (2 and 3
    here) out of its count: it takes the packet at our count minus those and refuses it one byte under."""
    topic = "edgerun/v1/limit/" + "t" * 40
    p = Properties(PacketTypes.PUBLISH) if props else None
    if p is not None:
        p.ResponseTopic, p.CorrelationData, p.MessageExpiryInterval = "r/dev", bytes(8), 2
    size = transport.publish_packet_bytes(topic, payload_bytes, p)
    with Mosquitto(max_packet_size=size - length_bytes) as b:
        assert _delivered(b.url, topic, bytes(payload_bytes), props)
    with Mosquitto(max_packet_size=size - length_bytes - 1) as b:
        assert not _delivered(b.url, topic, bytes(payload_bytes), props)


@pytest.fixture
def small_broker():
    """A broker that takes one digits request (2,312 B as a packet) but not two samples in one."""
    with Mosquitto(max_packet_size=3000) as b:
        yield b


def test_a_request_over_the_limit_is_refused_before_sending_and_the_next_one_is_answered(
        digits_bundle, small_broker, device_engine, cli_argv, wait_online):
    x = digits_bundle.samples()[:2].astype(np.float32)
    server = subprocess.Popen([*cli_argv, "serve", str(digits_bundle.path), "--broker", small_broker.url],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_online(digits_bundle, small_broker.url, 1, [])
        with Device(digits_bundle, broker=small_broker.url, engine=device_engine, timeout_ms=20000) as dev:
            assert dev._client.max_packet_bytes == 3000
            with pytest.raises(FrameError, match=r"over the maximum packet size of 3000 bytes .*max_packet_size") \
                    as err:
                dev.infer(x)
            assert err.value.code == "too_large" and "2 sample(s)" in str(err.value)
            assert dev._client.connected  # nothing went out: the broker kept us
            assert dev.infer(x[:1]).answered_by == "server"
    finally:
        server.kill(), server.wait()


def test_with_exits_the_deepest_exit_answers_a_request_over_the_limit(small_broker, tmp_path):
    from edgerun.exporters import ExportConfig, export

    b = export("zoo:digits-cnn", ExportConfig(cut="block1", exits="auto", evaluate=False), tmp_path / "exits")
    x = b.samples()[:2].astype(np.float32)
    with Device(b, broker=small_broker.url, budget="off", timeout_ms=20000) as dev:
        for _ in range(2):  # the second is refused for its size too, not skipped for a server thought unreachable
            r = dev.infer(x)
            assert r.answered_by.startswith("exit:") and "not sent" in r.reason and "3000 bytes" in r.reason
        assert dev._client.connected


def test_a_reply_over_the_limit_comes_back_as_an_error_saying_so(tmp_path, cli_argv, wait_online):
    """16 values go up, 4,096 come back: the reply (16 KiB) is over a 4,000-byte limit the request is under."""
    from edgerun.exporters import ExportConfig, export

    (tmp_path / "model.py").write_text(EXPANDER)
    b = export(f"{tmp_path / 'model.py'}:expander", ExportConfig(cut=None, evaluate=False), tmp_path / "bundle")
    with Mosquitto(max_packet_size=4000) as broker:
        server = subprocess.Popen([*cli_argv, "serve", str(b.path), "--broker", broker.url],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_online(b, broker.url, 1, [])
            with Device(b, broker=broker.url, engine="ort", timeout_ms=20000) as dev:
                for _ in range(2):  # the server kept its connection: the second is refused as fast
                    with pytest.raises(FrameError, match="reply was not sent: the message is 16.* bytes .* over "
                                                         "the maximum packet size of 4000") as err:
                        dev.infer(np.zeros((1, 8), np.float32))
                    assert err.value.code == "too_large"
        finally:
            server.terminate()
            _, err_text = server.communicate(timeout=30)
    assert "lost the broker" not in err_text and err_text.count("was not sent") == 2


def test_the_cpp_device_refuses_a_request_over_the_limit_naming_it(cpp_device, digits_bundle, small_broker,
                                                                    tmp_path):
    np.save(tmp_path / "x.npy", digits_bundle.samples()[:2].astype(np.float32))
    r = subprocess.run([str(cpp_device), str(digits_bundle.path), "--broker", small_broker.url, "--input",
                        str(tmp_path / "x.npy"), "--deadline-ms", "60000"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == EXIT_BROKER, r.stderr
    assert "bytes, over the maximum packet size of 3000 bytes of the broker" in r.stderr
    assert "max_packet_size" in r.stderr and r.stdout == ""

