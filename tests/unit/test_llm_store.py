"""The split LLM's bookkeeping that needs no model: the server's session store, top-k, caches, the spec."""

from __future__ import annotations

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
