"""The native tool selector (`_core.tool_select`): int8 scores and the keep rule, against numpy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerun import _core
from edgerun.exporters import tools
from edgerun.tools import Rule


def kept_reference(scores, rule):
    """The rule on given scores: best first, ties by lower index, >= max(floor, best - margin)."""
    cut = max(np.float32(rule.floor), scores.max() - np.float32(rule.margin))
    order = sorted(range(len(scores)), key=lambda t: (-scores[t], t))
    return [t for t in order if scores[t] >= cut][:rule.k_max]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 60), dim=st.integers(1, 70), seed=st.integers(0, 2**31),
       floor=st.floats(-1.0, 0.5), margin=st.floats(0.0, 1.0), k_max=st.integers(1, 12))
def test_scores_and_kept_tools_match_numpy(n, dim, seed, floor, margin, k_max):
    rng = np.random.default_rng(seed)
    emb = rng.integers(-127, 128, (n, dim)).astype(np.int8)
    scale = (rng.random(n) / (127 * np.sqrt(dim))).astype(np.float32)
    q = rng.standard_normal(dim).astype(np.float32)
    q /= np.linalg.norm(q)
    rule = Rule(floor, margin, k_max)
    kept, scores = _core.tool_select(emb, scale, q, rule.floor, rule.margin, rule.k_max)
    ref = (emb.astype(np.float64) @ q.astype(np.float64)) * scale
    np.testing.assert_allclose(scores, ref, rtol=1e-5, atol=1e-6)
    # The rule on the core's own float32 scores (near-ties order by them, not by float64's).
    assert kept.tolist() == kept_reference(scores, rule)


def test_the_core_and_the_calibration_count_the_same_tools():
    rng = np.random.default_rng(1)
    emb = rng.integers(-127, 128, (300, 64)).astype(np.int8)
    scale = np.full(300, 1 / (127 * 8), np.float32)
    qs = rng.standard_normal((20, 64)).astype(np.float32)
    rule = Rule(0.05, 0.1, 7)
    kept = [len(_core.tool_select(emb, scale, q, rule.floor, rule.margin, rule.k_max)[0]) for q in qs]
    deq = emb.astype(np.float32) * scale[:, None]
    needed = [np.array([0])] * len(qs)
    assert tools.evaluate(qs @ deq.T, needed, rule)["mean_kept"] == pytest.approx(np.mean(kept))


def test_ties_keep_the_lower_index_first():
    emb = np.array([[1], [2], [2], [2]], np.int8)
    kept, _ = _core.tool_select(emb, np.ones(4, np.float32), np.ones(1, np.float32), -1.0, 0.0, 2)
    assert kept.tolist() == [1, 2]


def test_a_query_no_tool_fits_keeps_none():
    emb = np.array([[10, 0], [0, 10]], np.int8)
    kept, scores = _core.tool_select(emb, np.full(2, 0.01, np.float32), np.array([0.1, 0.1], np.float32), 0.5, 1.0, 2)
    assert kept.tolist() == [] and scores.tolist() == pytest.approx([0.01, 0.01])


@pytest.mark.parametrize("q, msg", [
    (np.array([np.nan, 0.0], np.float32), "non-finite"),
    (np.array([1.0, 0.0, 0.0], np.float32), "want emb"),
])
def test_bad_queries_are_refused(q, msg):
    emb = np.zeros((3, 2), np.int8)
    with pytest.raises(_core.CoreError, match=msg):
        _core.tool_select(emb, np.ones(3, np.float32), q, -1.0, 0.1, 1)


def test_a_bad_rule_is_refused():
    emb = np.zeros((3, 2), np.int8)
    with pytest.raises(_core.CoreError, match="k_max >= 1"):
        _core.tool_select(emb, np.ones(3, np.float32), np.zeros(2, np.float32), -1.0, 0.1, 0)
    with pytest.raises(_core.CoreError, match="margin >= 0"):
        _core.tool_select(emb, np.ones(3, np.float32), np.zeros(2, np.float32), -1.0, -0.1, 1)


@pytest.mark.parametrize("emb", [np.full((3, 2), 300.7), np.zeros((3, 2), np.int64), np.zeros((3, 2), np.uint8)])
def test_rows_that_are_not_int8_are_refused_not_wrapped(emb):
    with pytest.raises(_core.CoreError, match="emb must be int8"):
        _core.tool_select(emb, np.ones(3, np.float32), np.ones(2, np.float32), -1.0, 1.0, 1)
