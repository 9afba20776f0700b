"""What a server worker checks and counts for each request, apart from the worker itself (``server.py``):
its statistics, the back half's session, the cut tensors a request carries, whether the request is still
wanted when its turn comes, and how often a flood of bad requests may write to the log."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgerun import crossing, wire
from edgerun.bundle import TensorSpec
from edgerun.errors import BundleError, FrameError
from edgerun.refusals import NO_SUBSCRIBER
from edgerun.topics import PREFIX

TOPIC_SHOWN = 120  # characters of a topic in a log line: a 60 KB device id made a 60 KB line per request


@dataclass
class ServerStats:
    """What one server worker did: every received message lands in exactly one bucket."""

    worker: str = ""
    received: int = 0
    served: int = 0
    runs: int = 0  # back-half calls: served / runs is the mean batch (in requests)
    max_run: int = 0  # the most requests one call answered
    errors: dict[str, int] = field(default_factory=dict)  # ERROR frames sent, by code
    dropped: dict[str, int] = field(default_factory=dict)  # bad messages with no response topic, by code
    # replies and ERROR frames the broker did not deliver, by its PUBACK's reason (no_matching_subscribers: the
    # device went away; not_authorized: an ACL): taken back out of served / errors when the PUBACK says so
    undelivered: dict[str, int] = field(default_factory=dict)

    def count_error(self, code: str, answered: bool) -> None:
        bucket = self.errors if answered else self.dropped
        bucket[code] = bucket.get(code, 0) + 1

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def count_undelivered(self, bucket: str, why: str) -> str:
        """Move one answer the broker did not deliver from its bucket (``"served"`` or an ERROR frame's code) to
        ``undelivered`` under the PUBACK's reason ``why``; returns the reason's key there."""
        if bucket == SERVED:
            self.served = max(0, self.served - 1)
        elif self.errors.get(bucket, 0) > 1:
            self.errors[bucket] -= 1
        else:
            self.errors.pop(bucket, None)
        key = re.sub(r"[^a-z0-9]+", "_", why.lower()).strip("_") or "refused"
        self.undelivered[key] = self.undelivered.get(key, 0) + 1
        return key

    def to_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "received": self.received, "served": self.served, "runs": self.runs,
                "max_run": self.max_run, "errors": dict(self.errors), "dropped": dict(self.dropped),
                "undelivered": dict(self.undelivered)}


SERVED = "served"  # the bucket of a reply in ServerStats.count_undelivered (else an ERROR frame's code)
UNACKNOWLEDGED = "Unacknowledged"  # the reason of an answer whose PUBACK had not come when the server disconnected


def undelivered_text(why: str, what: str, topic: str, url: str) -> str:
    """What a server's log says of ``what`` ("the reply to request 7") that the broker at ``url`` did not deliver
    on ``topic``, its PUBACK's reason being ``why``, and what to do about it."""
    said = f"{what} on {topic[:TOPIC_SHOWN]} was not delivered: the broker at {url} answered {why!r}"
    if why == NO_SUBSCRIBER:
        return (f"{said}: nothing subscribes to that topic now, so its device went away before the answer (it "
                "stopped, lost the broker, or its deadline was shorter than this server took), or the broker "
                "refused its subscription (its ACL must let the device read its resp/ topic); nothing to do here")
    if why == "Not authorized":
        return (f"{said}: the broker's ACL does not let this server publish there, so no device gets an answer: "
                f"allow the server's MQTT user to write {PREFIX}/+/+/resp/# (mosquitto: acl_file)")
    if why == UNACKNOWLEDGED:
        return (f"{what} on {topic[:TOPIC_SHOWN]} may not have been delivered: this server disconnected before the "
                f"broker at {url} acknowledged it (slow or gone as the server stopped); its device may ask again")
    if why == "Quota exceeded":
        return f"{said}: this server sends more than the broker's quota for it allows: raise the quota"
    return f"{said}: the broker's log says why"


def make_back_session(path: Path, threads: int) -> Any:
    """An onnxruntime session for the back half: CUDA EP first when this onnxruntime has it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors (InvalidProtobuf, Fail, ...)
        raise BundleError(f"onnxruntime cannot load the back half {str(path)!r}: {exc}; "
                          "re-export the bundle") from exc


def check_tensors(tensors: list[np.ndarray | wire.CodedTensor], specs: list[TensorSpec], max_bytes: int) -> None:
    """Check received cut tensors against the bundle's cut specs (count, dtype, shape but batch)
    and their decoded size against ``max_bytes``, before anything is decoded (coded tensors are
    checked on their declared dtype and shape).

    Raises:
        FrameError: code "bad_tensors" with what was expected; "too_large" when the tensors
            would take more than ``max_bytes`` decoded.
    """
    if len(tensors) != len(specs):
        raise FrameError(
            f"request carries {len(tensors)} tensors, this bundle's cut has {len(specs)} "
            f"({', '.join(s.name for s in specs)}): the device runs another front half", "bad_tensors")
    batch = None
    for t, spec in zip(tensors, specs):
        dtype = wire.DTYPES[t.dtype] if isinstance(t, wire.CodedTensor) else t.dtype
        if str(dtype) != spec.dtype:
            raise FrameError(f"cut tensor {spec.name!r} is {dtype}, expected {spec.dtype}", "bad_tensors")
        if isinstance(t, wire.CodedTensor) and t.dtype != 1:  # fed to the back half as float32, it failed there
            raise FrameError(f"cut tensor {spec.name!r} is {dtype} coded with tsq, which decodes to float32 only: "
                             "the sender built a bad frame; send this tensor raw (codec 0)", "malformed")
        if not spec.matches(tuple(t.shape)) or len(t.shape) == 0:
            raise FrameError(
                f"cut tensor {spec.name!r} has shape {tuple(t.shape)}, expected {spec.shape} "
                "(None = any batch size)", "bad_tensors")
        if batch is not None and t.shape[0] != batch:
            raise FrameError(f"cut tensors disagree on the batch size ({batch} vs {t.shape[0]})", "bad_tensors")
        batch = t.shape[0]
    size = crossing.decoded_bytes(tensors)
    if size > max_bytes:
        raise FrameError(f"the cut tensors take {size} bytes decoded, over this server's limit of {max_bytes}: "
                         "send smaller batches, or raise the server's limit (`edgerun serve --max-frame-mb`)",
                         "too_large")


def waited_past_expiry(msg: Any, now: float | None = None) -> float | None:
    """Seconds ``msg`` waited since it arrived when that is past its MQTT Message Expiry Interval (else None).

    A device sets the expiry to its wait for the reply (rounded up to whole seconds), so past it nobody reads
    the answer: under load such requests took the back half's time from the ones still wanted behind them.
    paho stamps each message with ``time.monotonic()`` as it arrives; the broker already dropped those that
    expired before delivery.
    """
    props = getattr(msg, "properties", None)
    expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
    arrived = float(getattr(msg, "timestamp", 0.0) or 0.0)
    if not expiry or arrived <= 0.0:
        return None
    waited = (time.monotonic() if now is None else now) - arrived
    return waited if waited > float(expiry) else None


class LogBudget:
    """At most ``burst`` log lines per ``window_s`` for each kind of rejection; the rest are counted and said in
    one line when the window turns. A flood of bad requests wrote one line each (the counts are in the stats
    either way)."""

    def __init__(self, burst: int = 20, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.burst, self.window_s, self.clock = burst, window_s, clock
        self._start: dict[str, float] = {}
        self._lines: dict[str, int] = {}
        self._held: dict[str, int] = {}

    def allow(self, kind: str) -> tuple[bool, int]:
        """(write this line?, lines held back in the window that just ended, to say now)."""
        now = self.clock()
        held = 0
        if now - self._start.get(kind, -1e18) >= self.window_s:
            held = self._held.pop(kind, 0)
            self._start[kind], self._lines[kind] = now, 0
        if self._lines[kind] < self.burst:
            self._lines[kind] += 1
            return True, held
        self._held[kind] = self._held.get(kind, 0) + 1
        return False, held
