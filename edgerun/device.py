"""The device agent: runs the front half locally and asks a server for the back half over MQTT 5.

Example:
    >>> from edgerun.device import Device
    >>> with Device("bundles/digits", broker="mqtt://127.0.0.1:1883") as dev:   # doctest: +SKIP
    ...     r = dev.infer(x)              # x: a batch, shape = bundle.inputs[0].shape
    ...     r.output["logits"], r.answered_by, r.timings_ms["total"]
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgerun import crossing, transport, wire
from edgerun.bundle import Bundle
from edgerun.errors import (
    BundleError,
    ConfigError,
    EdgerunError,
    FrameError,
    InternalError,
    TransportError,
    UnsupportedOpError,
)

log = logging.getLogger("edgerun.device")

_ENGINES = ("native", "ort")


@dataclass
class Result:
    """One answered request.

    Attributes:
        output: the model's outputs by name.
        answered_by: "server" (later also "exit:<i>" for an early exit).
        reason: why it was answered there, e.g. "server replied".
        request_id: the id sent as Correlation Data.
        timings_ms: "device", "encode", "network" (round trip minus server compute),
            "server", "decode", "total".
        worker: id of the server worker that answered ("" when answered locally).
    """

    output: dict[str, np.ndarray]
    answered_by: str
    reason: str
    request_id: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    worker: str = ""


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


def _encoder() -> Any:
    """wire.encode_native (the C++ encoder) unless the compiled core is missing."""
    try:
        from edgerun import _core  # noqa: F401

        return wire.encode_native
    except ImportError:
        log.warning("edgerun._core is missing: encoding frames in Python")
        return wire.encode


class Device:
    """A device that runs the front half of a bundle and gets the rest from a server.

    Args:
        bundle: a loaded Bundle or its path.
        broker: ``mqtt://host:port`` of the MQTT 5 broker the servers listen on.
        device_id: id in the topics (default ``device-<host>-<pid>-<random>``).
        engine: "native" (front.erg on the C++ engine) or "ort" (front.onnx on onnxruntime).
        threads: threads of the front-half engine.
        timeout_ms: how long ``infer`` waits for a reply by default.
        max_frame_bytes: largest reply accepted.

    Raises:
        BundleError: the bundle is missing or corrupted.
        ConfigError: bad engine, threads, timeout or device id.
        TransportError: the broker cannot be reached.
    """

    def __init__(
        self,
        bundle: Bundle | str | Path,
        *,
        broker: str,
        device_id: str | None = None,
        engine: str = "native",
        threads: int = 1,
        timeout_ms: float = 5000,
        max_frame_bytes: int | None = None,
    ) -> None:
        if engine not in _ENGINES:
            raise ConfigError(f"engine={engine!r}: use one of {_ENGINES}")
        if threads < 1:
            raise ConfigError(f"threads={threads} must be >= 1")
        if not timeout_ms > 0:
            raise ConfigError(f"timeout_ms={timeout_ms} must be > 0")
        self.bundle = b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.device_id = transport.check_segment(
            "device id", device_id or f"{transport.default_id('device')}-{secrets.token_hex(2)}")
        self.timeout_ms = float(timeout_ms)
        self.max_frame_bytes = wire.DEFAULT_MAX_FRAME_BYTES if max_frame_bytes is None else int(max_frame_bytes)
        self.engine = _make_front(b, engine, threads)
        self._encode = _encoder()
        self._packer = crossing.Packer(b.manifest.get("codec", {"id": "none"}))
        self._req_topic = transport.request_topic(b.model_id, b.topic_id, self.device_id)
        self._resp_topic = transport.response_topic(b.model_id, b.topic_id, self.device_id)
        self._presence = transport.presence_topic(b.model_id, b.topic_id, "device", self.device_id)
        self._pending: dict[int, Future[tuple[bytes, float]]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(secrets.randbits(62) + 1)  # random start: ids stay unique across restarts
        self.dropped_replies = 0
        self._client = transport.MqttClient(
            broker, f"edgerun-{self.device_id}", on_message=self._on_reply,
            will=(self._presence, transport.presence_payload("device", self.device_id, "offline")))
        self._client.connect()
        try:
            self._client.subscribe(self._resp_topic)
            self._client.publish(self._presence, transport.presence_payload(
                "device", self.device_id, "online", bundle=b.hash, engine=engine), retain=True)
        except Exception:
            self._client.close()
            raise

    # -- public ------------------------------------------------------------
    def infer(self, x: np.ndarray | dict[str, np.ndarray], *, deadline_ms: float | None = None) -> Result:
        """Run the front half here, the back half on a server, and return the model's outputs.

        Args:
            x: the input batch (shape of ``bundle.inputs[0]``, batch dim included), or a
                dict by input name for models with several inputs.
            deadline_ms: answer within this many ms (default: the device's timeout_ms).

        Returns:
            A Result with the outputs and per-stage timings.

        Raises:
            ConfigError: ``x`` does not match the bundle's inputs.
            TransportError: no reply within the deadline (no server, broker or server down).
            FrameError / BundleError / InternalError: the server answered with an error.
        """
        t_start = time.perf_counter()
        wait_ms = self.timeout_ms if deadline_ms is None else float(deadline_ms)
        if not wait_ms > 0:
            raise ConfigError(f"deadline_ms={deadline_ms} must be > 0")
        feeds = self._check_input(x)
        outs = self._run_front(feeds)
        t_front = time.perf_counter()
        cut = self._packer.pack({s.name: outs[s.name] for s in self.bundle.cut})
        request_id = next(self._ids)
        frame = wire.Frame(kind=wire.Kind.REQUEST, request_id=request_id, seq=0,
                           bundle_hash=self.bundle.hash16, tensors=cut, meta={})
        payload = self._encode(frame)
        t_enc = time.perf_counter()
        fut: Future[tuple[bytes, float]] = Future()
        with self._lock:
            self._pending[request_id] = fut
        try:
            self._client.publish(self._req_topic, payload, response_topic=self._resp_topic,
                                 correlation=transport.correlation_bytes(request_id))
            remaining_s = max(wait_ms / 1000.0 - (t_enc - t_start), 0.0)
            reply, t_recv = fut.result(timeout=remaining_s)
        except FutureTimeout:
            raise TransportError(
                f"no reply from a server for bundle {self.bundle.topic_id} ({self.bundle.model_id}) within "
                f"{wait_ms:g} ms: is `edgerun serve` running for this bundle on {self._client.url}?") from None
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
        return self._finish(reply, request_id, (t_start, t_front, t_enc, t_recv))

    def close(self) -> None:
        """Publish presence "offline", disconnect; pending requests fail with TransportError."""
        self._client.close(final=(self._presence, transport.presence_payload("device", self.device_id, "offline")))
        with self._lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(TransportError("the device was closed while waiting for a reply"))

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------
    def _check_input(self, x: Any) -> Any:
        specs = self.bundle.inputs
        items = x if isinstance(x, dict) else {specs[0].name: x}
        if isinstance(x, dict) and set(x) != {s.name for s in specs}:
            raise ConfigError(f"inputs {sorted(x)} do not match the bundle's {[s.name for s in specs]}")
        if not isinstance(x, dict) and len(specs) != 1:
            raise ConfigError(f"this bundle takes {len(specs)} inputs: pass a dict by name {[s.name for s in specs]}")
        for spec in specs:
            arr = np.asarray(items[spec.name])
            if not spec.matches(tuple(arr.shape)):
                raise ConfigError(f"input {spec.name!r} has shape {tuple(arr.shape)}, the bundle expects "
                                  f"{spec.shape} (None = batch size): add the batch dimension?")
            if str(arr.dtype) != spec.dtype:
                raise ConfigError(f"input {spec.name!r} is {arr.dtype}, the bundle expects {spec.dtype}: "
                                  f"convert with x.astype(np.{spec.dtype})")
        return x if isinstance(x, dict) else np.ascontiguousarray(x)

    def _run_front(self, feeds: Any) -> dict[str, np.ndarray]:
        """Run the front half; batches above the native engine's max_batch go through in slices."""
        limit = getattr(self.engine, "max_batch", None)
        first = next(iter(feeds.values())) if isinstance(feeds, dict) else feeds
        n = int(first.shape[0])
        if limit is None or n <= limit:
            return self.engine.run(feeds)
        parts = []
        for lo in range(0, n, limit):
            sl = {k: v[lo : lo + limit] for k, v in feeds.items()} if isinstance(feeds, dict) else feeds[lo : lo + limit]
            parts.append(self.engine.run(sl))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _finish(self, reply: bytes, request_id: int, marks: tuple[float, float, float, float]) -> Result:
        t_start, t_front, t_enc, t_recv = marks
        t0 = time.perf_counter()
        frame = wire.decode(reply, max_bytes=self.max_frame_bytes, expect_hash=self.bundle.hash16)
        if frame.kind == wire.Kind.ERROR:
            meta = frame.meta or {}
            raise error_from_reply(str(meta.get("code", "unknown")), str(meta.get("message", "")),
                                   self.bundle.topic_id)
        if frame.kind != wire.Kind.REPLY or frame.request_id != request_id:
            raise FrameError(f"reply to request {request_id} is a {frame.kind!r} for request {frame.request_id}",
                             "bad_reply")
        names = [s.name for s in self.bundle.outputs]
        if len(frame.tensors) != len(names):
            raise FrameError(f"reply carries {len(frame.tensors)} tensors, the model has {len(names)} outputs",
                             "bad_reply")
        t_dec = time.perf_counter()
        server_ms = float(frame.meta.get("server_us", 0)) / 1000.0
        timings = {
            "device": (t_front - t_start) * 1e3,
            "encode": (t_enc - t_front) * 1e3,
            "network": max((t_recv - t_enc) * 1e3 - server_ms, 0.0),
            "server": server_ms,
            "decode": (t_dec - t0) * 1e3,
            "total": (t_dec - t_start) * 1e3,
        }
        return Result(output=dict(zip(names, frame.tensors)), answered_by="server", reason="server replied",
                      request_id=request_id, timings_ms=timings, worker=str(frame.meta.get("worker", "")))

    def _on_reply(self, msg: Any) -> None:
        """paho thread: hand the reply to the waiting infer(); unknown or repeated ids are dropped."""
        t_recv = time.perf_counter()
        props = getattr(msg, "properties", None)
        request_id = transport.correlation_id(getattr(props, "CorrelationData", None))
        with self._lock:
            fut = self._pending.pop(request_id, None) if request_id is not None else None
            if fut is None:
                self.dropped_replies += 1
        if fut is None:
            log.warning("dropped a reply for unknown or already answered request %s", request_id)
            return
        if not fut.done():
            fut.set_result((bytes(msg.payload), t_recv))


def _make_front(b: Bundle, engine: str, threads: int) -> Any:
    from edgerun.engine import make_engine

    if engine == "native":
        if not b.native_ok:
            raise UnsupportedOpError(f"the native engine cannot run the front half of {b} ({b.native_reason}): "
                            "use engine='ort' (--engine ort)")
        return make_engine("native", erg_path=b.file("front.erg"), threads=threads)
    return make_engine("ort", onnx_path=b.file("front.onnx"), threads=threads)
