"""What the server checks on a request apart from its frame: is it still wanted (its MQTT expiry), how
often a flood of rejections may write to the log, and how an answer the broker did not deliver is counted."""

from __future__ import annotations

from types import SimpleNamespace

from edgerun.server_checks import SERVED, LogBudget, ServerStats, undelivered_text, waited_past_expiry


def _msg(arrived: float, expiry: int | None):
    return SimpleNamespace(timestamp=arrived, properties=SimpleNamespace(MessageExpiryInterval=expiry))


def test_a_request_is_expired_only_once_it_waited_longer_than_its_expiry():
    assert waited_past_expiry(_msg(100.0, 1), now=101.5) == 1.5
    assert waited_past_expiry(_msg(100.0, 2), now=101.5) is None
    assert waited_past_expiry(_msg(100.0, None), now=1e9) is None, "no expiry: wanted whenever it comes"
    assert waited_past_expiry(_msg(0.0, 1), now=1e9) is None, "never stamped on arrival: not judged"
    assert waited_past_expiry(SimpleNamespace(), now=1e9) is None


def test_a_flood_of_one_kind_is_logged_up_to_the_burst_then_counted_and_said_once_a_window():
    t = [0.0]
    budget = LogBudget(burst=3, window_s=10.0, clock=lambda: t[0])
    assert [budget.allow("bad_magic") for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    assert budget.allow("busy") == (True, 0), "another kind has its own budget"
    t[0] = 10.0
    assert budget.allow("bad_magic") == (True, 2), "the next window says how many lines were held back"
    assert budget.allow("bad_magic") == (True, 0)


def test_an_undelivered_answer_moves_from_its_bucket_to_undelivered_by_the_pubacks_reason():
    s = ServerStats(received=4, served=2, errors={"bad_magic": 1, "busy": 1})
    assert s.count_undelivered(SERVED, "No matching subscribers") == "no_matching_subscribers"
    s.count_undelivered("bad_magic", "Not authorized")
    s.count_undelivered("busy", "Not authorized")
    assert (s.received, s.served, s.errors) == (4, 1, {})
    assert s.to_dict()["undelivered"] == {"no_matching_subscribers": 1, "not_authorized": 2}


def test_what_the_log_says_of_an_undelivered_answer_names_the_cause_and_what_to_do():
    gone = undelivered_text("No matching subscribers", "the reply to request 7", "edgerun/v1/m/t/resp/d", "mqtt://b")
    assert "request 7" in gone and "its device went away" in gone
    acl = undelivered_text("Not authorized", "the reply to request 7", "edgerun/v1/m/t/resp/d", "mqtt://b")
    assert "write edgerun/v1/+/+/resp/#" in acl
    assert "the broker's log says why" in undelivered_text("Unspecified error", "x", "t", "mqtt://b")
