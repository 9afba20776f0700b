"""A server answers bad frames with ERROR frames (or drops and counts them) and keeps serving."""

from __future__ import annotations

import struct
import threading
import zlib

import numpy as np
import pytest

from edgerun import codec, transport, wire
from edgerun.device import Device
from edgerun.errors import BundleError, FrameError

pytestmark = pytest.mark.integration

REPLY_WAIT_S = 20.0


class RawClient:
    """A bare paho client that publishes raw payloads as if it were a device."""

    def __init__(self, bundle, url: str, device_id: str = "raw-dev") -> None:
        self.req = transport.request_topic(bundle.model_id, bundle.topic_id, device_id)
        self.resp = transport.response_topic(bundle.model_id, bundle.topic_id, device_id)
        self.replies: dict[int, list[bytes]] = {}
        self.cond = threading.Condition()
        self.c = transport.MqttClient(url, f"edgerun-{device_id}", on_message=self._on)
        self.c.connect()
        self.c.subscribe(self.resp)

    def _on(self, msg) -> None:
        rid = transport.correlation_id(msg.properties.CorrelationData)
        with self.cond:
            self.replies.setdefault(rid, []).append(bytes(msg.payload))
            self.cond.notify_all()

    def ask(self, rid: int, payload: bytes, *, respond: bool = True) -> None:
        self.ask_info(rid, payload, respond=respond)

    def ask_info(self, rid: int, payload: bytes, *, respond: bool = True):
        """ask(), returning paho's MQTTMessageInfo (wait_for_publish: the broker has it)."""
        return self.c.publish(self.req, payload, response_topic=self.resp if respond else None,
                              correlation=transport.correlation_bytes(rid))

    def wait(self, rid: int) -> wire.Frame:
        with self.cond:
            assert self.cond.wait_for(lambda: rid in self.replies, REPLY_WAIT_S), f"no reply to {rid}"
            return wire.decode(self.replies[rid][0])

    def close(self) -> None:
        self.c.close()


def good_frame(bundle, rid: int, **over) -> wire.Frame:
    spec = bundle.cut[0]
    shape = (1, *spec.shape[1:])
    f = wire.Frame(wire.Kind.REQUEST, rid, 0, bundle.hash16, [np.zeros(shape, np.float32)], {})
    for k, v in over.items():
        setattr(f, k, v)
    return f


def coded_zeros(shape: tuple[int, ...]) -> wire.CodedTensor:
    p = codec.TSQParams(tau=1.0, max_err=0.01, layout="channel")
    return wire.CodedTensor(wire.CODEC_TSQ, 1, shape, p.to_bytes(), codec.encode(np.zeros(shape, np.float32), p))


def coded_bomb(bundle) -> wire.CodedTensor:
    """A valid coded cut tensor, small on the wire, over the server's frame limit once decoded."""
    per_sample = 4 * int(np.prod(bundle.cut[0].shape[1:]))
    t = coded_zeros((wire.DEFAULT_MAX_FRAME_BYTES // per_sample + 1, *bundle.cut[0].shape[1:]))
    assert len(t.payload) < wire.DEFAULT_MAX_FRAME_BYTES // 4
    return t


def empty_but_huge(bundle, rid: int) -> bytes:
    """A REQUEST of one raw float32 tensor of dims (0, 2**32-1, 2**32-1, 2**32-1): 0 bytes of payload, and more
    than any array can hold."""
    dims = (0, 2**32 - 1, 2**32 - 1, 2**32 - 1)
    head = struct.pack("<4sHBBQI16sIB3s", wire.MAGIC, 1, 1, 0, rid, 0, bundle.hash16, 0, 1, b"\0\0\0")
    body = head + struct.pack("<BBBBI4I", 0, 1, 4, 0, 0, *dims) + struct.pack("<Q", 0)
    return body + struct.pack("<I", zlib.crc32(body))


def test_bad_frames_get_error_frames_and_the_server_keeps_serving(digits_bundle, broker, start_servers):
    (server,) = start_servers(1)
    b = digits_bundle
    good = wire.encode(good_frame(b, 7))
    flipped = bytearray(good)
    flipped[wire.HEADER_SIZE + 30] ^= 0xFF
    cases = {
        1: (b"not a frame at all" * 4, "bad_magic"),
        2: (good[: len(good) // 2], None),  # truncated: the checksum cannot match either
        3: (bytes(20), "truncated"),
        4: (b"\0" * (wire.DEFAULT_MAX_FRAME_BYTES + 1), "too_large"),
        5: (wire.encode(good_frame(b, 5, bundle_hash=bytes(16))), "wrong_bundle"),
        6: (bytes(flipped), "bad_checksum"),
        7: (wire.encode(good_frame(b, 7, tensors=[np.zeros((1, 3), np.float32)])), "bad_tensors"),
        8: (wire.encode(good_frame(b, 8, tensors=[])), "bad_tensors"),
        9: (wire.encode(good_frame(b, 9, kind=wire.Kind.REPLY)), "bad_kind"),
        10: (wire.encode(good_frame(b, 10, tensors=[np.zeros((1, *b.cut[0].shape[1:]), np.int32)])), "bad_tensors"),
        11: (wire.encode(good_frame(b, 11, tensors=[coded_zeros((1, 3))])), "bad_tensors"),
        12: (wire.encode(good_frame(b, 12, tensors=[coded_bomb(b)])), "too_large"),
        13: (empty_but_huge(b, 13), "malformed"),  # was "internal": a bare ValueError making its array
    }
    raw = RawClient(b, broker.url)
    try:
        for rid, (payload, _) in cases.items():
            raw.ask(rid, payload)
        raw.ask(99, b"garbage without a response topic" * 4, respond=False)
        for rid, (_, code) in cases.items():
            frame = raw.wait(rid)
            assert frame.kind == wire.Kind.ERROR, rid
            assert frame.request_id == rid  # taken from Correlation Data when the frame is unreadable
            assert frame.meta["message"]
            if code is not None:
                assert frame.meta["code"] == code, (rid, frame.meta)
        # ... and a good request right after is served normally
        raw.ask(100, wire.encode(good_frame(b, 100)))
        ok = raw.wait(100)
        assert ok.kind == wire.Kind.REPLY and len(ok.tensors) == len(b.outputs)
        assert all(len(v) == 1 for v in raw.replies.values()), "a request was answered twice"
        assert 99 not in raw.replies
    finally:
        raw.close()
    with Device(b, broker=broker.url, engine="ort") as dev:
        x = np.zeros((1, *b.inputs[0].shape[1:]), np.float32)
        assert dev.infer(x).answered_by == "server"
    assert server.stop() == 0
    stats = server.stats()
    assert stats["served"] == 2
    assert sum(stats["errors"].values()) == len(cases)
    assert stats["dropped"] == {"bad_magic": 1}
    assert stats["received"] == len(cases) + 3


def test_server_error_frames_become_the_right_exceptions(digits_bundle, broker):
    """A fake server answers with ERROR frames; the device raises the mapped EdgerunError subclass."""
    b = digits_bundle
    codes = iter(["wrong_bundle", "bad_tensors"])

    def fake_server(msg) -> None:
        corr = msg.properties.CorrelationData
        rid = transport.correlation_id(corr)
        srv.publish(msg.properties.ResponseTopic, wire.error_frame(rid, b.hash16, next(codes), "told you"),
                    correlation=corr)

    srv = transport.MqttClient(broker.url, "fake-server", on_message=fake_server)
    srv.connect()
    srv.subscribe(transport.shared_request_filter(b.model_id, b.topic_id, "edgerun"))
    x = np.zeros((1, *b.inputs[0].shape[1:]), np.float32)
    try:
        with Device(b, broker=broker.url, engine="ort", timeout_ms=10_000) as dev:
            with pytest.raises(BundleError, match="told you"):
                dev.infer(x)
            with pytest.raises(FrameError, match="told you") as ei:
                dev.infer(x)
            assert ei.value.code == "bad_tensors"
    finally:
        srv.close()


def test_duplicate_and_unknown_replies_are_dropped_and_counted(digits_bundle, broker):
    """A reply for an unknown or already answered request id is never delivered twice."""
    b = digits_bundle
    out_spec = b.outputs[0]

    def double_server(msg) -> None:
        corr = msg.properties.CorrelationData
        rid = transport.correlation_id(corr)
        reply = wire.encode(wire.Frame(wire.Kind.REPLY, rid, 0, b.hash16,
                                       [np.zeros((1, *out_spec.shape[1:]), np.float32)], {"server_us": 1}))
        for _ in range(2):
            srv.publish(msg.properties.ResponseTopic, reply, correlation=corr)
        srv.publish(msg.properties.ResponseTopic, reply, correlation=transport.correlation_bytes(rid + 12345))

    srv = transport.MqttClient(broker.url, "double-server", on_message=double_server)
    srv.connect()
    srv.subscribe(transport.shared_request_filter(b.model_id, b.topic_id, "edgerun"))
    x = np.zeros((1, *b.inputs[0].shape[1:]), np.float32)
    try:
        with Device(b, broker=broker.url, engine="ort") as dev:
            r = dev.infer(x)
            assert r.output[out_spec.name].shape == (1, *out_spec.shape[1:])
            done = threading.Event()
            for _ in range(100):  # the extra replies arrive just after the first
                if dev.dropped_replies >= 2:
                    done.set()
                    break
                done.wait(0.05)
            assert dev.dropped_replies == 2
    finally:
        srv.close()
