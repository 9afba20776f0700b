"""`edgerun serve --max-batch N`: requests from several devices run as one back-half call,
each gets exactly its own rows back, and a bad request in the middle of a batch gets its
ERROR frame without touching the others."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgerun import wire
from edgerun.errors import ConfigError
from edgerun.server import serve

from test_bad_frames import RawClient, good_frame  # noqa: E402 - same folder

pytestmark = pytest.mark.integration


def _own_answer(bundle, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(bundle.file("back.onnx")), providers=["CPUExecutionProvider"])
    return s.run([bundle.outputs[0].name], {s.get_inputs()[0].name: x})[0]


def test_requests_of_several_devices_share_a_call_and_each_gets_its_own_rows(digits_bundle, broker,
                                                                              start_servers):
    (server,) = start_servers(1, "--max-batch", "16", "--batch-wait-ms", "400")
    b = digits_bundle
    rng = np.random.default_rng(0)
    shape = b.cut[0].shape[1:]
    rows = {rid: 3 if rid == 4 else 1 for rid in range(1, 9)}  # request 4 carries 3 samples
    xs = {rid: rng.standard_normal((n, *shape)).astype(np.float32) for rid, n in rows.items()}
    clients = [RawClient(b, broker.url, f"dev-{i}") for i in range(3)]  # three devices
    try:
        for rid, x in xs.items():
            clients[rid % 3].ask(rid, wire.encode(good_frame(b, rid, tensors=[x])))
            if rid == 5:  # a bad request amid the batch
                clients[0].ask(50, wire.encode(good_frame(b, 50, tensors=[np.zeros((1, 3), np.float32)])))
        bad = clients[0].wait(50)
        assert bad.kind == wire.Kind.ERROR and bad.meta["code"] == "bad_tensors"
        batches = []
        for rid, x in xs.items():
            reply = clients[rid % 3].wait(rid)
            assert reply.kind == wire.Kind.REPLY and reply.request_id == rid
            assert reply.tensors[0].shape[0] == rows[rid]
            np.testing.assert_allclose(reply.tensors[0], _own_answer(b, x), rtol=1e-5, atol=1e-5)
            batches.append(reply.meta["batch"])
        assert max(batches) > 1, f"nothing was batched: {batches}"
    finally:
        for c in clients:
            c.close()
    assert server.stop() == 0
    stats = server.stats()
    assert stats["served"] == len(xs) and stats["errors"] == {"bad_tensors": 1}
    assert stats["runs"] < stats["served"] and stats["max_run"] == max(batches)


def test_without_max_batch_each_request_is_its_own_call(digits_bundle, broker, start_servers):
    (server,) = start_servers(1)
    raw = RawClient(digits_bundle, broker.url)
    try:
        for rid in range(1, 5):
            raw.ask(rid, wire.encode(good_frame(digits_bundle, rid)))
        assert all(raw.wait(rid).meta["batch"] == 1 for rid in range(1, 5))
    finally:
        raw.close()
    assert server.stop() == 0
    stats = server.stats()
    assert stats["runs"] == stats["served"] == 4 and stats["max_run"] == 1


@pytest.mark.parametrize("kw, match", [({"max_batch": 0}, "max_batch"), ({"max_batch": 2.5}, "max_batch"),
                                       ({"max_batch": True}, "max_batch"),
                                       ({"batch_wait_ms": -1}, "batch_wait_ms"),
                                       ({"batch_wait_ms": float("nan")}, "batch_wait_ms"),
                                       ({"batch_wait_ms": 1e9}, "batch_wait_ms"),
                                       ({"max_waiting_bytes": 0}, "max_waiting_bytes"),
                                       ({"max_waiting_bytes": 1.5e6}, "max_waiting_bytes")])
def test_bad_batch_settings_are_refused_before_connecting(digits_bundle, kw, match):
    with pytest.raises(ConfigError, match=match):
        serve(digits_bundle, "mqtt://127.0.0.1:1", **kw)


def test_a_request_that_fills_the_batch_is_not_held_for_the_wait(digits_bundle, broker, start_servers):
    """The wait for more requests ends once the batch is full: a 4-sample request on a
    --max-batch 4 server is answered without sitting out --batch-wait-ms (it sat it out, ~1 s,
    before: the wait counted messages, not samples). server_us counts from its receipt."""
    (server,) = start_servers(1, "--max-batch", "4", "--batch-wait-ms", "1000")
    b = digits_bundle
    raw = RawClient(b, broker.url)
    try:
        x = np.zeros((4, *b.cut[0].shape[1:]), np.float32)
        for rid in (1, 2):
            raw.ask(rid, wire.encode(good_frame(b, rid, tensors=[x])))
            reply = raw.wait(rid)
            assert reply.kind == wire.Kind.REPLY and reply.meta["batch"] == 1
            assert reply.meta["server_us"] < 500_000, reply.meta  # far below the 1 s wait
    finally:
        raw.close()
    assert server.stop() == 0
