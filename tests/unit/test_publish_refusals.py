"""transport.Refusals: a broker's refusal of a publish reaches the request it was for, whether its PUBACK
came after publish() returned (the usual case) or before the device had filed the publish's mid."""

from __future__ import annotations

from edgerun.transport import Refusals


def _watcher():
    told: list[tuple[int, str]] = []
    return Refusals(lambda key, why: told.append((key, why))), told


def test_a_refusal_after_the_watch_is_told_under_the_request_id():
    r, told = _watcher()
    r.watch(7, 1001)
    r.refused(7, "Not authorized")
    assert told == [(1001, "Not authorized")]
    r.refused(7, "Not authorized")  # told once: the mid is no longer watched
    assert told == [(1001, "Not authorized")]


def test_a_refusal_before_the_watch_is_told_when_the_watch_comes():
    r, told = _watcher()
    r.refused(7, "Quota exceeded")
    assert told == []
    r.watch(7, 1001)
    assert told == [(1001, "Quota exceeded")]


def test_an_ack_or_a_forget_ends_the_watch():
    r, told = _watcher()
    r.watch(1, 10), r.watch(2, 20), r.watch(3, 30)
    r.acked(1)
    r.forget({20})
    for mid in (1, 2):
        r.refused(mid, "Not authorized")  # kept as early refusals of mids not (yet) watched
    r.refused(3, "Not authorized")
    assert told == [(30, "Not authorized")]


def test_early_refusals_never_watched_are_capped():
    r, told = _watcher()
    for mid in range(Refusals.EARLY_KEPT + 10):
        r.refused(mid, "Not authorized")
    r.watch(0, 1)  # the oldest went out
    r.watch(Refusals.EARLY_KEPT + 9, 2)
    assert told == [(2, "Not authorized")]


def test_an_ignored_publish_leaves_no_early_refusal_for_a_later_publish_of_its_mid():
    r, told = _watcher()
    r.refused(5, "No matching subscribers")  # a presence's PUBACK before its ignore()
    r.ignore(5)
    r.ignore(6)  # and one whose PUBACK comes after
    r.refused(6, "No matching subscribers")
    r.watch(5, 1001), r.watch(6, 1002)  # the mids came round: these requests were not refused
    r.acked(5), r.acked(6)
    assert told == []


def test_the_publishes_still_watched_when_the_client_closed_are_given_back_once():
    r, told = _watcher()
    r.watch(1, 10), r.watch(2, 20), r.ignore(3)
    r.acked(1)
    assert r.unacknowledged() == [20]  # not the ignored presence
    assert r.unacknowledged() == []
    assert told == []
