"""How long a device with ``local_fallback`` waits for a worker before answering a step itself
(``LlmDevice._await_worker``), on a device whose broker link is stubbed: what the wait asks of the
inbox (its timeouts) is checked, not the clock.

The retained presences come right after a (re)connect. Within ``PRESENCE_GRACE_S`` of it the device
waits for them; past it, "no worker online" is already known, so the step after the last worker's
death is answered here at once (it used to wait the grace again, a second, on every such step).
"""

from __future__ import annotations

import json
import queue
import time
from types import SimpleNamespace

import pytest

from edgerun.errors import TransportError
from edgerun.llm_device import LlmDevice


class _Inbox:
    """A queue.Queue stand-in that records how long each get() would wait, and holds ``msgs``."""

    def __init__(self, msgs=()):
        self.msgs, self.waits = list(msgs), []

    def get_nowait(self):
        return self.get(timeout=0.0)

    def get(self, timeout=None):
        self.waits.append(timeout)
        if self.msgs:
            return self.msgs.pop(0)
        raise queue.Empty


def _device(connected_ago_s: float, inbox: _Inbox) -> LlmDevice:
    dev = object.__new__(LlmDevice)  # no bundle, no broker: only what _await_worker reads
    dev.local_fallback, dev.step_timeout_s = True, 30.0
    dev._online, dev._offline, dev._inbox = set(), set(), inbox
    dev._client = SimpleNamespace(connected=True, url="mqtt://127.0.0.1:1")
    dev._resp = "resp"
    dev.bundle = SimpleNamespace(hash="h" * 64)
    dev._connected_at = time.monotonic() - connected_ago_s
    return dev


def _g():
    return SimpleNamespace(bytes_down=0, stale_replies=0)


def test_long_after_the_connect_no_worker_online_is_known_and_the_device_does_not_wait():
    inbox = _Inbox()
    with pytest.raises(TransportError, match="no server worker of this bundle is online"):
        _device(60.0, inbox)._await_worker(_g())
    assert inbox.waits and max(inbox.waits) == 0.0  # read what had come, never blocked


def test_right_after_a_connect_the_device_waits_for_the_retained_presences():
    online = SimpleNamespace(topic="edgerun/presence/server/w1",
                             payload=json.dumps({"id": "w1", "status": "online", "bundle": "h" * 64}).encode())
    inbox = _Inbox([online])
    dev = _device(0.0, inbox)
    dev._await_worker(_g())  # returns: w1 came online within the grace
    assert dev._online == {"w1"} and inbox.waits[0] > 0  # it blocked for the presence

