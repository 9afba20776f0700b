"""Threshold calibration for early exits: simulate where each sample leaves, search thresholds.

Pure numpy on per-sample tables, so it is testable without a model. A table holds, for
K exits and N samples: the criterion score at every exit, the value (loss or metric) of
answering at every exit or at the server (row K), and the compute to reach every exit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from edgerun.errors import ConfigError

SEARCH_COMBOS = 30000  # threshold combinations tried per budget (all exits together)


@dataclass
class ExitTable:
    """Per-sample outcomes of one data set.

    Attributes:
        scores: (K, N) criterion scores; NaN where the criterion cannot decide (the first
            exit under "consistency": it has no previous exit to agree with).
        value: (K+1, N) value of answering at exit k (rows 0..K-1) or at the server (row K).
        cost: (K,) front compute (fraction of the front half) spent to reach exit k.
        server_cost: compute spent when no exit answers (the whole front plus every head).
    """

    scores: np.ndarray
    value: np.ndarray
    cost: np.ndarray
    server_cost: float

    def __post_init__(self) -> None:
        k, n = self.scores.shape
        if self.value.shape != (k + 1, n) or self.cost.shape != (k,):
            raise ConfigError(f"exit table shapes disagree: scores {self.scores.shape}, value "
                              f"{self.value.shape}, cost {self.cost.shape}")


def passes(criterion: str, scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """Mirror of the C++ rule: >= for max_prob, <= for entropy / consistency; None never passes."""
    if threshold is None:
        return np.zeros(scores.shape, bool)
    with np.errstate(invalid="ignore"):
        ok = scores >= threshold if criterion == "max_prob" else scores <= threshold
    return ok & np.isfinite(scores)


def where_answered(t: ExitTable, criterion: str, thresholds: list[float | None]) -> np.ndarray:
    """(N,) index of the exit that answers each sample; K = the server."""
    k, n = t.scores.shape
    at = np.full(n, k)
    for i in range(k - 1, -1, -1):  # the shallowest passing exit wins
        at = np.where(passes(criterion, t.scores[i], thresholds[i]), i, at)
    return at


def simulate(t: ExitTable, criterion: str, thresholds: list[float | None]) -> dict:
    """Mean value, average compute, local share and per-exit shares for ``thresholds``."""
    k, n = t.scores.shape
    at = where_answered(t, criterion, thresholds)
    cost = np.append(t.cost, t.server_cost)[at]
    return {
        "value": float(t.value[at, np.arange(n)].mean()),
        "avg_compute": float(cost.mean()),
        "local_fraction": float(np.mean(at < k)),
        "exit_shares": [float(np.mean(at == i)) for i in range(k + 1)],
    }


def _candidates(criterion: str, scores: np.ndarray, m: int) -> list[float | None]:
    s = scores[np.isfinite(scores)]
    if len(s) == 0 or m < 1:
        return [None]
    qs = np.unique(np.quantile(s, np.linspace(0.0, 1.0, m)).astype(np.float32))
    return [None] + [float(q) for q in qs]


def calibrate(t: ExitTable, criterion: str, avg_compute: float, max_loss: float,
              peak_exit: int | None = None) -> dict:
    """Thresholds that meet ``avg_compute`` with the smallest loss (``t.value`` is a loss here).

    Among threshold sets whose loss vs the server is within ``max_loss`` (the accuracy floor),
    take those within the compute budget and the smallest loss; when none fits the budget,
    the cheapest within the floor (``budget_met`` False). Exits deeper than ``peak_exit``
    never answer on confidence.

    Returns:
        ``{"thresholds", "budget_met", **simulate(...)}`` on ``t`` (the calibration data).
    """
    k = t.scores.shape[0]
    allowed = [i for i in range(k) if peak_exit is None or i <= peak_exit]
    m = max(3, int(round(SEARCH_COMBOS ** (1.0 / max(len(allowed), 1)))) - 1)
    cands = [_candidates(criterion, t.scores[i], m) if i in allowed else [None] for i in range(k)]
    base = float(t.value[k].mean())
    best_fit, best_any = None, None
    for combo in itertools.product(*cands):
        r = simulate(t, criterion, list(combo))
        loss = r["value"] - base
        if loss > max_loss + 1e-12:
            continue
        if r["avg_compute"] <= avg_compute + 1e-12:
            key = (loss, r["avg_compute"])
            if best_fit is None or key < best_fit[0]:
                best_fit = (key, combo, r)
        key = (r["avg_compute"], loss)
        if best_any is None or key < best_any[0]:
            best_any = (key, combo, r)
    chosen = best_fit or best_any
    assert chosen is not None  # no exits at all always has loss 0
    return {"thresholds": list(chosen[1]), "budget_met": best_fit is not None, **chosen[2]}


def sweep(t: ExitTable, criterion: str, n: int = 40) -> list[dict]:
    """One threshold shared by every exit, from never-exit to always-exit: the trade-off curve."""
    s = t.scores[np.isfinite(t.scores)]
    if len(s) == 0:
        return [simulate(t, criterion, [None] * t.scores.shape[0])]
    qs = np.unique(np.quantile(s, np.linspace(0, 1, n)))
    out = [{"threshold": None, **simulate(t, criterion, [None] * t.scores.shape[0])}]
    for q in qs:
        out.append({"threshold": float(q), **simulate(t, criterion, [float(q)] * t.scores.shape[0])})
    return out


def plot(curve: list[dict], budgets: dict[str, dict], path, *, metric: str, title: str) -> None:
    """Two panels: metric vs average front compute, metric vs share answered on the device."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "avg_compute", "average front compute (fraction of the front half)"),
                           (axes[1], "local_fraction", "share answered on the device")):
        pts = sorted(curve, key=lambda r: r[key])
        ax.plot([r[key] for r in pts], [r["value"] for r in pts], ".-", label="one threshold at every exit")
        for name, b in budgets.items():
            ax.plot(b[key], b["value"], "o", ms=8)
            ax.annotate(name, (b[key], b["value"]), textcoords="offset points", xytext=(5, 5))
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
