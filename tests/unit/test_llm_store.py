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
    assert c.length == 7 and c.nbytes == 2 * 2 * 3 * 7 * 4 * 4
    c.truncate(5)
    assert c.length == 5 and np.array_equal(c.k, k) and np.array_equal(c.v, -k)


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


def test_a_step_whose_logits_come_out_nan_is_refused_and_leaves_the_cache_as_it_was():
    """Finite but huge hidden states can overflow inside the back half; the reply would rank NaNs."""
    from edgerun.errors import FrameError
    from edgerun.llm_server import LlmWorker

    class _NanBack(_Half):
        def step(self, x, cache):
            cache.append(np.ones((2, 1, 3, x.shape[1], 4), np.float32), np.ones((2, 1, 3, x.shape[1], 4), np.float32))
            return np.full((1, 10), np.nan, np.float32)

    w = object.__new__(LlmWorker)  # just the session logic: no bundle, no broker
    w.back = _NanBack()
    w.sessions = llm.SessionStore(w.back)
    now = time.monotonic()  # what the worker's step uses
    w.sessions.start("s", now).append(np.zeros((2, 1, 3, 4, 4), np.float32), np.zeros((2, 1, 3, 4, 4), np.float32))
    with pytest.raises(FrameError, match="NaN / Inf logits") as e:
        w._step("s", 4, np.full((1, 1, 576), 3e38, np.float32))
    assert e.value.code == "bad_tensors" and w.sessions.get("s", now).length == 4
