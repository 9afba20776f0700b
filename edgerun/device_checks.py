"""What the device checks at the edges of a request: its deadline, its input's shape, the crossing
tensors it is about to send, and the reply (or ERROR frame) that comes back. ``edgerun.device``
(the split model's agent) and ``edgerun.llm_device`` use them."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from edgerun import transport, wire
from edgerun.errors import BundleError, ConfigError, EdgerunError, FrameError, InternalError

# The longest deadline / timeout: one day. 1e308 ms overflowed the MQTT expiry (a 32-bit count of
# seconds) and the wait, a traceback after the request was built.
MAX_DEADLINE_MS = 86_400_000.0
EXIT_RESERVE_MS = 0.5  # with exits, the wait for the reply ends this much before the deadline (at most
                       # a tenth of it): the hand-over of the exit's answer fits before the deadline


def reply_wait_s(t_start: float, deadline_ms: float, now: float, exits: bool) -> float:
    """How long, from ``now``, to wait for the server's reply to a request started at ``t_start``: until the
    deadline, or with exits until EXIT_RESERVE_MS (at most a tenth of the deadline) before it, so that the
    exit's answer (computed already) is in the caller's hands by the deadline. Measured from ``now``, the
    moment the wait starts: measured from the encode, the publish's time came on top, and with the hand-over
    the exit's answer came ~0.3 ms after the deadline (every one of 100 requests at 20 ms, up to 1.8 ms)."""
    reserve_ms = min(EXIT_RESERVE_MS, 0.1 * deadline_ms) if exits else 0.0
    return max(t_start + (deadline_ms - reserve_ms) / 1000.0 - now, 0.0)


def check_deadline_ms(value: float | None, what: str = "deadline_ms") -> None:
    """Raise ConfigError unless ``value`` is None or a number of ms in (0, one day]."""
    if value is None:
        return
    # numbers.Real: a deadline computed with numpy (np.float32, np.int64) is a number too
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) <= MAX_DEADLINE_MS:
        sep = " " if what.startswith("--") else "="
        raise ConfigError(f"{what}{sep}{value!r} must be a finite number of ms > 0, at most {MAX_DEADLINE_MS:.0f} "
                          "(one day); leave it unset for the device's timeout")


def error_from_reply(code: str, message: str, bundle_id: str) -> EdgerunError:
    """Map a server ERROR frame onto the edgerun error hierarchy."""
    text = f"the server refused the request ({code}): {message}"
    if code == "internal":
        return InternalError(text)
    if code in ("wrong_bundle", "bad_hash"):
        return BundleError(f"{text}; the server runs another bundle than {bundle_id}")
    if code == "bad_tensors":
        return FrameError(f"{text}; device and server disagree on bundle {bundle_id}", code)
    return FrameError(text, code)


def shape_hint(shape: tuple[int, ...], spec: Any) -> str:
    """What to do about an input of the wrong shape: a missing batch dimension, or which dims differ."""
    if len(shape) == len(spec.shape) - 1 and spec.matches((1, *shape)):
        return "add the batch dimension (x[None])"
    if len(shape) != len(spec.shape):
        return f"it has {len(shape)} dimensions, the bundle {len(spec.shape)}"
    diff = [f"dim {i}: {a} != {b}" for i, (a, b) in enumerate(zip(shape, spec.shape)) if b is not None and a != b]
    return "reshape or re-preprocess it (" + ", ".join(diff) + ")"


def check_reply(tensors: list[Any], specs: Any, batch: int, meta: dict) -> None:
    """A reply must hold the model's outputs for this batch: anything on the response topic with the
    right correlation data (a rogue or broken responder) came back as the server's answer, a coded
    tensor as a raw object, and a bad ``server_us`` as a ValueError."""
    for t, spec in zip(tensors, specs):
        if not isinstance(t, np.ndarray) or str(t.dtype) != spec.dtype or not spec.matches(tuple(t.shape)) \
                or t.shape[0] != batch:
            what = type(t).__name__ if not isinstance(t, np.ndarray) else f"{t.dtype} {tuple(t.shape)}"
            raise FrameError(f"the reply's {spec.name!r} is {what}; the model gives {spec.dtype} {spec.shape} "
                             f"with batch {batch}: the responder is not an `edgerun serve` for this bundle",
                             "bad_reply")
    us = meta.get("server_us", 0)
    if isinstance(us, bool) or not isinstance(us, (int, float)) or not 0 <= us < math.inf:
        raise FrameError(f"the reply's server_us is {us!r}, not a number of microseconds >= 0", "bad_reply")


def check_finite_cut(outs: dict[str, np.ndarray], cut: Any) -> None:
    """Refuse to send a crossing tensor with NaN or Inf (the input check passed: a finite input
    beyond the model's range, e.g. 3e38, overflows inside the front half), which came back as a
    confident answer computed from garbage."""
    for spec in cut:
        arr = outs[spec.name]
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ConfigError(f"the front half turned this input into NaN or Inf at the cut ({spec.name!r}), so "
                              "nothing was sent: the input is far outside the range the model was trained on "
                              "(scale it as the model expects), or the model computes NaN / Inf for it before "
                              "the cut (a log, sqrt or division of 0 or a negative value)")


def check_inputs(x: Any, specs: Any) -> Any:
    """``x`` (an array, or a dict by input name) checked against the bundle's input ``specs``: names, shapes,
    dtypes, finite values, one batch size of at least one sample; returned ready for the front half.

    Raises:
        ConfigError: what does not match, and what to give instead.
    """
    items = x if isinstance(x, dict) else {specs[0].name: x}
    if isinstance(x, dict) and set(x) != {s.name for s in specs}:
        raise ConfigError(f"inputs {sorted(x)} do not match the bundle's {[s.name for s in specs]}")
    if not isinstance(x, dict) and len(specs) != 1:
        raise ConfigError(f"this bundle takes {len(specs)} inputs: pass a dict by name {[s.name for s in specs]}")
    for spec in specs:
        arr = np.asarray(items[spec.name])
        if not spec.matches(tuple(arr.shape)):
            raise ConfigError(f"input {spec.name!r} has shape {tuple(arr.shape)}, the bundle expects "
                              f"{spec.shape} (None = batch size): {shape_hint(arr.shape, spec)}")
        if str(arr.dtype) != spec.dtype:
            raise ConfigError(f"input {spec.name!r} is {arr.dtype}, the bundle expects {spec.dtype}: "
                              f"convert with x.astype(np.{spec.dtype})")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr))[0].tolist()
            raise ConfigError(f"input {spec.name!r} holds NaN or Inf (first at index {bad}): the answer would "
                              "be garbage, so nothing was sent; clean or drop this sample")
    sizes = {s.name: len(items[s.name]) for s in specs}
    if len(set(sizes.values())) > 1:  # the server refused it as a bundle mismatch, or answered it
        listed = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ConfigError(f"inputs hold different numbers of samples ({listed}): give every input the same "
                          "batch size on axis 0 (row i of each is sample i)")
    if 0 in sizes.values():  # the engine said "batch 0 is outside 1..max_batch: split the batch"
        raise ConfigError("an empty batch (0 samples): give at least one sample, batch dimension first")
    return x if isinstance(x, dict) else np.ascontiguousarray(x)


def is_stopping(reply: bytes, decode: Any, bundle_hash16: bytes, max_bytes: int) -> bool:
    """True when ``reply`` is an ERROR frame with code "stopping": the worker that had the request is stopping and
    did not run it (docs/TOPICS.md), so the device sends it again. Only an ERROR frame is decoded here (its kind is
    the header's byte 6): a reply's tensors are decoded once, later. A frame that does not decode is not
    "stopping": its error is told when the reply is read."""
    if len(reply) < wire.MIN_FRAME_SIZE or reply[6] != int(wire.Kind.ERROR):
        return False
    try:
        frame = decode(reply, max_bytes=max_bytes, expect_hash=bundle_hash16)
    except EdgerunError:
        return False
    return frame.kind == wire.Kind.ERROR and isinstance(frame.meta, dict) and frame.meta.get("code") == "stopping"


def resent_note(resent: int) -> str:
    """What a reply's reason, or a no-reply message, adds about the copies sent after `stopping` answers ("" for
    none): " (resent 1x: a worker was stopping)"."""
    return f" (resent {resent}x: a worker was stopping)" if resent else ""


def refusal_text(why: str, request_id: int, url: str, req_topic: str, bundle: Any, stopped: bool = False) -> str:
    """What to tell the caller whose request the broker refused in its PUBACK (reason ``why``), or dropped for
    want of a subscriber (``transport.NO_SUBSCRIBER``: no server for this bundle, so none would ever answer).
    ``stopped``: the request is a copy sent after a worker answered "stopping": that server went away (stopped
    or restarting), it is not one of another export."""
    if why == transport.NO_SUBSCRIBER and stopped:
        return (f"no server took request {request_id}: the server that had it answered `stopping` (shut down or "
                f"restarting), and nothing subscribes to {req_topic} on the broker at {url} any more ({why}); send "
                f"it again once `edgerun serve` for this bundle ({bundle.topic_id}, {bundle.model_id}) is back, or "
                "run two workers in one --group so that one answers while the other restarts")
    if why == transport.NO_SUBSCRIBER:
        return (f"no server took request {request_id}: nothing subscribes to {req_topic} on the broker at {url} "
                f"({why}); start `edgerun serve` for this very bundle ({bundle.topic_id}, {bundle.model_id}) on "
                "that broker: a server of another export listens on other topics")
    return f"the broker at {url} refused request {request_id} ({why}): {refusal_hint(why, req_topic)}"


def refusal_hint(why: str, where: str) -> str:
    """What to do about a PUBACK refusal of reason ``why`` of a publish on ``where`` (the request topic)."""
    return (f"its ACL does not let this device publish on {where}: allow the device's MQTT user to write "
            f"{transport.PREFIX}/# (mosquitto: acl_file)" if why == "Not authorized" else "the broker's log says why")
