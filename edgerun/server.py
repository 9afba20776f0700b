"""The server: runs the back half of a bundle for every request that reaches it over MQTT.

N server processes subscribe to the same shared subscription and the broker splits
the requests among them. Each request is decoded, checked against the bundle's cut,
run on onnxruntime, and answered on the device's Response Topic with the request's
Correlation Data. Bad input never kills the server: it is answered with an ERROR
frame (or dropped when there is nowhere to answer) and counted in ``ServerStats``.

Batching across devices (``max_batch`` > 1): the requests waiting in the worker's inbox
when it takes one (and those arriving within ``batch_wait_ms``) run as one back-half
call, up to ``max_batch`` samples; each request is decoded and checked alone first, so a
bad one is refused without touching the others, and each gets its own reply.

Example:
    >>> from edgerun.server import serve
    >>> stats = serve("bundles/digits", "mqtt://127.0.0.1:1883")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerun import crossing, transport, wire
from edgerun.bundle import Bundle
from edgerun.engine import check_io
from edgerun.errors import ConfigError, FrameError, TransportError
from edgerun.server_checks import (SERVED, TOPIC_SHOWN, UNACKNOWLEDGED, LogBudget,  # noqa: F401 - re-exported
                                   ServerStats, check_tensors, make_back_session, undelivered_text,
                                   waited_past_expiry)

log = logging.getLogger("edgerun.server")

_POLL_S = 0.1
_STATS_EVERY_S = 60.0
MAX_BATCH = 4096  # samples per back-half call (serve --max-batch)
MAX_BATCH_WAIT_MS = 1000.0
# Request bytes a worker holds waiting for it (serve's max_waiting_bytes; at least 8 frames of the largest size
# it takes): the inbox was unbounded, so devices sending faster than the back half ran grew the server
# until the kernel killed it. Over it a request is refused at once with code "busy".
MIN_WAITING_BYTES = 256 * 2**20
DRAIN_S = 2.0  # on stop: how long a worker goes on answering the requests it holds
# then until no request came for QUIET_S (those the broker had queued for it before its unsubscribe), at most
# DRAIN_S more: one that came after it began to disconnect was refused and counted, its answer never sent
QUIET_S = 0.2
_STOPPING = ("this server is stopping: the request was not run; send it again (another worker of the group "
             "takes it)")


@dataclass
class _Request:
    """One decoded, checked request waiting for the back half."""

    topic: str
    resp_topic: str | None
    corr: bytes | None
    frame: Any
    t0: float

    @property
    def rows(self) -> int:
        return int(self.frame.tensors[0].shape[0])


class _Worker:
    """State of one serve() call: the bundle, the ORT session, the MQTT client, the stats."""

    def __init__(self, bundle: Bundle, threads: int, max_frame_bytes: int, worker_id: str,
                 max_batch: int = 1) -> None:
        self._common(bundle, max_frame_bytes, worker_id, max_batch)
        self.session = make_back_session(bundle.file("back.onnx"), threads)
        self.in_names = [i.name for i in self.session.get_inputs()]
        self.out_names = [o.name for o in bundle.outputs]
        check_io(bundle.file("back.onnx"), self.in_names, [o.name for o in self.session.get_outputs()],
                 [s.name for s in bundle.cut], self.out_names)

    def _common(self, bundle: Any, max_frame_bytes: int, worker_id: str, max_batch: int) -> None:
        """What every kind of worker holds: its bundle, limits, stats, codecs, inbox and client."""
        self.bundle = bundle
        self.max_frame_bytes = max_frame_bytes
        self.max_batch = max_batch
        self.stats = ServerStats(worker=worker_id)
        self.decode, self.encode = wire.best_decoder(), wire.best_encoder()
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.client: transport.MqttClient | None = None
        self.max_waiting_bytes = max(MIN_WAITING_BYTES, 8 * max_frame_bytes)
        self._door = threading.Lock()  # offer() runs on paho's thread, the rest on the worker's
        self._waiting_bytes = 0  # payload bytes in the inbox
        self._refused: dict[tuple[str, bool], int] = {}  # by offer(): (code, answered) -> n, not yet in the stats
        # answers the broker did not deliver (its PUBACK, paho's thread): ((request id, topic, bucket), why),
        # folded into the stats by count_refused
        self.refusals = transport.Refusals(self._not_delivered)
        self._undelivered: list[tuple[tuple[int, str, str], str]] = []
        self._stopping = False
        self._last_offer = 0.0  # monotonic time of the last offer() (drain waits for a quiet spell)
        self._log_budget = LogBudget()

    def offer(self, msg: Any) -> None:
        """paho's thread: queue a message for the worker, or refuse it at once: code "busy" when the requests
        already waiting hold ``max_waiting_bytes`` (one always fits), "stopping" once the worker stops. Never
        raises."""
        size = len(getattr(msg, "payload", b"") or b"")
        with self._door:
            self._last_offer = time.monotonic()
            code = "stopping" if self._stopping else \
                "busy" if 0 < self._waiting_bytes and self._waiting_bytes + size > self.max_waiting_bytes else ""
            if not code:
                self._waiting_bytes += size
                self.inbox.put(msg)
                return
            waiting = self._waiting_bytes
        mb = 2**20
        answered = self._refuse(msg, code, _STOPPING if code == "stopping" else
                                f"this server is overloaded: {waiting / mb:.1f} MiB of requests are waiting for it "
                                f"(its limit is {self.max_waiting_bytes / mb:.0f} MiB); retry later, or start more "
                                "`edgerun serve` workers in its --group")
        with self._door:
            self._refused[(code, answered)] = self._refused.get((code, answered), 0) + 1

    def _refuse(self, msg: Any, code: str, why: str) -> bool:
        """An ERROR frame for a message that is not decoded (its id from its Correlation Data); False when none
        is sent: no usable Response Topic, or a split LLM's worker (its device replays a step that gets no
        answer, and ends the session on an error code it does not know). Never raises."""
        props = getattr(msg, "properties", None)
        resp_topic = getattr(props, "ResponseTopic", None)
        corr = getattr(props, "CorrelationData", None)
        if not isinstance(self.bundle, Bundle) or resp_topic is None or transport.publish_topic_problem(resp_topic):
            return False
        request_id = transport.correlation_id(corr) or 0
        try:
            info = self.client.publish(resp_topic, wire.error_frame(request_id, self.bundle.hash16, code, why),
                                       correlation=corr)
            self._watch(info, request_id, resp_topic, code)
        except Exception as exc:  # noqa: BLE001 - paho's thread must not die; the device times out
            log.warning("could not refuse request %d (%s): %s", request_id, code, exc)
        return True

    def took(self, msg: Any) -> None:
        """The worker took ``msg`` from the inbox: its bytes no longer wait."""
        with self._door:  # not below 0: handle() answers a message that offer() never queued
            self._waiting_bytes = max(0, self._waiting_bytes - len(getattr(msg, "payload", b"") or b""))

    def count_refused(self) -> None:
        """Fold the refusals of offer(), then the answers the broker did not deliver, into the stats (the worker's
        thread: the only one that writes them; in that order: an answer is counted before its PUBACK comes)."""
        with self._door:
            refused, self._refused = self._refused, {}
            undelivered, self._undelivered = self._undelivered, []
        for (code, answered), n in refused.items():
            self.stats.received += n
            bucket = self.stats.errors if answered else self.stats.dropped
            bucket[code] = bucket.get(code, 0) + n
            log.warning("%d request(s) %s (%s)%s", n, "refused" if answered else "dropped", code,
                        f": over {self.max_waiting_bytes >> 20} MiB waiting" if code == "busy" else "")
        for (request_id, topic, bucket), why in undelivered:
            self.stats.count_undelivered(bucket, why)
            what = f"the reply to request {request_id}" if bucket == SERVED else \
                f"the ERROR frame ({bucket}) for request {request_id}"
            self._log("undelivered", "%s", undelivered_text(why, what, topic, self.client.url))

    def _not_delivered(self, key: tuple[int, str, str], why: str) -> None:
        """paho's thread: the broker did not deliver an answer (its PUBACK's reason ``why``)."""
        with self._door:
            self._undelivered.append((key, why))

    def _watch(self, info: Any, request_id: int, topic: str, bucket: str) -> None:
        """Have the PUBACK of an answer read (``bucket``: the stats it was counted in, SERVED or an error code)."""
        if self.client.refusals is self.refusals:  # a client serve() wired
            self.refusals.watch(info.mid, (request_id, topic, bucket))

    def drain(self, budget_s: float = DRAIN_S) -> None:
        """On stop: answer the requests already waiting for up to ``budget_s``, then refuse the rest, and any
        that still arrive (until none came for QUIET_S, at most ``budget_s`` more), with code "stopping". The broker
        had handed them to this worker, so no other would take them, and they vanished uncounted (174 of 300 at a
        SIGTERM). Never raises."""
        with self._door:
            self._stopping = True
        until = time.monotonic() + budget_s
        while True:
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                break
            if time.monotonic() < until:
                self.handle_from(msg)
                continue
            self.took(msg)
            self.stats.received += 1
            self.stats.count_error("stopping", answered=self._refuse(msg, "stopping", _STOPPING))
        until = time.monotonic() + budget_s
        while (quiet := time.monotonic() - self._last_offer) < QUIET_S and time.monotonic() < until:
            time.sleep(QUIET_S - quiet)  # offer() refuses what still comes
        self.count_refused()

    def count_unacknowledged(self) -> None:
        """After the client closed: the answers whose PUBACK never came are counted undelivered (it waited for
        them a while: the broker may not have taken them)."""
        for key in self.refusals.unacknowledged():
            self._not_delivered(key, UNACKNOWLEDGED)
        self.count_refused()

    def extra_filters(self) -> list[str]:
        """Topic filters this worker reads besides the group's shared subscription."""
        return []

    def tick(self) -> None:
        """Called between requests (every ~0.1 s when idle): housekeeping."""

    def handle(self, msg: Any) -> None:
        """Answer one MQTT message; never raises."""
        self.handle_from(msg)

    def handle_from(self, first: Any, wait_s: float = 0.0, stop: threading.Event | None = None) -> None:
        """Answer ``first`` and, with ``max_batch`` > 1, the requests batched with it: those in the
        inbox now and those arriving within ``wait_s``, until they hold ``max_batch`` samples (each
        is decoded and checked as it is taken, so a full batch stops the wait). Never raises."""
        ready = [r for r in (self._prepare(first),) if r is not None]
        rows = sum(r.rows for r in ready)
        until = time.monotonic() + wait_s
        while self.max_batch > 1 and rows < self.max_batch and not (stop is not None and stop.is_set()):
            left = until - time.monotonic()
            try:  # waits in slices of _POLL_S so a stop is seen
                msg = self.inbox.get(timeout=min(left, _POLL_S)) if left > 0 else self.inbox.get_nowait()
            except queue.Empty:
                if left > _POLL_S:
                    continue
                break
            r = self._prepare(msg)
            if r is not None:
                ready.append(r)
                rows += r.rows
        run: list[_Request] = []
        run_rows = 0
        for r in ready:
            if run and run_rows + r.rows > self.max_batch:
                self._answer(run)
                run, run_rows = [], 0
            run.append(r)
            run_rows += r.rows
        if run:
            self._answer(run)

    def _prepare(self, msg: Any) -> _Request | None:
        """Decode and check one message; a bad one is answered (or dropped) here: None."""
        self.took(msg)
        self.stats.received += 1
        topic = str(getattr(msg, "topic", "?"))  # names the sending device in log lines
        props = getattr(msg, "properties", None)
        resp_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        request_id = transport.correlation_id(corr) or 0
        bad_topic = transport.publish_topic_problem(resp_topic) if resp_topic is not None else ""
        if bad_topic:  # a wildcard in it made the reply's publish raise, which ended the server
            self.stats.count_error("bad_response_topic", answered=False)
            self._log("bad_response_topic", "request %d dropped: its Response Topic %.80r %s", request_id, resp_topic,
                      bad_topic)
            return None
        waited = waited_past_expiry(msg)
        if waited is not None:  # its device stopped waiting: nobody reads this answer
            self.stats.count_error("expired", answered=False)
            self._log("expired", "request %d on %.*s dropped, not computed: it waited %.1f s here, past its "
                      "expiry of %d s", request_id, TOPIC_SHOWN, topic, waited, msg.properties.MessageExpiryInterval)
            return None
        t0 = time.perf_counter()
        try:
            frame = self.decode(msg.payload, max_bytes=self.max_frame_bytes, expect_hash=self.bundle.hash16)
            request_id = frame.request_id
            if frame.kind != wire.Kind.REQUEST:
                raise FrameError(f"expected a REQUEST frame, got {frame.kind!r}", "bad_kind")
            check_tensors(frame.tensors, self.bundle.cut, self.max_frame_bytes)
            frame.tensors = crossing.unpack(frame.tensors)
        except FrameError as exc:
            self._fail(topic, resp_topic, corr, request_id, exc.code, str(exc))
            return None
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("decoding request %d failed", request_id)
            self._fail(topic, resp_topic, corr, request_id, "internal", f"server error: {type(exc).__name__}: {exc}")
            return None
        if resp_topic is None:  # checked after the frame, so a bad one is counted by its own code
            # nowhere to answer: running the back half for it took a batch's room and a flood of them the
            # worker's whole time, while the requests behind them waited
            self.stats.count_error("no_response_topic", answered=False)
            self._log("no_response_topic", "request %d on %.*s has no Response Topic: dropped, not computed", request_id,
                      TOPIC_SHOWN, topic)
            return None
        return _Request(topic, resp_topic, corr, frame, t0)

    def _answer(self, run: list[_Request]) -> None:
        """The back half on ``run`` (one call), then each request's reply."""
        run = [r for r in run if self._finite_cut(r)]
        if not run:
            return
        try:
            outs = self._back([r.frame.tensors for r in run])
        except Exception as exc:  # a batched call that fails is retried request by request, so one
            if len(run) == 1:  # request's failure is its own
                r = run[0]
                log.exception("back half failed on request %d", r.frame.request_id)
                self._fail(r.topic, r.resp_topic, r.corr, r.frame.request_id, "internal",
                           f"server error: {type(exc).__name__}: {exc}")
                return
            log.exception("a batched back-half call of %d requests failed; running them one by one", len(run))
            for r in run:
                self._answer([r])
            return
        total = sum(r.rows for r in run)
        if len(run) > 1 and any(np.ndim(o) == 0 or o.shape[0] != total for o in outs):
            log.warning("the back half's outputs do not keep the batch axis (%s for %d samples): "
                        "running these %d requests one by one", [np.shape(o) for o in outs], total, len(run))
            for r in run:
                self._answer([r])
            return
        self.stats.runs += 1
        self.stats.max_run = max(self.stats.max_run, len(run))
        at = 0
        for r in run:
            mine = [np.ascontiguousarray(o[at:at + r.rows]) for o in outs]
            at += r.rows
            if self._finite_outputs(r, mine):
                self._reply(r, mine, batch=len(run))

    def _finite_cut(self, r: _Request) -> bool:
        """Refuse cut tensors holding NaN / Inf (False): the back half turned them into a NaN answer sent as
        a REPLY, whose argmax is a confident class. Devices never send them (device_checks.check_finite_cut);
        a foreign or broken client does."""
        for t, spec in zip(r.frame.tensors, self.bundle.cut):
            if t.dtype.kind == "f" and not np.isfinite(t).all():
                bad = int(np.count_nonzero(~np.isfinite(t)))
                self._fail(r.topic, r.resp_topic, r.corr, r.frame.request_id, "non_finite",
                           f"cut tensor {spec.name!r} holds {bad} NaN/Inf value(s): the answer would be garbage, so "
                           "the back half was not run; the sender's front half diverged (check its input)")
                return False
        return True

    def _finite_outputs(self, r: _Request, outs: list[np.ndarray]) -> bool:
        """Refuse a reply holding NaN / Inf (False): finite but huge cut values (|x| ~ 1e38) overflow inside
        the back half, and the NaN logits went out as the model's answer."""
        for o, spec in zip(outs, self.bundle.outputs):
            if o.dtype.kind == "f" and not np.isfinite(o).all():
                cut_max = max((float(np.abs(t).max()) for t in r.frame.tensors if t.dtype.kind == "f" and t.size),
                              default=0.0)
                self._fail(r.topic, r.resp_topic, r.corr, r.frame.request_id, "non_finite",
                           f"the back half gives NaN/Inf in {spec.name!r} on these cut tensors (|x| up to "
                           f"{cut_max:.3g}): not answered; the input is far outside the range the model was "
                           "trained on (scale it as the model expects)")
                return False
        return True

    def _back(self, requests: list[list[np.ndarray]]) -> list[np.ndarray]:
        """One onnxruntime call on the requests' tensors stacked along the batch axis."""
        feeds = [t[0] if len(requests) == 1 else np.concatenate(t) for t in zip(*requests)]
        return self.session.run(self.out_names, dict(zip(self.in_names, feeds)))

    def _reply(self, r: _Request, outs: list[np.ndarray], **meta: Any) -> None:
        """Encode and send one reply (``meta`` joins ``server_us`` and ``worker``); ``server_us`` counts
        decode + compute since its ``t0``."""
        request_id = r.frame.request_id
        try:
            server_us = int((time.perf_counter() - r.t0) * 1e6)
            reply = self.encode(wire.Frame(kind=wire.Kind.REPLY, request_id=request_id, seq=r.frame.seq,
                                           bundle_hash=self.bundle.hash16, tensors=outs,
                                           meta={"server_us": server_us, "worker": self.stats.worker, **meta}))
        except Exception as exc:  # a bug or an output the wire cannot carry: answer, keep serving
            log.exception("encoding the reply to request %d failed", request_id)
            self._fail(r.topic, r.resp_topic, r.corr, request_id, "internal",
                       f"server error: {type(exc).__name__}: {exc}")
            return
        if r.resp_topic is None:
            self.stats.count_error("no_response_topic", answered=False)
            log.warning("request %d has no Response Topic: computed but dropped", request_id)
            return
        if self._publish(r.resp_topic, reply, r.corr, request_id, SERVED):
            self.stats.served += 1

    def _publish(self, topic: str, payload: bytes, corr: bytes | None, request_id: int, bucket: str) -> bool:
        """Publish an answer counted in ``bucket`` (SERVED, or an ERROR frame's code) and have its PUBACK read; a
        failure (broker gone, queue full) is logged and counted, never raised."""
        try:
            self._watch(self.client.publish(topic, payload, correlation=corr), request_id, topic, bucket)
            return True
        except FrameError as exc:  # over the broker's Maximum Packet Size: not sent; the device learns why
            self.stats.count_error("too_large", answered=True)
            log.warning("the reply to request %d was not sent: %s", request_id, exc)
            why = wire.error_frame(request_id, self.bundle.hash16, "too_large",
                                   f"the server's reply was not sent: {exc}")
            if len(why) < len(payload):  # an error frame is a few hundred bytes: it fits where the reply did not
                self._publish(topic, why, corr, request_id, "too_large")
            return False
        except (ValueError, RuntimeError, TypeError, OSError, TransportError) as exc:
            self.stats.count_error("reply_failed", answered=False)
            log.warning("could not send the reply to request %d: %s", request_id, exc)
            return False

    def _log(self, kind: str, fmt: str, *args: Any) -> None:
        """A warning about one request, within the log budget of its kind (a flood wrote a line per request)."""
        write, held = self._log_budget.allow(kind)
        if held:
            log.warning("%d more request(s) %s in the last %g s, not logged one by one (counted in the stats)",
                        held, kind, self._log_budget.window_s)
        if write:
            log.warning(fmt, *args)

    def _fail(self, topic: str, resp_topic: str | None, corr: bytes | None, request_id: int, code: str,
              message: str) -> None:
        answered = resp_topic is not None
        self.stats.count_error(code, answered)
        self._log(code, "request %d on %.*s rejected (%s): %s%s", request_id, TOPIC_SHOWN, topic, code, message,
                  "" if answered else " [dropped]")
        if answered:
            payload = wire.error_frame(request_id, self.bundle.hash16, code, message)
            self._publish(resp_topic, payload, corr, request_id, code)


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
    max_batch: int = 1,
    batch_wait_ms: float = 0.0,
    max_sessions: int | None = None,
    session_ttl_s: float | None = None,
    max_waiting_bytes: int | None = None,
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
        max_batch: most samples one back-half call runs: the requests already waiting when one
            is taken (and those arriving within ``batch_wait_ms``) are batched across devices.
            1 = one call per request. A request of more samples than this runs alone.
        batch_wait_ms: how long to wait for more requests to fill a batch (0 = take only those
            already waiting: no added latency when idle).
        max_sessions, session_ttl_s: a split LLM bundle (``edgerun llm export``): the most sessions
            whose KV cache this worker keeps (least recently used out; default 32) and how long an
            idle one is kept (default 600 s). A model bundle has no sessions: giving either is a
            ConfigError, not an option silently ignored.
        max_waiting_bytes: most request bytes waiting for this worker; a request over it is refused at once
            with code "busy" (default: 256 MiB, or 8 frames of ``max_frame_bytes`` when that is more).

    Returns:
        The worker's ServerStats.

    Raises:
        BundleError: the bundle is missing or corrupted.
        TransportError: the broker cannot be reached at start.
        ConfigError: bad group / worker id / threads.
    """
    if not 1 <= threads <= 256:  # the native engine's range, for one meaning of --threads everywhere
        raise ConfigError(f"threads={threads} must be in 1..256 (the cores onnxruntime may use for the back half)")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= MAX_BATCH:
        raise ConfigError(f"max_batch={max_batch!r} must be an integer in 1..{MAX_BATCH} (samples per back-half call)")
    if not (isinstance(batch_wait_ms, (int, float)) and 0 <= batch_wait_ms <= MAX_BATCH_WAIT_MS):
        raise ConfigError(f"batch_wait_ms={batch_wait_ms!r} must be in 0..{MAX_BATCH_WAIT_MS:g} ms "
                          "(0 = batch only what is already waiting)")
    if max_waiting_bytes is not None and (isinstance(max_waiting_bytes, bool) or not isinstance(max_waiting_bytes, int)
                                          or max_waiting_bytes < 1):
        raise ConfigError(f"max_waiting_bytes={max_waiting_bytes!r} must be a whole number of bytes >= 1")
    from edgerun.llm import DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_TTL_S, check_session_options

    given = [f for f, v in (("max_sessions", max_sessions), ("session_ttl_s", session_ttl_s)) if v is not None]
    max_sessions = DEFAULT_MAX_SESSIONS if max_sessions is None else max_sessions
    session_ttl_s = DEFAULT_SESSION_TTL_S if session_ttl_s is None else session_ttl_s
    check_session_options(max_sessions, session_ttl_s)  # before the bundle (an LLM's back half loads for seconds)
    max_frame_bytes = wire.DEFAULT_MAX_FRAME_BYTES if max_frame_bytes is None else int(max_frame_bytes)
    b = _load(bundle)
    if isinstance(b, Bundle) and given:
        flags = " and ".join("--" + f.replace("_", "-") for f in given)
        raise ConfigError(f"{flags}: only a split LLM bundle (edgerun llm export) keeps sessions; {b.path} is a "
                          f"model bundle, whose requests are independent: drop {flags}")
    wid = transport.check_segment("worker id", worker_id or transport.default_id("server"))
    sub = transport.shared_request_filter(b.model_id, b.topic_id, group)
    pres = transport.presence_topic(b.model_id, b.topic_id, "server", wid)
    if isinstance(b, Bundle):
        w = _Worker(b, threads, max_frame_bytes, wid, max_batch)
    else:
        from edgerun.llm_server import LlmWorker

        w = LlmWorker(b, threads, max_frame_bytes, wid, max_sessions, session_ttl_s, max_batch)
    if max_waiting_bytes is not None:
        w.max_waiting_bytes = max_waiting_bytes
    # max_queued=0: paho counts replies awaiting the broker's ack against its cap, so a capped server
    # lost computed replies under a burst (8,982 of 1.1 M in a minute of flooding)
    # The client id gets a random suffix: two workers started with one --worker-id kicked each other off the
    # broker about every second (each kick firing an "offline" will that made devices replay).
    client = transport.MqttClient(broker_url, f"edgerun-{wid}-{secrets.token_hex(2)}", on_message=w.offer,
                                  max_queued=0, refusals=w.refusals,
                                  will=(pres, transport.presence_payload("server", wid, "offline")))
    w.client = client
    stop = stop or threading.Event()
    restore = _install_signals(stop) if handle_signals else None
    client.connect()
    try:
        client.subscribe(sub)
        for extra in w.extra_filters():
            client.subscribe(extra)
        client.announce(pres, transport.presence_payload("server", wid, "online", bundle=b.hash, group=group))
        log.info("serving %s as %s on %s (%s)%s", b, wid, client.url, sub,
                 f", batches of up to {max_batch} samples (wait {batch_wait_ms:g} ms)" if max_batch > 1 else "")
        if ready is not None:
            ready()
        _loop(w, stop, batch_wait_ms / 1e3)
        for topic_filter in (sub, *w.extra_filters()):  # the group's other workers take what comes next
            client.unsubscribe(topic_filter)
        w.drain()
    finally:
        client.close(final=(pres, transport.presence_payload("server", wid, "offline")))
        if restore is not None:
            restore()
        w.count_unacknowledged()  # and the refusals since the loop's last turn
        log.info("stopped: %s", json.dumps(w.stats.to_dict()))
    return w.stats


def _load(bundle: Any) -> Any:
    """A model bundle, or a split LLM bundle (its manifest's format says which); archives of either."""
    if not isinstance(bundle, (str, Path)):
        return bundle
    from edgerun import llm
    from edgerun.bundle import unpack_archive

    p, tmp = Path(bundle), None
    if p.is_file():
        p, tmp = unpack_archive(p)  # once, for either kind
    b = llm.LlmBundle.load(p) if llm.is_llm_bundle(p) else Bundle.load(p)
    b._tmp = tmp  # the unpacked directory lives as long as the bundle
    b.source = Path(bundle)  # errors name the archive the user gave, not its unpacked copy
    return b


def _loop(w: _Worker, stop: threading.Event, wait_s: float = 0.0) -> None:
    next_stats = time.monotonic() + _STATS_EVERY_S
    while not stop.is_set():
        try:
            msg = w.inbox.get(timeout=_POLL_S)
        except queue.Empty:
            msg = None
        if msg is not None:
            try:
                w.handle_from(msg, wait_s, stop)
            except Exception:  # handle_from() never raises; if a bug makes it, requests fail, not the server
                log.exception("unexpected error on a request; still serving")
        w.tick()
        w.count_refused()
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
