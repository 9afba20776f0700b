"""Other clients of the broker are not all edgerun: a request with a bad Response Topic must not end
`edgerun serve`, and a reply from something that is not a server for this bundle must not come back
as the model's answer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgerun import transport, wire
from edgerun.device import Device
from edgerun.errors import FrameError

pytestmark = pytest.mark.integration


def sample(bundle):
    return bundle.samples()[:1].astype(np.float32)


@pytest.mark.parametrize("resp_topic", ["robot/+/resp", "robot/#", ""])
def test_a_request_with_an_unusable_response_topic_does_not_end_the_server(digits_bundle, broker, start_servers,
                                                                             resp_topic):
    """A wildcard there made the reply's publish raise ValueError inside the serve loop: one message
    ended the worker (and N messages every worker of a group)."""
    (server,) = start_servers(1)
    cut = [np.zeros(tuple(1 if d is None else d for d in s.shape), np.float32) for s in digits_bundle.cut]
    frame = wire.encode(wire.Frame(kind=wire.Kind.REQUEST, request_id=9, seq=0, bundle_hash=digits_bundle.hash16,
                                   tensors=cut, meta={}))
    rogue = transport.MqttClient(broker.url, "rogue-requester")
    rogue.connect()
    try:
        topic = transport.request_topic(digits_bundle.model_id, digits_bundle.topic_id, "rogue")
        for payload in (frame, b"junk"):
            rogue.publish(topic, payload, response_topic=resp_topic, correlation=transport.correlation_bytes(9))
    finally:
        rogue.close()
    with Device(digits_bundle, broker=broker.url, engine="ort", timeout_ms=10000) as dev:
        assert dev.infer(sample(digits_bundle)).answered_by == "server"
    assert server.proc.poll() is None, "the server exited"
    server.stop()
    assert "Response Topic" in server.stderr and "Traceback" not in server.stderr


GOOD = np.zeros((1, 10), np.float32)
ROGUE_REPLIES = {
    "wrong shape": ([np.zeros((1, 3), np.float32)], {}),
    "wrong batch": ([np.zeros((7, 10), np.float32)], {}),
    "wrong dtype": ([np.zeros((1, 10), np.int8)], {}),
    "scalar": ([np.zeros((), np.float32)], {}),
    "server_us text": ([GOOD], {"server_us": "12ms"}),   # was a bare ValueError
    "server_us negative": ([GOOD], {"server_us": -5e6}),  # was negative timings
}


@pytest.mark.parametrize("case", list(ROGUE_REPLIES))
def test_a_reply_that_is_not_this_models_answer_is_refused(digits_bundle, broker, case):
    tensors, meta = ROGUE_REPLIES[case]
    responder = transport.MqttClient(broker.url, "rogue-responder")

    def answer(msg) -> None:
        req = wire.decode(msg.payload)
        reply = wire.encode(wire.Frame(kind=wire.Kind.REPLY, request_id=req.request_id, seq=0,
                                       bundle_hash=digits_bundle.hash16, tensors=tensors, meta=meta))
        threading.Thread(target=responder.publish, args=(msg.properties.ResponseTopic, reply),
                         kwargs={"correlation": msg.properties.CorrelationData}).start()

    responder._on_message = answer
    responder.connect()
    try:
        responder.subscribe(transport.shared_request_filter(digits_bundle.model_id, digits_bundle.topic_id,
                                                            "edgerun"))
        with Device(digits_bundle, broker=broker.url, engine="ort", timeout_ms=10000) as dev:
            with pytest.raises(FrameError, match="the reply's"):
                dev.infer(sample(digits_bundle))
    finally:
        responder.close()


def test_presence_is_announced_again_after_the_broker_comes_back(digits_bundle, spawn_server, wait_online):
    """After a broker restart (no persistence) a live server's retained "online" was gone, and after a
    keepalive drop its last will left "offline", while it went on serving."""
    from edgerun.broker import Mosquitto

    first = Mosquitto().start()
    second = Mosquitto(port=first.port)
    try:
        server = spawn_server(url=first.url)
        wait_online(digits_bundle, first.url, 1, [server])
        first.stop()
        second.start()  # same port: the server reconnects on its own (paho's backoff: 1 s, 2 s, ...)
        wait_online(digits_bundle, second.url, 1, [server])  # the retained presence on the new broker
    finally:
        first.stop()
        second.stop()


def test_a_closed_device_leaves_no_retained_presence(digits_bundle, broker):
    """Each Device has a new id; each clean close left a retained "offline" on the broker for good."""
    for _ in range(3):
        Device(digits_bundle, broker=broker.url, engine="ort").close()
    got: list[bytes] = []
    watcher = transport.MqttClient(broker.url, "presence-watcher", on_message=lambda m: got.append(m.payload))
    watcher.connect()
    try:
        watcher.subscribe(f"{transport.base_topic(digits_bundle.model_id, digits_bundle.topic_id)}/presence/device/+")
        time.sleep(0.5)  # retained messages come right after the SUBACK
    finally:
        watcher.close()
    assert got == []
