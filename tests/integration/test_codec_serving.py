"""A tsq bundle served for real: the device's C++ encoder, Mosquitto, an `edgerun serve` process
and its C++ decoder give the answers of the codec's in-process round trip, and what crosses the
broker is the coded frame, smaller than the raw one."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest

from edgerun import codec, transport, wire
from edgerun.bundle import Bundle
from edgerun.device import Device
from edgerun.engine import make_engine

pytestmark = pytest.mark.integration

# Same front, same payload; the server's C++ decoder and the numpy reference differ by a few
# ulps at most (one rounding of m + q * s), and the back half runs on ORT in both.
ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def tsq_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    from edgerun.exporters import ExportConfig, export

    return export("zoo:digits-cnn", ExportConfig(cut=None, codec="tsq", evaluate=False),
                  tmp_path_factory.mktemp("bundle") / "digits-tsq")


class RequestTap:
    """Subscribes to every device's request topic of a bundle and keeps the frames that cross."""

    def __init__(self, bundle: Bundle, url: str) -> None:
        self.frames: list[bytes] = []
        self.cond = threading.Condition()
        self.c = transport.MqttClient(url, "edgerun-tap", on_message=self._on)
        self.c.connect()
        self.c.subscribe(f"{transport.base_topic(bundle.model_id, bundle.topic_id)}/req/+")

    def _on(self, msg) -> None:
        with self.cond:
            self.frames.append(bytes(msg.payload))
            self.cond.notify_all()

    def wait_for(self, n: int, timeout_s: float = 20.0) -> list[bytes]:
        """The frames once ``n`` have crossed (the broker may deliver to the tap after the server)."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.frames) >= n, timeout_s)
            return list(self.frames)

    def close(self) -> None:
        self.c.close()


def reference(bundle: Bundle, x: np.ndarray, engine: str) -> np.ndarray:
    """front -> C++ encode -> numpy reference decode -> back half, in this process."""
    if engine == "native":
        front = make_engine("native", erg_path=bundle.file("front.erg"), threads=1)
    else:
        front = make_engine("ort", onnx_path=bundle.file("front.onnx"), threads=1)
    back = ort.InferenceSession(str(bundle.file("back.onnx")), providers=["CPUExecutionProvider"])
    (name, h), = bundle.manifest["codec"]["params"].items()
    p = codec.TSQParams.from_bytes(bytes.fromhex(h))
    outs = []
    for i in range(len(x)):
        mid = front.run({bundle.inputs[0].name: x[i : i + 1]})[name]
        dec = codec.decode(codec.encode_native(mid, p), mid.shape, p)
        outs.append(back.run(None, {back.get_inputs()[0].name: dec})[0])
    return np.concatenate(outs)


def test_coded_requests_through_a_real_server_equal_the_codec_round_trip(tsq_bundle, digits_test_set, broker,
                                                                          serve_bundle):
    b = tsq_bundle
    assert b.manifest["codec"]["id"] == "tsq"
    engine = "native" if b.native_ok else "ort"
    x, y = digits_test_set
    ref = reference(b, x, engine)
    tap = RequestTap(b, broker.url)
    try:
        server = serve_bundle(b)
        out_name = b.outputs[0].name
        with Device(b, broker=broker.url, engine=engine) as dev:
            got = np.concatenate([dev.infer(x[i : i + 1]).output[out_name] for i in range(len(x))])
        with Device(b, broker=broker.url, engine=engine, codec="none") as raw_dev:  # the server takes both
            raw = raw_dev.infer(x[:1])
        crossed = tap.wait_for(len(x) + 1)
    finally:
        tap.close()
        code = server.stop()
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=RTOL)
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert (got.argmax(1) == y).mean() >= 0.9
    assert raw.answered_by == "server"
    assert code == 0
    stats = server.stats()
    assert stats["served"] == len(x) + 1 and not stats["errors"]

    frames = [wire.decode(f) for f in crossed]
    assert len(frames) == len(x) + 1
    coded = [f for f in frames if isinstance(f.tensors[0], wire.CodedTensor)]
    plain = [f for f in frames if isinstance(f.tensors[0], np.ndarray)]
    assert len(coded) == len(x) and len(plain) == 1
    assert all(f.tensors[0].codec == wire.CODEC_TSQ for f in coded)
    coded_bytes = np.mean([len(f.tensors[0].payload) + len(f.tensors[0].params) for f in coded])
    assert coded_bytes < plain[0].tensors[0].nbytes / 2  # the digits cut codes at ~7-11x


def test_verify_checks_the_codecs_round_trip(tsq_bundle, monkeypatch):
    """verify used to skip the codec: a bundle whose encoder or decoder broke still passed."""
    from edgerun import crossing
    from edgerun import verify as v

    rep = v.verify(tsq_bundle)
    budget = tsq_bundle.manifest["codec"]["budget"]
    assert rep.ok and 0 < rep.codec_rel_mse <= budget  # each row meets the budget, outliers exact
    real_unpack = crossing.unpack
    monkeypatch.setattr(crossing, "unpack", lambda ts: [t * 0.0 for t in real_unpack(ts)])  # a decoder gone wrong
    bad = v.verify(tsq_bundle)
    assert not bad.ok and any("codec's round trip" in m for m in bad.messages)
