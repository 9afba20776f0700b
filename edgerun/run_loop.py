"""`edgerun run --rate HZ`: the device side as a control loop runs it, and what that loop saw.

A robot asks at a fixed rate (a camera at 30 Hz) with a deadline per request. Here each request starts
on its tick of the schedule (sleeping until then); a request whose reply misses the deadline is counted
and the loop goes on (a control loop cannot stop for one late answer), and a request that takes longer
than the period makes the next one start late (an overrun). The summary gives what a robot developer
reads off such a loop: answered by the server / on the device, missed, overruns, latency percentiles
and bytes per request.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgerun.device import SERVER_ERROR
from edgerun.errors import ConfigError, EdgerunError, TransportError

QS = (50, 95, 99)
# The latency percentiles cover the last this many answers: a loop that runs for days kept every request's
# latency and size (two Python objects, ~76 B a request: ~200 MB a day at 30 Hz) for a summary at its end.
LATENCY_WINDOW = 100_000


@dataclass
class LoopSummary:
    """What one run of the loop saw (``to_json`` for ``--json``)."""

    requests: int = 0
    by_server: int = 0
    on_device: int = 0
    missed: int = 0            # no answer within the deadline (TransportError): the loop went on
    late: int = 0              # answered, but after the deadline (an exit's answer when the wait ran out, a reply
                               # decoded past it): counted as answers, and said, since the robot got them late
    overruns: int = 0          # requests that started later than their tick
    errors: int = 0            # no answer: the server answered with an error, or the input was refused (a NaN
                               # sensor reading); the loop went on
    server_errors: int = 0     # of the answers on the device, those given because the server answered an error
    hedged: int = 0
    resent: int = 0            # copies sent because a worker answered "stopping" (a rolling restart)
    rate_hz: float | None = None
    deadline_ms: float | None = None
    total_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))  # the last answers'
    bytes_sent_total: int = 0  # over every answer
    last_miss: str = ""
    last_error: str = ""
    stopped_by: int = 0        # the signal (Ctrl-C: SIGINT, SIGTERM) that ended the loop early; 0: it ran to the end

    def add(self, result: Any) -> None:
        self.requests += 1
        if result.answered_by == "server":
            self.by_server += 1
        else:
            self.on_device += 1
            if result.reason.startswith(SERVER_ERROR):
                self.server_errors += 1
                self.last_error = result.reason
        self.hedged += bool(result.hedged)
        self.resent += int(getattr(result, "resent", 0))
        total = float(result.timings_ms.get("total", float("nan")))
        self.late += self.deadline_ms is not None and total > self.deadline_ms
        self.total_ms.append(total)
        self.bytes_sent_total += int(result.bytes_sent)

    def miss(self, exc: TransportError) -> None:
        self.requests += 1
        self.missed += 1
        self.last_miss = str(exc)

    def fail(self, exc: EdgerunError) -> None:
        """A request that got no answer for another reason than time (an error reply, a refused input)."""
        self.requests += 1
        self.errors += 1
        self.last_error = str(exc)

    def to_json(self) -> dict:
        t = np.asarray(self.total_ms, dtype=np.float64)
        answers = self.by_server + self.on_device
        pct = {f"p{q}": round(float(np.percentile(t, q)), 3) for q in QS} if t.size else {}
        return {"requests": self.requests, "answered_by_server": self.by_server, "answered_on_device": self.on_device,
                "missed": self.missed, "late": self.late, "overruns": self.overruns, "hedged": self.hedged,
                "resent": self.resent,
                "errors": self.errors, "server_errors_answered_on_device": self.server_errors,
                "rate_hz": self.rate_hz, "deadline_ms": self.deadline_ms, "total_ms": pct,
                "total_ms_answers": int(t.size),  # the answers the percentiles cover (the last LATENCY_WINDOW)
                "bytes_sent_mean": round(self.bytes_sent_total / answers, 1) if answers else 0.0,
                **({"last_miss": self.last_miss} if self.last_miss else {}),
                **({"last_error": self.last_error} if self.last_error else {}),
                **({"stopped": True} if self.stopped_by else {})}

    def text(self) -> str:
        j = self.to_json()
        lat = ", ".join(f"{k} {v:.2f}" for k, v in j["total_ms"].items()) or "-"
        rate = f" at {self.rate_hz:g} Hz" if self.rate_hz else ""
        return (f"{self.requests} requests{rate}: {self.by_server} answered by the server, {self.on_device} on the "
                f"device, {self.missed} missed the deadline, {self.late} answered after it, {self.overruns} started "
                f"late (overrun); total ms {lat}; "
                f"{j['bytes_sent_mean']:.0f} B sent per request"
                + (f"; {self.errors} unanswered (errors)" if self.errors else "")
                + (f"; {self.server_errors} server errors answered on the device" if self.server_errors else "")
                + (f"\nlast miss: {self.last_miss}" if self.last_miss else "")
                + (f"\nlast error: {self.last_error}" if self.last_error else "")
                + ("\nstopped early (Ctrl-C or SIGTERM)" if self.stopped_by else ""))


def check_rate(rate_hz: float | None) -> float | None:
    """``rate_hz`` when it is a usable rate (or None: no schedule).

    Raises:
        ConfigError: not a number of requests per second in (0, 10000].
    """
    if rate_hz is not None and not (np.isfinite(rate_hz) and 0 < rate_hz <= 10_000):
        raise ConfigError(f"--rate {rate_hz}: give requests per second in (0, 10000], e.g. --rate 30")
    return rate_hz


def ticks(n: int, rate_hz: float | None, summary: LoopSummary,
          clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Iterator[int]:
    """Yield 0..n-1, each on its tick of a ``rate_hz`` schedule (at once without a rate); a tick already past
    when its turn comes counts as an overrun and the schedule moves on from now (no burst to catch up)."""
    period = None if check_rate(rate_hz) is None else 1.0 / rate_hz
    # Lateness forgiven as the sleep's own jitter: a tenth of the period, at most a millisecond. A fixed
    # millisecond let a 1 kHz loop start 0.9 ms late uncounted, and the ticks after it burst to catch up.
    slack = None if period is None else min(1e-3, period / 10)
    due = clock()
    for i in range(n):
        if period is not None:
            now = clock()
            if now > due + slack:  # late: the previous request overran its period
                summary.overruns += 1
                due = now
            elif now < due:
                sleep(due - now)
            due += period
        yield i
