"""Requests that pass every frame check but cannot be answered truthfully: cut tensors holding NaN / Inf,
finite ones that overflow inside the back half, and requests with nowhere to send the answer."""

from __future__ import annotations

import numpy as np
import pytest

from edgerun import wire

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
