"""The server: runs the back half of a bundle for every request that reaches it over MQTT.

N server processes subscribe to the same shared subscription and the broker splits
the requests among them. Each request is decoded, checked against the bundle's cut,
run on onnxruntime, and answered on the device's Response Topic with the request's
Correlation Data. Bad input never kills the server: it is answered with an ERROR
frame (or dropped when there is nowhere to answer) and counted in ``ServerStats``.

Example:
    >>> from edgerun.server import serve
    >>> stats = serve("bundles/digits", "mqtt://127.0.0.1:1883")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgerun import crossing, transport, wire
from edgerun.bundle import Bundle, TensorSpec
from edgerun.engine import check_io
from edgerun.errors import BundleError, ConfigError, FrameError, TransportError

log = logging.getLogger("edgerun.server")

_POLL_S = 0.1
_STATS_EVERY_S = 60.0


@dataclass
class ServerStats:
    """What one server worker did: every received message lands in exactly one bucket."""

    worker: str = ""
    received: int = 0
    served: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # ERROR frames sent, by code
    dropped: dict[str, int] = field(default_factory=dict)  # bad messages with no response topic, by code

    def count_error(self, code: str, answered: bool) -> None:
        bucket = self.errors if answered else self.dropped
        bucket[code] = bucket.get(code, 0) + 1

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "received": self.received, "served": self.served,
                "errors": dict(self.errors), "dropped": dict(self.dropped)}


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


class _Worker:
    """State of one serve() call: the bundle, the ORT session, the MQTT client, the stats."""

    def __init__(self, bundle: Bundle, threads: int, max_frame_bytes: int, worker_id: str) -> None:
        self.bundle = bundle
        self.max_frame_bytes = max_frame_bytes
        self.session = make_back_session(bundle.file("back.onnx"), threads)
        self.in_names = [i.name for i in self.session.get_inputs()]
        self.out_names = [o.name for o in bundle.outputs]
        check_io(bundle.file("back.onnx"), self.in_names, [o.name for o in self.session.get_outputs()],
                 [s.name for s in bundle.cut], self.out_names)
        self.stats = ServerStats(worker=worker_id)
        self.decode, self.encode = wire.best_decoder(), wire.best_encoder()
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.client: transport.MqttClient | None = None

    def handle(self, msg: Any) -> None:
        """Answer one MQTT message; never raises."""
        self.stats.received += 1
        topic = str(getattr(msg, "topic", "?"))  # names the sending device in log lines
        props = getattr(msg, "properties", None)
        resp_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        request_id = transport.correlation_id(corr) or 0
        bad_topic = transport.publish_topic_problem(resp_topic) if resp_topic is not None else ""
        if bad_topic:  # a wildcard in it made the reply's publish raise, which ended the server
            self.stats.count_error("bad_response_topic", answered=False)
            log.warning("request %d dropped: its Response Topic %.80r %s", request_id, resp_topic, bad_topic)
            return
        t0 = time.perf_counter()
        try:
            frame = self.decode(msg.payload, max_bytes=self.max_frame_bytes, expect_hash=self.bundle.hash16)
            request_id = frame.request_id
            if frame.kind != wire.Kind.REQUEST:
                raise FrameError(f"expected a REQUEST frame, got {frame.kind!r}", "bad_kind")
            check_tensors(frame.tensors, self.bundle.cut, self.max_frame_bytes)
            frame.tensors = crossing.unpack(frame.tensors)
            reply = self._run(frame, t0)
        except FrameError as exc:
            self._fail(topic, resp_topic, corr, request_id, exc.code, str(exc))
            return
        except Exception as exc:  # a bug or an ORT failure: answer, log, keep serving
            log.exception("back half failed on request %d", request_id)
            self._fail(topic, resp_topic, corr, request_id, "internal", f"server error: {type(exc).__name__}: {exc}")
            return
        if resp_topic is None:
            self.stats.count_error("no_response_topic", answered=False)
            log.warning("request %d has no Response Topic: computed but dropped", request_id)
            return
        if self._publish(resp_topic, reply, corr, request_id):
            self.stats.served += 1

    def _publish(self, topic: str, payload: bytes, corr: bytes | None, request_id: int) -> bool:
        """Publish a reply; a failure (broker gone, queue full) is logged and counted, never raised."""
        try:
            self.client.publish(topic, payload, correlation=corr)
            return True
        except (ValueError, RuntimeError, TypeError, OSError, TransportError) as exc:
            self.stats.count_error("reply_failed", answered=False)
            log.warning("could not send the reply to request %d: %s", request_id, exc)
            return False

    def _run(self, frame: Any, t0: float) -> bytes:
        """Back half on the decoded frame; ``server_us`` counts decode + compute since ``t0``."""
        feeds = dict(zip(self.in_names, frame.tensors))
        outs = self.session.run(self.out_names, feeds)
        server_us = int((time.perf_counter() - t0) * 1e6)
        reply = wire.Frame(kind=wire.Kind.REPLY, request_id=frame.request_id, seq=frame.seq,
                           bundle_hash=self.bundle.hash16, tensors=[np.ascontiguousarray(o) for o in outs],
                           meta={"server_us": server_us, "worker": self.stats.worker})
        return self.encode(reply)

    def _fail(self, topic: str, resp_topic: str | None, corr: bytes | None, request_id: int, code: str,
              message: str) -> None:
        answered = resp_topic is not None
        self.stats.count_error(code, answered)
        log.warning("request %d on %s rejected (%s): %s%s", request_id, topic, code, message,
                    "" if answered else " [dropped]")
        if answered:
            payload = wire.error_frame(request_id, self.bundle.hash16, code, message)
            self._publish(resp_topic, payload, corr, request_id)


def serve(
    bundle: Bundle | str | Path,
    broker_url: str,
    *,
    group: str = "edgerun",
    threads: int = 1,
    max_frame_bytes: int | None = None,
    stop: threading.Event | None = None,
    ready: Callable[[], None] | None = None,
    worker_id: str | None = None,
    handle_signals: bool = False,
) -> ServerStats:
    """Serve the back half of ``bundle`` until ``stop`` is set (or SIGINT/SIGTERM).

    Args:
        bundle: a loaded Bundle or its path.
        broker_url: ``mqtt://host:port`` of an MQTT 5 broker.
        group: shared-subscription group; workers of one group split the requests.
        threads: onnxruntime intra-op threads.
        max_frame_bytes: larger requests, and requests whose coded tensors would take more once
            decoded, are refused with code "too_large".
        stop: set it to stop serving (from another thread).
        ready: called once subscribed, i.e. when requests will be served.
        worker_id: id in presence and reply meta (default ``server-<host>-<pid>``).
        handle_signals: stop cleanly on SIGINT/SIGTERM (main thread only; the CLI sets it).

    Returns:
        The worker's ServerStats.

    Raises:
        BundleError: the bundle is missing or corrupted.
        TransportError: the broker cannot be reached at start.
        ConfigError: bad group / worker id / threads.
    """
    if not 1 <= threads <= 256:  # the native engine's range, for one meaning of --threads everywhere
        raise ConfigError(f"threads={threads} must be in 1..256 (the cores onnxruntime may use for the back half)")
    max_frame_bytes = wire.DEFAULT_MAX_FRAME_BYTES if max_frame_bytes is None else int(max_frame_bytes)
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    wid = transport.check_segment("worker id", worker_id or transport.default_id("server"))
    sub = transport.shared_request_filter(b.model_id, b.topic_id, group)
    pres = transport.presence_topic(b.model_id, b.topic_id, "server", wid)
    w = _Worker(b, threads, max_frame_bytes, wid)
    # max_queued=0: paho counts replies awaiting the broker's ack against its cap, so a capped server
    # lost computed replies under a burst (8,982 of 1.1 M in a minute of flooding)
    client = transport.MqttClient(broker_url, f"edgerun-{wid}", on_message=w.inbox.put, max_queued=0,
                                  will=(pres, transport.presence_payload("server", wid, "offline")))
    w.client = client
    stop = stop or threading.Event()
    restore = _install_signals(stop) if handle_signals else None
    client.connect()
    try:
        client.subscribe(sub)
        client.announce(pres, transport.presence_payload("server", wid, "online", bundle=b.hash, group=group))
        log.info("serving %s as %s on %s (%s)", b, wid, client.url, sub)
        if ready is not None:
            ready()
        _loop(w, stop)
    finally:
        client.close(final=(pres, transport.presence_payload("server", wid, "offline")))
        if restore is not None:
            restore()
        log.info("stopped: %s", json.dumps(w.stats.to_dict()))
    return w.stats


def _loop(w: _Worker, stop: threading.Event) -> None:
    next_stats = time.monotonic() + _STATS_EVERY_S
    while not stop.is_set():
        try:
            msg = w.inbox.get(timeout=_POLL_S)
        except queue.Empty:
            msg = None
        if msg is not None:
            try:
                w.handle(msg)
            except Exception:  # handle() never raises; if a bug makes it, one request fails, not the server
                log.exception("unexpected error on a request; still serving")
        if time.monotonic() >= next_stats:
            log.info("stats: %s", json.dumps(w.stats.to_dict()))
            next_stats = time.monotonic() + _STATS_EVERY_S  # after a long stop: one line, not a burst


def _install_signals(stop: threading.Event) -> Callable[[], None]:
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda *_: stop.set())

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore
