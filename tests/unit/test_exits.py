"""Early exits, Python side: budgets, exit-point choice, the numpy criteria and threshold calibration."""

from __future__ import annotations

import numpy as np
import pytest

from edgerun.errors import ConfigError
from edgerun.exits import scores
from edgerun.exporters.cuts import Cut
from edgerun.exporters.exits import Budget, choose_points, parse_exits, pool_features
from edgerun.exporters.exits_calib import ExitTable, calibrate, simulate, sweep, where_answered

SCORE_ATOL = 1e-6  # float32 softmax statistics vs the float64 closed forms below


def _cut(i: int, label: str, front: int, total: int = 1000) -> Cut:
    return Cut(i, i, label, (f"t{i}",), ((1, 4),), 16, front, total - front)


def test_parse_exits():
    assert parse_exits(None) is None and parse_exits("none") is None and parse_exits(0) is None
    assert parse_exits("auto") == 3 and parse_exits("2") == 2 and parse_exits(4) == 4
    for bad in ("many", -1, "0.5"):
        with pytest.raises(ConfigError):
            parse_exits(bad)


@pytest.mark.parametrize("kw", [dict(avg_compute=0), dict(avg_compute=1.5), dict(peak_exit=-1),
                                dict(max_loss=1.0), dict(name="bad name")])
def test_budget_rejects_bad_values(kw):
    args = dict(name="b", avg_compute=0.5) | kw
    with pytest.raises(ConfigError):
        Budget(**args)


def test_choose_points_spreads_by_compute_and_ends_at_the_cut():
    cuts = [_cut(0, "a", 20), _cut(1, "b/add", 100), _cut(2, "b", 110), _cut(3, "c", 350), _cut(4, "d", 600),
            _cut(5, "e", 990)]
    pts = choose_points(cuts, cuts[4], 3)
    assert [p.label for p in pts] == ["b", "c", "d"]  # nearest 1/9 and 1/3 of the front; "b/add" is mid-module
    assert [p.label for p in choose_points(cuts, cuts[4], 1)] == ["d"]


def test_pool_features_matches_average_pool():
    x = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    f = pool_features(x, (2, 2))
    assert f.shape == (2, 3 * 16)
    np.testing.assert_allclose(f[0, 0], x[0, 0, :2, :2].mean())


def test_numpy_criteria():
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0]], np.float32)
    p = np.exp(x[0] - 3) / np.exp(x[0] - 3).sum()
    np.testing.assert_allclose(scores("max_prob", x), [p.max(), 1 / 3, 1.0], atol=SCORE_ATOL)
    np.testing.assert_allclose(scores("entropy", x), [-(p * np.log(p)).sum(), np.log(3), 0.0], atol=SCORE_ATOL)
    np.testing.assert_allclose(scores("consistency", x[:2], x[:2] + 2), [2.0, 2.0], atol=SCORE_ATOL)
    with pytest.raises(ConfigError):
        scores("consistency", x)
    with pytest.raises(ConfigError):
        scores("margin", x)


def _table() -> ExitTable:
    # 3 exits, 8 samples. Exit 0 is sure about samples 0-3 and right on 0-2; exit 1 sure and right on 4-5.
    sc = np.array([[0.99, 0.98, 0.97, 0.96, 0.5, 0.5, 0.4, 0.4],
                   [0.6, 0.6, 0.6, 0.6, 0.95, 0.95, 0.5, 0.5],
                   [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]], np.float32)
    loss = np.zeros((4, 8))
    loss[0, 3:] = 1
    loss[1, [0, 1, 2, 3, 6, 7]] = 1
    return ExitTable(sc, loss, np.array([0.1, 0.5, 1.0]), 1.0)


def test_where_answered_and_simulate():
    t = _table()
    at = where_answered(t, "max_prob", [0.965, 0.9, None])
    assert at.tolist() == [0, 0, 0, 3, 1, 1, 3, 3]
    r = simulate(t, "max_prob", [0.965, 0.9, None])
    assert r["value"] == 0.0 and r["local_fraction"] == pytest.approx(5 / 8)
    assert sum(r["exit_shares"]) == pytest.approx(1.0)
    assert r["avg_compute"] == pytest.approx((3 * 0.1 + 2 * 0.5 + 3 * 1.0) / 8)


def test_calibrate_meets_budget_within_the_floor():
    t = _table()
    r = calibrate(t, "max_prob", avg_compute=0.6, max_loss=0.0)
    assert r["budget_met"] and r["value"] == 0.0 and r["avg_compute"] <= 0.6
    # A looser floor buys less compute; a zero budget is not met but the floor holds.
    loose = calibrate(t, "max_prob", avg_compute=0.05, max_loss=0.2)
    assert not loose["budget_met"] and loose["value"] <= 0.2 and loose["avg_compute"] < r["avg_compute"]


def test_calibrate_peak_exit_caps_the_deepest_answering_exit():
    r = calibrate(_table(), "max_prob", avg_compute=1.0, max_loss=0.0, peak_exit=0)
    assert r["thresholds"][1] is None and r["thresholds"][2] is None
    assert r["exit_shares"][1] == 0.0


def test_consistency_first_exit_never_answers():
    t = _table()
    t.scores[0] = np.nan
    r = calibrate(t, "consistency", avg_compute=1.0, max_loss=0.5)
    assert r["exit_shares"][0] == 0.0


def test_sweep_goes_from_server_only_to_all_local():
    curve = sweep(_table(), "max_prob")
    assert curve[0]["local_fraction"] == 0.0 and max(c["local_fraction"] for c in curve) == 1.0
