"""`edgerun run --rate HZ`: requests on a fixed schedule, late starts counted, misses counted and the loop
going on; the schedule is checked on a fake clock (tests never assert on wall-clock time)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edgerun.errors import ConfigError, TransportError
from edgerun.run_loop import LoopSummary, ticks


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(round(s, 6))
        self.now += s


def test_each_request_starts_on_its_tick_and_a_late_one_is_an_overrun_not_a_burst():
    clock, summary = FakeClock(), LoopSummary()
    work = {0: 0.004, 1: 0.025, 2: 0.004, 3: 0.004}  # request 1 takes longer than the 10 ms period
    started = []
    for i in ticks(4, 100.0, summary, clock=clock, sleep=clock.sleep):
        started.append(round(clock.now - 100.0, 6))
        clock.now += work[i]
    assert started == [0.0, 0.01, 0.035, 0.045]  # 2 starts when 1 ends (late), 3 on the new schedule
    assert summary.overruns == 1 and clock.slept == [0.006, 0.006]


def test_without_a_rate_requests_follow_each_other_at_once():
    clock, summary = FakeClock(), LoopSummary()
    assert list(ticks(3, None, summary, clock=clock, sleep=clock.sleep)) == [0, 1, 2]
    assert clock.slept == [] and summary.overruns == 0


@pytest.mark.parametrize("rate", [0.0, -5.0, float("nan"), float("inf"), 1e6])
def test_a_rate_that_is_no_rate_is_refused(rate):
    with pytest.raises(ConfigError, match=r"--rate .*: give requests per second in \(0, 10000\]"):
        list(ticks(1, rate, LoopSummary()))


def test_the_summary_counts_answers_misses_and_bytes():
    s = LoopSummary(rate_hz=30.0, deadline_ms=50.0)
    for by, total, hedged in (("server", 4.0, False), ("exit:1", 1.0, False), ("server", 6.0, True)):
        s.add(SimpleNamespace(answered_by=by, reason="r", hedged=hedged, timings_ms={"total": total},
                              bytes_sent=100 if by == "server" else 0))
    s.miss(TransportError("no reply from a server within 50 ms"))
    j = s.to_json()
    assert (j["requests"], j["answered_by_server"], j["answered_on_device"], j["missed"], j["hedged"]) == (4, 2, 1, 1, 1)
    assert j["total_ms"]["p50"] == 4.0 and j["bytes_sent_mean"] == pytest.approx(200 / 3, abs=0.1)
    assert "1 missed the deadline" in s.text() and "last miss: no reply" in s.text()


def test_at_a_fast_rate_a_start_most_of_a_period_late_is_an_overrun_not_a_burst():
    """A 1 kHz loop (a motor controller): one request took 1.9 ms, so the next started 0.9 ms late. The loop
    forgave any lateness up to a fixed millisecond, so that start was not counted as an overrun and the
    schedule kept its old ticks: the request after it started at once (a burst to catch up), and the summary
    said 0 overruns. The slack is now a tenth of the period (at most a millisecond)."""
    clock, summary = FakeClock(), LoopSummary()
    work = {0: 0.0002, 1: 0.0019, 2: 0.0002, 3: 0.0002}
    started = []
    for i in ticks(4, 1000.0, summary, clock=clock, sleep=clock.sleep):
        started.append(round(clock.now - 100.0, 6))
        clock.now += work[i]
    assert started == [0.0, 0.001, 0.0029, 0.0039]  # 2 starts late when 1 ends; 3 a period after 2, no burst
    assert summary.overruns == 1


def test_answers_that_came_after_the_deadline_are_counted_as_late():
    """With exits, a request whose reply does not come is answered by the deepest exit when the wait for it
    runs out, i.e. just after the deadline (20.4 ms for 20 ms, every time): the summary said "0 missed the
    deadline" while the robot got those answers late. They stay answers (by the device) and are counted late."""
    s = LoopSummary(rate_hz=50.0, deadline_ms=20.0)
    for by, total in (("server", 1.5), ("exit:2", 20.43), ("exit:2", 0.2), ("server", 20.0)):
        s.add(SimpleNamespace(answered_by=by, reason="r", hedged=False, timings_ms={"total": total}, bytes_sent=0))
    j = s.to_json()
    assert (j["requests"], j["answered_on_device"], j["missed"], j["late"]) == (4, 2, 0, 1)
    assert "0 missed the deadline, 1 answered after it" in s.text()
    assert LoopSummary().to_json()["late"] == 0  # no deadline given: nothing to be late for
