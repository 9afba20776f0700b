"""Which publishes the broker refused in its PUBACK, by the owner's request id (used by ``transport.MqttClient``)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any


NO_MATCHING_SUBSCRIBERS = 0x10  # an MQTT 5 PUBACK reason code: accepted, but no client subscribes to the topic
NO_SUBSCRIBER = "No matching subscribers"  # paho's name for it: the ``why`` a refusal of that kind carries
_IGNORED = object()  # the key of a publish whose PUBACK nobody reads


class Refusals:
    """Which of our QoS 1 publishes the broker refused in its PUBACK (an MQTT 5 reason code: an ACL that does not
    let this client publish on the topic, a quota) or dropped for want of a subscriber (0x10, ``NO_SUBSCRIBER``:
    no server is subscribed to the request's topic), told to
    ``on_refused(key, why)`` under the owner's key (a request id) instead of paho's 16-bit mid.

    The PUBACK can come before ``publish()`` returns: ``watch(mid, key)`` after it, ``refused`` / ``acked``
    from the client's network thread. Keys still watched are dropped by ``forget`` when their owner is done.
    A publish whose PUBACK nobody reads (a retained presence: the broker answers 0x10 when nobody subscribes to
    it) is ``ignore``d, or its refusal would wait as an early one for the next publish of its mid.
    """

    EARLY_KEPT = 64  # refusals that came before their watch(): a watch() that never comes leaves them

    def __init__(self, on_refused: Callable[[Any, str], None]) -> None:
        # a bound method held weakly: its owner holds this, and a cycle kept closed Devices until a full GC
        self._on_refused = (weakref.WeakMethod(on_refused) if hasattr(on_refused, "__self__")
                            else lambda: on_refused)
        self._lock = threading.Lock()
        self._keys: dict[int, Any] = {}
        self._early: dict[int, str] = {}

    def watch(self, mid: int, key: Any) -> None:
        with self._lock:
            why = self._early.pop(mid, None)
            if why is None:
                self._keys[mid] = key
        if why is not None:
            self._tell(key, why)

    def ignore(self, mid: int) -> None:
        """Nobody reads this publish's PUBACK: its refusal, early or to come, is dropped. Unread, it stayed
        among the early refusals, and once paho's 16-bit mid came round the request sent under it was told
        "refused" at once (65,535 publishes later)."""
        with self._lock:
            if self._early.pop(mid, None) is None:
                self._keys[mid] = _IGNORED

    def forget(self, keys: Any) -> None:
        with self._lock:
            for mid in [m for m, k in self._keys.items() if k in keys]:
                del self._keys[mid]

    def unacknowledged(self) -> list[Any]:
        """The keys still watched, no longer: their PUBACK never came (their client closed first)."""
        with self._lock:
            keys = [k for k in self._keys.values() if k is not _IGNORED]
            self._keys.clear()
        return keys

    def acked(self, mid: int) -> None:
        with self._lock:
            self._keys.pop(mid, None)

    def refused(self, mid: int, why: str) -> None:
        with self._lock:
            key = self._keys.pop(mid, None)
            if key is _IGNORED:
                return
            if key is None:
                if len(self._early) >= self.EARLY_KEPT:
                    self._early.pop(next(iter(self._early)))
                self._early[mid] = why
        if key is not None:
            self._tell(key, why)

    def _tell(self, key: Any, why: str) -> None:
        on_refused = self._on_refused()
        if on_refused is not None:
            on_refused(key, why)
