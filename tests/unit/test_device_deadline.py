"""How long the device waits for the server's reply (``device_checks.reply_wait_s``): until the deadline,
and with exits a little before it, so that the exit's answer is in the caller's hands by the deadline. It came ~0.3 ms
after it (every one of 100 requests at a 20 ms deadline, up to 1.8 ms), the wait being measured from the
encode (the publish's time came on top) and the hand-over after it."""

from __future__ import annotations

import pytest

from edgerun.device_checks import EXIT_RESERVE_MS, reply_wait_s

T0 = 100.0  # perf_counter() when infer() started


@pytest.mark.parametrize("now_ms, deadline_ms, exits, wait_ms", [
    (0.3, 20.0, False, 19.7),                    # the publish took 0.3 ms: the wait is what is left, no more
    (0.3, 20.0, True, 19.7 - EXIT_RESERVE_MS),   # with exits it ends EXIT_RESERVE_MS before the deadline
    (0.1, 2.0, True, 2.0 - 0.2 - 0.1),           # at most a tenth of a short deadline
    (25.0, 20.0, False, 0.0),                    # already past: no wait, never a negative timeout
])
def test_the_wait_ends_at_the_deadline_or_just_before_it_with_exits(now_ms, deadline_ms, exits, wait_ms):
    got = reply_wait_s(T0, deadline_ms, T0 + now_ms / 1000.0, exits)
    assert got == pytest.approx(wait_ms / 1000.0, abs=1e-9)
