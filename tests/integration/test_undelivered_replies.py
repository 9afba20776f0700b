"""Replies the broker does not deliver: it answers the server's QoS 1 PUBLISH with a PUBACK that says so (0x10:
nothing subscribes to the response topic, the device went away; 0x87: the broker's ACL does not let the server
publish there). The server counted them as served; now they are counted apart (``undelivered``, by the
PUBACK's reason) in its stats and in what `serve` prints, with a log line that says what to do."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from configured_mosquitto import acl_mosquitto

from edgerun import wire
from edgerun.server import serve

from test_bad_frames import RawClient, good_frame  # noqa: E402 - same folder

pytestmark = pytest.mark.integration

LOG_WAIT_S = 60.0
# anonymous clients (devices and servers alike) may read their response topics but not publish on them
ACL = """topic readwrite edgerun/v1/+/+/presence/#
topic readwrite edgerun/v1/+/+/req/#
topic readwrite edgerun/v1/+/+/pin/#
topic read edgerun/v1/+/+/resp/#
"""


@pytest.fixture
def no_reply_acl_broker(tmp_path) -> Iterator[str]:
    with acl_mosquitto(tmp_path, ACL) as url:
        yield url


def _ask_and_leave(raw: RawClient, rid: int, payload: bytes) -> None:
    """Send a request, wait until the broker has it, and disconnect before any answer can come."""
    raw.ask_info(rid, payload).wait_for_publish(10)
    raw.close()


def test_a_reply_to_a_device_that_went_away_is_counted_undelivered_not_served(digits_bundle, broker, start_servers):
    (server,) = start_servers(1)
    gone = RawClient(digits_bundle, broker.url, device_id="gone")
    server.send(signal.SIGSTOP)  # it answers after the device left
    try:
        _ask_and_leave(gone, 7, wire.encode(good_frame(digits_bundle, 7)))
    finally:
        server.send(signal.SIGCONT)
    stays = RawClient(digits_bundle, broker.url, device_id="stays")
    try:  # one worker answers in turn: once this reply is here, the one before went out
        stays.ask(8, wire.encode(good_frame(digits_bundle, 8)))
        assert stays.wait(8).kind == wire.Kind.REPLY
    finally:
        stays.close()
    assert server.stop() == 0
    stats = server.stats()
    assert stats["received"] == 2 and stats["served"] == 1, stats
    assert stats["undelivered"] == {"no_matching_subscribers": 1} and stats["errors"] == {}
    assert "the reply to request 7" in server.stderr and "was not delivered" in server.stderr
    assert "its device went away" in server.stderr


def _serve_in_thread(bundle, url: str) -> tuple[threading.Event, threading.Thread, list]:
    stop, out = threading.Event(), []
    ready = threading.Event()
    t = threading.Thread(target=lambda: out.append(serve(bundle, url, stop=stop, ready=ready.set)), daemon=True)
    t.start()
    assert ready.wait(60), "serve() did not subscribe"
    return stop, t, out


def _wait_log(caplog, words: str, n: int) -> None:
    until = time.monotonic() + LOG_WAIT_S
    while sum(words in r.getMessage() for r in caplog.records) < n:
        assert time.monotonic() < until, f"no log line with {words!r}"
        time.sleep(0.05)


def test_replies_and_error_frames_the_acl_refuses_are_counted_undelivered_saying_what_to_allow(
        digits_bundle, no_reply_acl_broker, caplog):
    caplog.set_level(logging.WARNING, logger="edgerun.server")
    stop, t, out = _serve_in_thread(digits_bundle, no_reply_acl_broker)
    raw = RawClient(digits_bundle, no_reply_acl_broker)
    try:
        raw.ask(1, wire.encode(good_frame(digits_bundle, 1)))
        raw.ask(2, b"not a frame" * 4)  # answered with an ERROR frame, refused the same way
        _wait_log(caplog, "was not delivered", 2)
    finally:
        raw.close()
        stop.set()
        t.join(30)
    (stats,) = out
    assert stats.received == 2 and stats.served == 0 and stats.errors == {} and stats.dropped == {}
    assert stats.undelivered == {"not_authorized": 2}
    assert stats.to_dict()["undelivered"] == {"not_authorized": 2}
    said = [r.getMessage() for r in caplog.records if "was not delivered" in r.getMessage()]
    assert "Not authorized" in said[0] and "write edgerun/v1/+/+/resp/#" in said[0] and "acl_file" in said[0]
    assert not raw.replies


def test_a_split_llm_workers_reply_to_a_device_that_went_away_is_counted_undelivered(llm_bundle, broker,
                                                                                    wait_online):
    from conftest import ServerProc

    w = ServerProc(llm_bundle, broker.url, "--worker-id", "w0")
    try:
        wait_online(llm_bundle, broker.url, 1, [w])
        gone = RawClient(llm_bundle, broker.url, device_id="gone")
        h = np.random.default_rng(0).normal(size=(1, 3, 576)).astype(np.float32)
        frame = wire.Frame(kind=wire.Kind.REQUEST, request_id=5, seq=0, bundle_hash=llm_bundle.hash16, tensors=[h],
                           meta={"session": "0123456789abcdef" * 2})
        w.send(signal.SIGSTOP)
        try:
            _ask_and_leave(gone, 5, wire.encode(frame))
        finally:
            w.send(signal.SIGCONT)
        stays = RawClient(llm_bundle, broker.url, device_id="stays")
        try:
            frame.request_id = 6
            frame.meta = {"session": "f" * 32}
            stays.ask(6, wire.encode(frame))
            assert stays.wait(6).kind == wire.Kind.REPLY
        finally:
            stays.close()
        assert w.stop() == 0
        stats = w.stats()
        assert stats["received"] == 2 and stats["served"] == 1, stats
        assert stats["undelivered"] == {"no_matching_subscribers": 1}
    finally:
        if w.proc.poll() is None:
            w.stop(signal.SIGKILL)

