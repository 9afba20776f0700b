"""The exporter's automatic codec budget predicts top-1 flips on unseen inputs from calibration
logits, so a calibration set without near-ties does not hide them."""

from __future__ import annotations

import numpy as np

from edgerun.exporters.stages import predicted_flip_rate


def logits(gaps: list[float]) -> np.ndarray:
    """One row per gap: class 0 leads class 1 by the gap; other classes far below."""
    z = np.full((len(gaps), 5), -10.0)
    z[:, 0], z[:, 1] = 1.0, 1.0 - np.asarray(gaps)
    return z


def test_no_perturbation_predicts_no_flips():
    z = logits([0.01, 0.5, 2.0])
    assert predicted_flip_rate(z, z.copy()) == 0.0


def test_every_gap_change_is_paired_with_every_gap():
    z = logits([0.05, 1.0, 2.0, 3.0])
    out = z.copy()
    out[:, 1] += [0.04, 0.06, 0.1, 0.1]  # no sample flips here: each change is below its own gap
    assert (out.argmax(1) == z.argmax(1)).all()
    # ... but 3 of the 16 (gap, change) pairs cross: the 0.05 gap against 0.06, 0.1, 0.1
    assert predicted_flip_rate(z, out) == 3 / 16


def test_a_change_of_either_sign_counts_and_equal_is_no_flip():
    z = logits([0.1, 0.2])
    out = z.copy()
    out[0, 1] -= 0.1   # the gap widens by 0.1: as likely to close by as much on another input
    out[1, 0] -= 0.2   # the gap closes by exactly its own size: a tie, not a flip, against 0.2
    assert predicted_flip_rate(z, out) == 1 / 4  # only the change 0.2 against the gap 0.1
