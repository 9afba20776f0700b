"""`edgerun run --rate` for days: its summary keeps a bounded window of latencies, not one per request."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edgerun import run_loop
from edgerun.run_loop import LoopSummary


def _answer(total_ms: float, bytes_sent: int) -> SimpleNamespace:
    return SimpleNamespace(answered_by="server", reason="server replied", hedged=False,
                           timings_ms={"total": total_ms}, bytes_sent=bytes_sent)


def test_the_latencies_kept_are_the_last_window_and_the_bytes_a_running_mean(monkeypatch):
    """The loop kept every request's latency and size for its end summary (~76 B a request, without bound
    over a run of days); the percentiles now cover the last LATENCY_WINDOW answers, the mean bytes all."""
    monkeypatch.setattr(run_loop, "LATENCY_WINDOW", 4)
    s = LoopSummary(rate_hz=30.0)
    for i in range(10):
        s.add(_answer(float(i), 100 * (i + 1)))
    j = s.to_json()
    assert len(s.total_ms) == 4 and list(s.total_ms) == [6.0, 7.0, 8.0, 9.0]
    assert j["total_ms_answers"] == 4 and j["total_ms"]["p50"] == 7.5
    assert j["requests"] == 10 and j["bytes_sent_mean"] == pytest.approx(550.0)
