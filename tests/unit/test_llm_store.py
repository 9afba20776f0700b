"""The split LLM's bookkeeping that needs no model: the server's session store, top-k, caches, the spec."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgerun import llm
from edgerun.errors import BundleError, ConfigError


class _Half:
    def new_cache(self) -> llm.Cache:
        return llm.Cache(2, 3, 4)


def test_the_least_recently_used_session_goes_first_when_the_store_is_full():
    s = llm.SessionStore(_Half(), max_sessions=2, ttl_s=100)
    a = s.start("a", 0.0)
    s.start("b", 1.0)
    assert s.get("a", 2.0) is a  # a is now the most recent
    s.start("c", 3.0)
    assert s.get("b", 4.0) is None and s.get("a", 4.0) is a and s.get("c", 4.0) is not None
    assert s.evicted == 1 and len(s) == 2


def test_an_idle_session_is_dropped_after_its_ttl():
    s = llm.SessionStore(_Half(), max_sessions=4, ttl_s=10)
    s.start("a", 0.0)
    s.start("b", 5.0)
    assert s.get("a", 10.5) is None  # idle 10.5 s
    assert s.get("b", 10.5) is not None
    assert s.evicted == 1


def test_starting_a_session_again_gives_it_an_empty_cache():
    s = llm.SessionStore(_Half(), max_sessions=4)
    c = s.start("a", 0.0)
    c.append(np.ones((2, 1, 3, 5, 4), np.float32), np.ones((2, 1, 3, 5, 4), np.float32))
    assert s.start("a", 1.0).length == 0


def test_a_store_needs_room_for_one_session():
    with pytest.raises(ConfigError, match="max_sessions"):
        llm.SessionStore(_Half(), max_sessions=0)


def test_cache_appends_along_positions_and_truncates_to_a_prefix():
    c = llm.Cache(2, 3, 4)
    k = np.arange(2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 1, 3, 5, 4)
    c.append(k, -k)
    c.append(k[:, :, :, :2], -k[:, :, :, :2])
    assert c.length == 7 and c.k.shape == (2, 1, 3, 7, 4)
    c.truncate(5)
    assert c.length == 5 and np.array_equal(c.k, k) and np.array_equal(c.v, -k)


def test_cache_appends_in_place_in_a_buffer_that_grows_by_a_quarter_and_keeps_what_it_holds():
    c = llm.Cache(2, 3, 4)
    k = np.random.default_rng(0).normal(size=(2, 1, 3, 100, 4)).astype(np.float32)
    c.append(k[:, :, :, :10], -k[:, :, :, :10])
    buf, _ = c.buffers()
    assert buf.shape[3] == 10 + 64 and c.nbytes == 2 * buf.nbytes  # room for 64 more
    for i in range(10, 74):  # one position at a time: no new buffer
        c.append(k[:, :, :, i:i + 1], -k[:, :, :, i:i + 1])
    assert c.buffers()[0] is buf and np.array_equal(c.k, k[:, :, :, :74])
    c.truncate(50)  # a resend: the length moves back, the next step overwrites
    c.append(k[:, :, :, 50:100], -k[:, :, :, 50:100])
    assert c.length == 100 and c.buffers()[0].shape[3] == 100 + 64 and np.array_equal(c.k, k)
    assert np.array_equal(c.v, -k) and not c.buffers()[0][:, :, :, 100:].any()  # the room is zeros


def test_top_k_is_best_first_with_ties_to_the_lower_id():
    logits = np.array([[0.5, 2.0, 2.0, -1.0, 3.0]], np.float32)
    ids, vals = llm.top_k(logits, 3)
    assert ids.tolist() == [[4, 1, 2]] and vals.tolist() == [[3.0, 2.0, 2.0]]
    assert ids.dtype == np.int64 and vals.dtype == np.float32
    ids, _ = llm.top_k(logits, 10)  # more than the vocabulary: all of it
    assert ids.tolist() == [[4, 1, 2, 0, 3]]


def test_top_1_is_argmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 49152)).astype(np.float32)
    assert llm.top_k(logits, 1)[0][0, 0] == logits.argmax()


@pytest.mark.parametrize("bad", [{}, {"cut": 15}, {"cut": 0, "layers": 30, "hidden": 576, "kv_heads": 3, "head_dim": 64,
                                                  "vocab": 10, "eos": 2, "max_context": 64},
                                 {"cut": 30, "layers": 30, "hidden": 576, "kv_heads": 3, "head_dim": 64,
                                  "vocab": 10, "eos": 2, "max_context": 64}, "x"])
def test_a_malformed_llm_entry_is_a_bundle_error_that_says_re_export(bad):
    with pytest.raises(BundleError, match="edgerun llm export"):
        llm.LlmSpec.from_json(bad)


@pytest.mark.parametrize("ttl", [0, -5, float("nan"), float("inf"), "10"])
def test_a_session_ttl_must_be_a_positive_number_of_seconds(ttl):
    with pytest.raises(ConfigError, match="session_ttl_s"):
        llm.SessionStore(_Half(), ttl_s=ttl)


def test_starting_a_session_frees_those_idle_past_their_ttl_and_so_does_expire():
    s = llm.SessionStore(_Half(), max_sessions=8, ttl_s=1)
    for i in range(5):
        s.start(f"s{i}", 0.0)
    s.start("new", 1000.0)  # a worker that only ever sees new sessions
    assert len(s) == 1 and s.evicted == 5
    s.expire(2000.0)  # the serve loop's tick, with no request at all
    assert len(s) == 0


def _manifest(**over):
    m = {"bundle_hash": "ab" * 32, "model_id": "m", "files": {},
         "llm": {"cut": 15, "layers": 30, "hidden": 576, "kv_heads": 3, "head_dim": 64, "vocab": 49152, "eos": 2,
                 "max_context": 256}, "chat": {"user": "<u>{prompt}</u>"}, "codec": {"id": "none"}}
    m.update(over)
    return m


@pytest.mark.parametrize("over", [{"chat": "str"}, {"chat": {"user": "no placeholder"}},
                                  {"codec": {"id": "tsq", "params": {"hidden": "zz"}}},
                                  {"codec": {"id": "tsq", "params": {"hidden": "0102"}}},
                                  {"codec": {"id": "gzip"}}, {"codec": "tsq"}])
def test_a_resealed_manifest_with_a_bad_chat_template_or_codec_is_refused_at_load(over, tmp_path):
    with pytest.raises(BundleError, match="edgerun llm export"):
        llm.LlmBundle(tmp_path, _manifest(**over))


@pytest.mark.parametrize("field, value", [("eos", -5), ("eos", 49152), ("max_context", 10**9)])
def test_spec_values_outside_the_model_are_refused(field, value, tmp_path):
    m = _manifest()
    m["llm"][field] = value
    with pytest.raises(BundleError, match="edgerun llm export"):
        llm.LlmBundle(tmp_path, m)


def test_a_reply_must_be_top_k_rows_of_one_sequence():
    from edgerun import wire
    from edgerun.errors import FrameError
    from edgerun.llm_device import _check_reply

    def reply(ids, vals):
        return wire.Frame(kind=wire.Kind.REPLY, request_id=1, seq=0, bundle_hash=bytes(16), tensors=[ids, vals], meta={})

    _check_reply(reply(np.array([[5, 6]], np.int64), np.array([[1.0, 0.5]], np.float32)), 8)
    for ids, vals in [(np.array([5], np.int64), np.array([1.0], np.float32)),  # 1-D: made the device's choice crash
                      (np.array([[5, 6]], np.int64), np.array([[1.0, np.nan]], np.float32)),
                      (np.zeros((1, 9), np.int64), np.zeros((1, 9), np.float32))]:  # more than asked for
        with pytest.raises(FrameError, match="not a split-LLM answer"):
            _check_reply(reply(ids, vals), 8)


def _worker(back, max_batch=1):
    """An LlmWorker with just its session logic: no bundle, no broker; failures and replies recorded."""
    from edgerun.llm_server import LlmWorker
    from edgerun.server import ServerStats

    w = object.__new__(LlmWorker)
    w.back, w.max_batch, w.stats = back, max_batch, ServerStats(worker="t")
    w.sessions = llm.SessionStore(back)
    w.failed, w.replied = [], []
    w._fail = lambda topic, resp, corr, rid, code, message: w.failed.append((rid, code, message))
    w._reply = lambda req, outs, **meta: w.replied.append((req.frame.request_id, outs, meta))
    return w


def _step(rid, sid, seq, h, topk=8):
    from types import SimpleNamespace

    from edgerun.llm_server import _Step
    from edgerun.server import _Request

    frame = SimpleNamespace(seq=seq, request_id=rid, tensors=[h])
    return _Step(_Request("t", "r", b"", frame, 0.0), sid, topk, 1 if h.shape[1] == 1 else 4)


def _kv(n):
    return np.zeros((2, 1, 3, n, 4), np.float32)


def test_a_step_whose_logits_come_out_nan_is_refused_and_leaves_the_cache_as_it_was():
    """Finite but huge hidden states can overflow inside the back half; the reply would rank NaNs."""

    class _NanBack(_Half):
        def step(self, x, cache):
            cache.append(np.ones((2, 1, 3, x.shape[1], 4), np.float32), np.ones((2, 1, 3, x.shape[1], 4), np.float32))
            return np.full((1, 10), np.nan, np.float32)

    w = _worker(_NanBack())
    w.sessions.start("s", time.monotonic()).append(_kv(4), _kv(4))
    w._answer([_step(7, "s", 4, np.full((1, 1, 576), 3e38, np.float32))])
    assert w.failed[0][:2] == (7, "bad_tensors") and "NaN / Inf logits" in w.failed[0][2]
    assert w.sessions.get("s", time.monotonic()).length == 4 and not w.replied


class _BatchBack(_Half):
    """Logits that say which row of which call answered; records the calls."""

    def __init__(self):
        self.calls = []

    def step(self, x, cache):
        self.calls.append(1)
        cache.append(_kv(x.shape[1]), _kv(x.shape[1]))
        return np.eye(1, 10, cache.length % 10, dtype=np.float32)

    def step_batch(self, xs, caches):
        self.calls.append(len(xs))
        for c in caches:
            c.append(_kv(1), _kv(1))
        return np.stack([np.eye(10, dtype=np.float32)[c.length % 10] for c in caches])


def test_decode_steps_of_distinct_sessions_run_as_one_call_and_the_rest_alone():
    w = _worker(_BatchBack(), max_batch=8)
    now = time.monotonic()
    for sid, n in (("a", 3), ("b", 5), ("c", 2)):
        w.sessions.start(sid, now).append(_kv(n), _kv(n))
    one = np.zeros((1, 1, 576), np.float32)
    w._answer([_step(1, "a", 3, one), _step(2, "b", 5, one), _step(3, "x", 4, one),  # x: no session here
               _step(4, "a", 3, one), _step(5, "c", 2, one)])  # 4: a resend of 1, after the batch
    assert w.back.calls == [3, 1]  # a, b, c together; the resend alone
    assert [f[:2] for f in w.failed] == [(3, "session_lost")]
    got = {rid: (int(outs[0][0, 0]), meta) for rid, outs, meta in w.replied}
    assert got[1] == (4, {"session_len": 4, "batch": 3}) and got[2] == (6, {"session_len": 6, "batch": 3})
    assert got[5] == (3, {"session_len": 3, "batch": 3})
    assert got[4] == (4, {"session_len": 4, "batch": 1})  # cut back to 3 first: the same answer as request 1
    assert w.stats.runs == 2 and w.stats.max_run == 3


def test_a_batched_call_that_fails_runs_its_steps_again_one_by_one():
    """The padded batch may be what failed (memory): each session is still answered, as alone."""

    class _Broken(_BatchBack):
        def step_batch(self, xs, caches):
            raise MemoryError("the padded caches do not fit")

    w = _worker(_Broken(), max_batch=8)
    now = time.monotonic()
    for sid in "ab":
        w.sessions.start(sid, now).append(_kv(2), _kv(2))
    one = np.zeros((1, 1, 576), np.float32)
    w._answer([_step(1, "a", 2, one), _step(2, "b", 2, one)])
    assert not w.failed and w.back.calls == [1, 1]
    assert sorted((rid, meta["batch"], meta["session_len"]) for rid, _, meta in w.replied) == [(1, 1, 3), (2, 1, 3)]


def test_a_cut_back_cache_zeroes_the_rows_it_drops():
    """Rows past the length are masked, but Inf there (a refused step's overflow) would still give NaN."""
    c = llm.Cache(2, 3, 4)
    c.append(np.full((2, 1, 3, 6, 4), np.inf, np.float32), np.full((2, 1, 3, 6, 4), np.inf, np.float32))
    c.truncate(2)
    k, v = c.buffers()
    assert not k[:, :, :, 2:].any() and not v[:, :, :, 2:].any() and np.isinf(c.k).all()


def test_a_bundle_whose_back_half_takes_no_past_len_is_served_only_one_session_per_call(monkeypatch):
    from types import SimpleNamespace

    from edgerun.llm_server import LlmWorker

    monkeypatch.setattr(llm, "Half", lambda bundle, side, threads: SimpleNamespace(batches=False))
    with pytest.raises(ConfigError, match="re-export it with `edgerun llm export`, or serve it with --max-batch 1"):
        LlmWorker(SimpleNamespace(), 1, 1 << 20, "w", max_batch=4)
    assert LlmWorker(SimpleNamespace(), 1, 1 << 20, "w").max_batch == 1


def test_a_batch_may_not_hold_more_sessions_than_the_worker_keeps(monkeypatch):
    from types import SimpleNamespace

    from edgerun.llm_server import LlmWorker

    monkeypatch.setattr(llm, "Half", lambda bundle, side, threads: SimpleNamespace(batches=True, new_cache=None))
    with pytest.raises(ConfigError, match="keep --max-batch <= --max-sessions"):
        LlmWorker(SimpleNamespace(), 1, 1 << 20, "w", max_sessions=2, max_batch=4)
    assert LlmWorker(SimpleNamespace(), 1, 1 << 20, "w", max_sessions=4, max_batch=4).max_batch == 4
