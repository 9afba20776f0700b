"""Requests that pass every frame check but cannot be answered truthfully: cut tensors holding NaN / Inf,
finite ones that overflow inside the back half, requests with nowhere to send the answer, and more
requests than a worker can hold."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgerun import server, transport, wire

from test_bad_frames import RawClient, good_frame  # noqa: E402 - same folder
from test_server_batching import _own_answer  # noqa: E402

pytestmark = pytest.mark.integration


def test_cut_tensors_that_make_a_nan_answer_are_refused_and_the_batch_around_them_is_answered(
        digits_bundle, broker, start_servers):
    """The back half turned them into NaN logits sent as a REPLY: the model's answer, as far as the device
    could tell (an argmax of NaNs is a confident class 0)."""
    (server,) = start_servers(1, "--max-batch", "8", "--batch-wait-ms", "300")
    b = digits_bundle
    shape = (1, *b.cut[0].shape[1:])
    rng = np.random.default_rng(3)
    good = {rid: rng.standard_normal(shape).astype(np.float32) for rid in (1, 3, 5)}
    nan, inf = good[1].copy(), good[1].copy()
    nan[0, 0, 0, 0], inf[0, 1, 2, 3] = np.nan, -np.inf
    bad = {2: (nan, "NaN/Inf"), 4: (inf, "NaN/Inf"), 6: (np.full(shape, 1e38, np.float32), "up to 1e+38")}
    raw = RawClient(b, broker.url)
    try:
        for rid in range(1, 7):
            x = good[rid] if rid in good else bad[rid][0]
            raw.ask(rid, wire.encode(good_frame(b, rid, tensors=[x])))
        for rid, (_, words) in bad.items():
            f = raw.wait(rid)
            assert f.kind == wire.Kind.ERROR and f.meta["code"] == "non_finite", (rid, f.meta)
            assert words in f.meta["message"]
        for rid, x in good.items():
            f = raw.wait(rid)
            assert f.kind == wire.Kind.REPLY, (rid, f.meta)
            np.testing.assert_allclose(f.tensors[0], _own_answer(b, x), rtol=1e-5, atol=1e-5)
    finally:
        raw.close()
    assert server.stop() == 0
    stats = server.stats()
    assert stats["served"] == len(good) and stats["errors"] == {"non_finite": len(bad)}


def test_a_request_with_no_response_topic_is_not_computed(digits_bundle, broker, start_servers):
    """Its answer has nowhere to go: running the back half for it took the time of the requests behind it
    (a flood of them, all of it)."""
    (server,) = start_servers(1)
    b = digits_bundle
    raw = RawClient(b, broker.url)
    try:
        raw.ask(1, wire.encode(good_frame(b, 1)), respond=False)
        raw.ask(2, b"junk without a response topic" * 4, respond=False)
        raw.ask(3, wire.encode(good_frame(b, 3)))
        assert raw.wait(3).kind == wire.Kind.REPLY
    finally:
        raw.close()
    assert server.stop() == 0
    stats = server.stats()
    assert stats["received"] == 3 and stats["served"] == 1
    assert stats["runs"] == 1, "the back half ran for a request it could not answer"
    assert stats["dropped"] == {"no_response_topic": 1, "bad_magic": 1}


def test_a_worker_that_cannot_keep_up_holds_a_bounded_inbox_and_refuses_the_rest_as_busy(digits_bundle, broker):
    """Its inbox was unbounded: devices sending faster than the back half ran grew the server (8 MB requests:
    +300 MB in two seconds) until the kernel killed it. Here the worker takes nothing until all are sent."""
    b = digits_bundle
    w = server._Worker(b, 1, wire.DEFAULT_MAX_FRAME_BYTES, "door")
    size = len(wire.encode(good_frame(b, 1)))
    w.max_waiting_bytes = 3 * size
    client = transport.MqttClient(broker.url, "edgerun-door", on_message=w.offer, max_queued=0)  # as serve() wires it
    w.client = client
    client.connect()
    client.subscribe(transport.shared_request_filter(b.model_id, b.topic_id, "edgerun"))
    raw = RawClient(b, broker.url)
    stop = threading.Event()
    loop = threading.Thread(target=server._loop, args=(w, stop))
    try:
        for rid in range(1, 11):
            raw.ask(rid, wire.encode(good_frame(b, rid)))
        for rid in range(4, 11):
            f = raw.wait(rid)
            assert f.kind == wire.Kind.ERROR and f.meta["code"] == "busy", (rid, f.meta)
            assert "overloaded" in f.meta["message"] and "--group" in f.meta["message"]
        assert w.inbox.qsize() == 3
        loop.start()  # the worker catches up: what it held is answered
        for rid in (1, 2, 3):
            assert raw.wait(rid).kind == wire.Kind.REPLY
    finally:
        stop.set()
        if loop.is_alive():
            loop.join()
        raw.close()
        client.close()
    w.count_refused()
    assert w.stats.errors == {"busy": 7} and w.stats.served == 3 and w.stats.received == 10
    assert w.inbox.qsize() == 0 and w._waiting_bytes == 0
    assert all(len(v) == 1 for v in raw.replies.values()), "a request was answered twice"


def _wired_worker(b, url: str, name: str) -> server._Worker:
    """A worker fed by a real client, as serve() wires it, whose loop the test runs (or not)."""
    w = server._Worker(b, 1, wire.DEFAULT_MAX_FRAME_BYTES, name)
    w.client = transport.MqttClient(url, f"edgerun-{name}", on_message=w.offer, max_queued=0)
    w.client.connect()
    w.client.subscribe(transport.shared_request_filter(b.model_id, b.topic_id, "edgerun"))
    return w


def _held(w: server._Worker, n: int) -> bool:
    """Wait (a bounded while) until the worker holds n requests."""
    done = threading.Event()
    for _ in range(200):
        if w.inbox.qsize() >= n or done.wait(0.05):
            break
    return w.inbox.qsize() == n


@pytest.mark.parametrize("budget_s", [0.0, 60.0])
def test_a_stopping_worker_answers_or_refuses_every_request_it_holds(digits_bundle, broker, budget_s):
    """The requests in its inbox at a stop vanished: the broker had handed them to this worker (no other would
    take them), no reply or error came, and the stats did not count them (174 of 300 at a SIGTERM)."""
    b = digits_bundle
    w = _wired_worker(b, broker.url, f"drain-{int(budget_s)}")
    raw = RawClient(b, broker.url)
    try:
        for rid in range(1, 7):
            raw.ask(rid, wire.encode(good_frame(b, rid)))
        assert _held(w, 6)
        w.drain(budget_s)  # what serve() does once stopped, before it disconnects
        raw.ask(7, wire.encode(good_frame(b, 7)))  # comes after the stop
        want = wire.Kind.REPLY if budget_s else wire.Kind.ERROR
        for rid in range(1, 7):
            f = raw.wait(rid)
            assert f.kind == want, (rid, f.meta)
        late = raw.wait(7)
        assert late.kind == wire.Kind.ERROR and late.meta["code"] == "stopping"
        assert "send it again" in late.meta["message"]
    finally:
        raw.close()
        w.client.close()
    w.count_refused()
    assert w.stats.received == 7 and w.stats.served == (6 if budget_s else 0)
    assert w.stats.errors == {"stopping": 1 if budget_s else 7}
    assert all(len(v) == 1 for v in raw.replies.values())


def test_serve_stopped_with_requests_waiting_answers_each_of_them(digits_bundle, broker, start_servers):
    """A SIGTERM with a backlog: every request gets one answer (its reply, or "stopping"), none silence."""
    (proc,) = start_servers(1)
    b = digits_bundle
    raw = RawClient(b, broker.url)
    x = np.zeros((1024, *b.cut[0].shape[1:]), np.float32)  # 4 MiB: a backlog the server holds, not the broker
    n = 40
    try:
        for rid in range(1, n + 1):
            info = raw.ask_info(rid, wire.encode(good_frame(b, rid, tensors=[x])))
        info.wait_for_publish(30)
        raw.wait(1)  # serving has begun
        threading.Event().wait(0.1)  # the broker hands the server the rest (a setup pause, nothing timed)
        assert proc.stop() == 0
        for rid in range(1, n + 1):
            f = raw.wait(rid)
            assert f.kind == wire.Kind.REPLY or f.meta["code"] == "stopping", (rid, f.meta)
    finally:
        raw.close()
    stats = proc.stats()
    assert stats["received"] == n == stats["served"] + stats["errors"].get("stopping", 0)


def test_a_request_that_waited_past_its_expiry_is_dropped_not_computed(digits_bundle, broker):
    """A device sets its request's MQTT expiry to its wait for the reply: past it nobody reads the answer. Under
    load such requests took the back half's time from the requests still wanted behind them."""
    b = digits_bundle
    w = _wired_worker(b, broker.url, "expiry")
    raw = RawClient(b, broker.url)
    stop = threading.Event()
    loop = threading.Thread(target=server._loop, args=(w, stop))
    try:
        for rid in (1, 2):  # the device waits 1 s for these: the worker holds them longer
            raw.c.publish(raw.req, wire.encode(good_frame(b, rid)), response_topic=raw.resp,
                          correlation=transport.correlation_bytes(rid), expiry_s=1)
        raw.ask(3, wire.encode(good_frame(b, 3)))  # no expiry: wanted whenever it comes
        assert _held(w, 3)
        threading.Event().wait(1.2)  # the worker is busy elsewhere past the expiry (monotonic, not a timing claim)
        loop.start()
        assert raw.wait(3).kind == wire.Kind.REPLY
    finally:
        stop.set()
        if loop.is_alive():
            loop.join()
        raw.close()
        w.client.close()
    assert w.stats.received == 3 and w.stats.served == 1 and w.stats.runs == 1
    assert w.stats.dropped == {"expired": 2} and set(raw.replies) == {3}
