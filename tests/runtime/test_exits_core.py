"""Exit criteria in the C++ core vs the numpy reference, and their input checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgerun import _core  # noqa: F401  (runtime tests need the compiled core: fail, never skip)
from edgerun.errors import ConfigError, from_core_error
from edgerun.exits import scores

pytestmark = pytest.mark.runtime
CRITERION_RTOL = 1e-5   # C++ sums softmax terms in float64 then rounds; numpy in float64
CRITERION_ATOL = 1e-6
logits = hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 40)),
                    elements=st.floats(-50, 50, width=32))


@settings(max_examples=100, deadline=None)
@given(logits)
def test_core_matches_reference(x):
    for crit in ("max_prob", "entropy"):
        np.testing.assert_allclose(_core.exit_scores(crit, x), scores(crit, x), rtol=CRITERION_RTOL, atol=CRITERION_ATOL)
    prev = x[::-1].copy()
    np.testing.assert_allclose(_core.exit_scores("consistency", x, prev), scores("consistency", x, prev),
                               rtol=CRITERION_RTOL, atol=CRITERION_ATOL)


def test_all_pass_reports_the_worst_row():
    x = np.array([[10.0, 0.0], [1.0, 0.0]], np.float32)
    ok, worst = _core.exit_all_pass("max_prob", x, None, 0.9)
    assert not ok and worst == pytest.approx(scores("max_prob", x)[1], rel=CRITERION_RTOL)
    assert _core.exit_all_pass("max_prob", x[:1], None, 0.9)[0]
    assert _core.exit_passes("max_prob", 0.9, 0.9) and not _core.exit_passes("entropy", 0.5, 0.4)
    assert _core.exit_passes("consistency", 0.1, 0.1)


def test_extreme_logits_are_stable():
    x = np.array([[3e38, -3e38, 0.0]], np.float32)
    assert _core.exit_scores("max_prob", x)[0] == pytest.approx(1.0)
    assert _core.exit_scores("entropy", x)[0] == pytest.approx(0.0, abs=CRITERION_ATOL)


@pytest.mark.parametrize("args", [
    ("max_prob", np.array([[np.nan, 1.0]], np.float32), None),
    ("entropy", np.array([[np.inf, 1.0]], np.float32), None),
    ("margin", np.ones((1, 2), np.float32), None),
    ("consistency", np.ones((1, 2), np.float32), None),
    ("consistency", np.ones((1, 2), np.float32), np.ones((1, 3), np.float32)),
    ("max_prob", np.ones((0,), np.float32), None),
])
def test_bad_input_is_a_config_error(args):
    with pytest.raises(_core.CoreError) as ei:
        _core.exit_scores(*args)
    err = from_core_error(ei.value)
    assert isinstance(err, ConfigError) and str(err)
