"""What ``Device.infer`` returns: the outputs, who answered them and why, and what it cost."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Result:
    """One answered request.

    Attributes:
        output: the model's outputs by name.
        answered_by: "server" or "exit:<i>" (answered on the device by exit head i).
        reason: why it was answered there: "server replied", "confident: max_prob 0.97 >= 0.93",
            "deadline: predicted round trip 80 ms > 12 ms left", "server unreachable: ...", "server error: ..."
            (the server answered with an error: a device with exits answers from its deepest exit).
        request_id: the id sent as Correlation Data.
        timings_ms: "device", "encode", "network" (round trip minus server compute),
            "server", "decode" (the reply handed to the caller's thread and decoded), "total" (their sum).
        worker: id of the server worker that answered ("" when answered locally).
        hedged: the request was sent a second time (``hedge_ms``) before a reply came.
        resent: how often the request was sent again because the worker that had it answered "stopping" (it
            did not run it: a rolling restart), at most ``edgerun.device.RESENDS_MAX``; the reason says it too.
        bytes_sent / bytes_received: MQTT payload bytes of the request frame (times each copy sent) and of
            the reply; 0 / 0 when answered on the device before sending, the request's bytes / 0 when an exit
            answered it after it went out (no reply in time); the broker's headers come on top.
    """

    output: dict[str, np.ndarray]
    answered_by: str
    reason: str
    request_id: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    front_compute_fraction: float = 1.0  # front compute spent here, as a fraction of the front half
    hedged: bool = False
    resent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    @property
    def local(self) -> bool:
        """True when the device answered by itself (an exit head), without the server."""
        return self.answered_by.startswith("exit:")


__all__ = ["Result"]


def spent(r: Result, sent: dict[int, float], resent: int, payload: bytes, reply: bytes = b"") -> Result:
    """``r`` with what its request cost: the copies sent (``sent``: hedged, and ``resent`` after "stopping") and the
    bytes each way (``payload``: one copy's, b"" when nothing went out)."""
    r.hedged, r.resent = len(sent) - resent > 1, resent
    r.bytes_sent, r.bytes_received = len(payload) * len(sent), len(reply)
    return r
