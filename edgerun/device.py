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
import math
import secrets
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np

from edgerun import crossing, transport, wire
from edgerun import exits as exits_mod
from edgerun.bundle import Bundle
from edgerun.device_checks import (check_deadline_ms, check_finite_cut, check_inputs, check_reply,
                                   error_from_reply, is_stopping, refusal_text, reply_wait_s, resent_note)
from edgerun.errors import ConfigError, EdgerunError, FrameError, TransportError, UnsupportedOpError
from edgerun.feeds import with_passthrough
from edgerun.result import Result, spent

log = logging.getLogger("edgerun.device")

_ENGINES = ("native", "ort")
RTT_EWMA_ALPHA = 0.2        # weight of the newest round trip in the running estimate
SUSPECT_BACKOFF_S = 1.0     # after a lost reply, answer locally at once for this long, then try again
LATE_IDS_KEPT = 1024        # requests past their deadline remembered, so their late replies are not "unknown"
HEDGE_LOSERS_KEPT = 1024    # copies of hedged requests that lost the race, so their replies drop quietly
HEDGE_BOTH_S = 2.0          # after a hedged copy won, send each request twice at once for this long
RESENDS_MAX = 2             # a request a stopping worker refused goes again at most this often (docs/TOPICS.md)
RECONNECT_EVERY_S = 1.0     # background reconnect period while the broker is down (bundles with exits)
RTT_STALE_S = 1.0           # a round-trip estimate older than this is re-measured (the request goes out as well)
_clock = time.monotonic     # for the device's timers (backoffs, the round trip's age); tests move it
SERVER_ERROR = "server error"  # reason of an exit's answer to a request the server answered with an error
_STALE = "stale:"           # _why_local's mark of a prediction to check with a request sent anyway


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
        budget: early-exit budget of a bundle with exits ("fast", "balanced", ... as the bundle
            lists; "off" = no confident exits; None = the bundle's default). With exits the
            device also answers from its deepest exit when the server is late or unreachable,
            and connects to the broker in the background (it starts while the broker is down).
        codec: None = the bundle's activation codec; "none" = send raw fp32 instead (the
            server accepts both), e.g. to measure what the codec saves.
        max_batch: largest batch one ``infer`` takes on a bundle with exits (their engines' arenas
            are sized for it); without exits larger batches run through the front in slices.
        hedge_ms: when no reply has come this many ms after a request was sent, send it once more
            (a new id; the broker's shared subscription hands it to the next server worker) and
            take whichever reply comes first. Guards a deadline against one frozen or overloaded
            worker in a group; costs a second back-half run for requests slower than this.
            None = never (default).

    Thread safety: ``infer`` may be called from several threads; front-half runs take turns.

    Raises:
        BundleError: the bundle is missing or corrupted.
        ConfigError: bad engine, threads, timeout, device id, or a budget for a bundle without exits.
        TransportError: the broker cannot be reached (bundles without exits only).
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
        budget: str | None = None,
        codec: str | None = None,
        max_batch: int = 8,
        hedge_ms: float | None = None,
    ) -> None:
        if engine not in _ENGINES:
            raise ConfigError(f"engine={engine!r}: use one of {_ENGINES}")
        if threads < 1:
            raise ConfigError(f"threads={threads} must be >= 1")
        check_deadline_ms(timeout_ms, "timeout_ms")
        if not 1 <= max_batch <= 4096:
            raise ConfigError(f"max_batch={max_batch} must be in 1..4096")
        if hedge_ms is not None and not (isinstance(hedge_ms, (int, float)) and 0 < hedge_ms < math.inf):
            raise ConfigError(f"hedge_ms={hedge_ms!r} must be a finite number of ms > 0 (None = never resend)")
        self.hedge_ms = None if hedge_ms is None else float(hedge_ms)
        self.bundle = b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.device_id = transport.check_segment(
            "device id", device_id or transport.default_id("device"))
        self.timeout_ms = float(timeout_ms)
        self.max_frame_bytes = wire.DEFAULT_MAX_FRAME_BYTES if max_frame_bytes is None else int(max_frame_bytes)
        self.exits: exits_mod.ExitController | None = None
        if exits_mod.has_exits(b.manifest):
            self.exits = exits_mod.ExitController(b, engine=engine, threads=threads, budget=budget,
                                                  max_batch=max_batch)
            self.engine = None
        else:
            if budget is not None:
                raise ConfigError(f"budget={budget!r} needs a bundle with early exits; {b} has none "
                                  "(re-export with `edgerun export ... --exits auto`)")
            self.engine = _make_front(b, engine, threads)
        self.rtt_ms: float | None = None  # EWMA of measured round trips (publish -> reply)
        self._rtt_at = 0.0  # _clock() when rtt_ms last learnt a round trip
        self._suspect_until = 0.0
        self._suspect_why = ""
        self._closing = threading.Event()
        self._encode = wire.best_encoder()
        if self._encode is wire.encode:
            log.warning("edgerun._core is missing: encoding frames in Python")
        self._decode = wire.best_decoder()
        codec_entry = b.manifest.get("codec", {"id": "none"})
        if codec is not None and codec != codec_entry.get("id", "none"):
            if codec != "none":
                raise ConfigError(f"codec={codec!r}: this bundle was calibrated for {codec_entry.get('id')!r}; "
                                  "use that or 'none' (raw fp32 on the wire)")
            codec_entry = {"id": "none"}
        self._packer = crossing.Packer(codec_entry)
        self._req_topic = transport.request_topic(b.model_id, b.topic_id, self.device_id)
        self._resp_topic = transport.response_topic(b.model_id, b.topic_id, self.device_id)
        self._presence = transport.presence_topic(b.model_id, b.topic_id, "device", self.device_id)
        self._pending: dict[int, Future[tuple[bytes, float, int]]] = {}  # id -> (reply, t_recv, id)
        self._late_ids: dict[int, float] = {}  # requests past their deadline -> send time (a reply may come)
        self._hedge_losers: dict[int, None] = {}  # second copies whose twin was answered first
        self._hedge_both_until = 0.0  # monotonic time until which requests go out twice at once
        self.hedged = 0  # requests sent a second time
        self.resent = 0  # copies sent because a worker answered "stopping"
        self._after_stopping: set[int] = set()  # ids of those copies while awaited: a PUBACK refusal says so
        self._lock = threading.Lock()
        self._refusals = transport.Refusals(self._broker_refused)
        self._ids = itertools.count(secrets.randbits(62) + 1)  # random start: ids stay unique across restarts
        self.dropped_replies = 0
        self._broker, self._engine_kind = broker, engine
        transport.parse_broker_url(broker)  # a malformed URL is a config error, broker up or not
        self._client = self._new_client()
        self._connect_error = ""
        self._reconnector: threading.Thread | None = None
        try:
            self._open(self._client)
        except TransportError as exc:
            if self.exits is None:
                raise
            # Exits answer locally meanwhile; keep trying in the background.
            self._connect_error = str(exc)
            log.warning("%s; answering from the device's exits and reconnecting in the background", exc)
            self._reconnector = threading.Thread(target=self._reconnect_loop, name="edgerun-reconnect", daemon=True)
            self._reconnector.start()

    # -- public ------------------------------------------------------------
    def infer(self, x: np.ndarray | dict[str, np.ndarray], *, deadline_ms: float | None = None) -> Result:
        """Run the front half here, the back half on a server, and return the model's outputs.

        Args:
            x: the input batch (shape of ``bundle.inputs[0]``, batch dim included), or a
                dict by input name for models with several inputs.
            deadline_ms: answer within this many ms (default: the device's timeout_ms).

        Returns:
            A Result with the outputs, per-stage timings, where it was answered and why.
            With exits: answered by the first confident exit; else by the server, unless the
            predicted round trip (EWMA of measured ones) does not fit the deadline, the broker
            or server is unreachable, or no reply comes in time: then by the deepest exit.

        Raises:
            ConfigError: ``x`` does not match the bundle's inputs.
            TransportError: no reply within the deadline (no server, broker or server down;
                bundles without exits only).
            FrameError / BundleError / InternalError: the server answered with an error, or with a reply
                that is not the model's answer (bundles without exits only: with exits the deepest exit
                answers, ``reason`` "server error: ...").
        """
        t_start = time.perf_counter()
        check_deadline_ms(deadline_ms)
        wait_ms = self.timeout_ms if deadline_ms is None else float(deadline_ms)
        feeds = check_inputs(x, self.bundle.inputs)
        step = None
        n = int(next(iter(feeds.values())).shape[0]) if isinstance(feeds, dict) else int(feeds.shape[0])
        if self.exits is not None and n > self.exits.max_batch:
            raise ConfigError(f"a batch of {n} is over this device's max_batch ({self.exits.max_batch}) for a bundle "
                              "with exits: split the batch, or open the Device with a larger max_batch")
        if self.exits is not None:
            step = self.exits.run(feeds)
            if step.exited is not None:
                return self._local(step, step.exited, step.reason, t_start)
            outs = step.cut
        else:
            outs = self._run_front(feeds)
        t_front = time.perf_counter()
        probe = ""  # a predicted miss whose prediction is old: answer now, but send the request to measure again
        if step is not None:
            why = self._why_local(wait_ms - (t_front - t_start) * 1e3)
            if why.startswith(_STALE):
                probe = why[len(_STALE):]
            elif why:
                return self._local(step, step.deepest, why, t_start)
        check_finite_cut(outs, self.bundle.cut)
        cut = self._packer.pack({s.name: outs[s.name] for s in self.bundle.cut})
        request_id = next(self._ids)
        frame = wire.Frame(kind=wire.Kind.REQUEST, request_id=request_id, seq=0,
                           bundle_hash=self.bundle.hash16, tensors=cut, meta={})
        payload = self._encode(frame)
        t_enc = time.perf_counter()
        if step is None and not self._client.connected:  # nothing would answer: say so now
            raise TransportError(f"{self._broker_gone()}; paho is reconnecting in the background, nothing was sent: "
                                 "retry, or export the bundle with --exits auto to answer on the device meanwhile")
        fut: Future[tuple[bytes, float, int]] = Future()
        sent = {request_id: t_enc}  # id -> send time: the request, its hedged copy, its copies after "stopping"
        resent = 0  # copies sent because a worker answered "stopping" (it did not run the request)
        with self._lock:
            self._pending[request_id] = fut
        expiry_s = math.ceil(wait_ms / 1000.0)  # stale requests die in the broker
        in_time = False  # set when infer() got its reply before giving up
        published = False  # then a TransportError is the PUBACK's refusal (or no subscriber)
        try:
            self._publish(request_id, payload, expiry_s)
            published = True
            if probe:  # not waited for: its reply comes late, and _settle files it so that it is learnt
                local = self._local(step, step.deepest, f"{probe} (sent anyway, to measure the round trip again)",
                                    t_start)
                local.bytes_sent = len(payload)
                return local
            now = time.perf_counter()
            until = now + reply_wait_s(t_start, wait_ms, now, step is not None)  # each wait below counts from then
            reply, t_recv, replied = self._await(frame, fut, sent, expiry_s, until)
            # A stopping worker (a rolling restart) did not run it: the copy goes to the group's next worker, or,
            # with none subscribed any more, ends at its PUBACK (docs/TOPICS.md, "A stopping server")
            while resent < RESENDS_MAX and time.perf_counter() < until and \
                    is_stopping(reply, self._decode, self.bundle.hash16, self.max_frame_bytes):
                fut = self._resend(frame, sent, expiry_s)
                resent += 1
                reply, t_recv, replied = fut.result(timeout=max(until - time.perf_counter(), 0.0))
        except FutureTimeout:
            msg = (f"no reply from a server for bundle {self.bundle.topic_id} ({self.bundle.model_id}) within "
                   f"{wait_ms:g} ms" + (" (sent twice)" if len(sent) - resent > 1 else "")
                   + resent_note(resent))
            if step is None:
                if self.rtt_ms is not None and self.rtt_ms > 0.5 * wait_ms:
                    raise TransportError(f"{msg}; round trips to the server have taken ~{self.rtt_ms:.1f} ms: "
                                         "give a longer deadline (--deadline-ms)") from None
                raise TransportError(f"{msg}: is `edgerun serve` running for this bundle on {self._client.url}? "
                                     "If it is, the deadline may be shorter than a round trip: give a longer "
                                     "one (--deadline-ms)") from None
            self._suspect(f"no reply to the last request within {wait_ms:g} ms")
            return spent(self._local(step, step.deepest, f"deadline: {msg}", t_start, t_front), sent, resent, payload)
        except FrameError as exc:  # over the broker's Maximum Packet Size: not sent, the link is fine
            msg = (f"request {request_id} not sent: {exc} (this request: {n} sample(s); a bundle exported with "
                   "--codec tsq, or a later cut, sends fewer bytes)")
            if step is None:
                raise FrameError(msg, exc.code) from None
            local = self._local(step, step.deepest, f"server unreachable: {msg}", t_start, t_front)
            return spent(local, sent, resent, payload if published else b"")
        except (TransportError, RuntimeError, ValueError) as exc:  # paho: not connected / queue full; a PUBACK
            if step is None:
                raise
            why = str(exc) if published else f"publish failed ({exc})"
            self._suspect(why)
            local = self._local(step, step.deepest, f"server unreachable: {why}", t_start, t_front)
            return spent(local, sent, resent, payload if published else b"")  # it went out: its bytes were spent
        else:
            in_time = True
        finally:
            self._settle(fut, sent, in_time)
        self._observe_rtt((t_recv - sent[replied]) * 1e3)
        try:
            result = self._finish(reply, replied, (t_start, t_front, t_enc, t_recv), n, resent)
        except EdgerunError as exc:  # the server's error frame, or a reply that is not the model's answer
            if step is None:
                raise
            # A device with exits has an answer of its own: a control loop got an exception instead (a back
            # half that fails on some inputs, a worker of another bundle version on the same topics).
            local = self._local(step, step.deepest, f"{SERVER_ERROR}: {exc}", t_start, t_front)
            return spent(local, sent, resent, payload, reply)
        if step is not None:
            result.front_compute_fraction = step.compute_fraction
        return spent(result, sent, resent, payload, reply)

    def _await(self, frame: wire.Frame, fut: Future, sent: dict[int, float], expiry_s: int,
               until: float) -> tuple[bytes, float, int]:
        """The first reply to the request in ``sent`` (hedged with ``hedge_ms``) by ``until``: (reply, when it
        came, the id it answered). Raises FutureTimeout, or the TransportError of a PUBACK refusal."""
        (request_id, t_enc), = sent.items()
        if self.hedge_ms is not None and _clock() < self._hedge_both_until:
            self._hedge(frame, fut, sent, expiry_s, "a hedge won lately: both copies at once")
        if self.hedge_ms is None or len(sent) > 1 or t_enc + self.hedge_ms / 1000.0 >= until:
            return fut.result(timeout=max(until - time.perf_counter(), 0.0))
        try:
            return fut.result(timeout=self.hedge_ms / 1000.0)
        except FutureTimeout:
            self._hedge(frame, fut, sent, expiry_s, f"no reply after {self.hedge_ms:g} ms")
        reply, t_recv, replied = fut.result(timeout=max(until - time.perf_counter(), 0.0))
        if replied != request_id:
            # The copy won: the original's worker may be frozen. A shared subscription hands messages out in
            # turn, so with one frozen worker of two every original of this device met it (each request then
            # took hedge_ms): send both copies at once for a while.
            self._hedge_both_until = _clock() + HEDGE_BOTH_S
        return reply, t_recv, replied

    def _settle(self, fut: Future, sent: dict[int, float], in_time: bool = True) -> None:
        """After infer: ids still pending either lost to their answered twin (their reply is dropped
        quietly) or got no reply in time (a late reply teaches the round trip).

        A reply that came after infer() gave up but before this ran resolved a future nobody reads:
        it counts as a late reply (dropped, its round trip learnt), like one that comes later.
        ``answered`` is read under the lock that ``_on_reply`` resolves the future under: a reply
        taken from ``_pending`` is then always seen here as answered."""
        self._refusals.forget(sent)
        with self._lock:
            self._after_stopping.difference_update(sent)
            answered = fut.done() and not fut.cancelled() and fut.exception() is None
            late = fut.result() if answered and not in_time else None
            if late is not None:
                self.dropped_replies += 1
            for rid, t_sent in sent.items():
                if self._pending.pop(rid, None) is None:
                    continue  # this id's reply came
                kept, cap = (self._hedge_losers, HEDGE_LOSERS_KEPT) if answered else (self._late_ids, LATE_IDS_KEPT)
                if len(kept) >= cap:  # a dead server never answers them: oldest out
                    kept.pop(next(iter(kept)))
                kept[rid] = None if answered else t_sent
        if late is not None:
            _, t_recv, rid = late
            self._late_reply(rid, t_recv, sent[rid])

    def _hedge(self, frame: wire.Frame, fut: Future, sent: dict[int, float], expiry_s: int, why: str) -> None:
        """Send ``frame`` again under a new id that resolves the same future."""
        rid = next(self._ids)
        frame.request_id = rid
        payload = self._encode(frame)
        with self._lock:
            self._pending[rid] = fut
            self.hedged += 1
        sent[rid] = time.perf_counter()
        log.info("%s: request sent again as %d", why, rid)
        self._publish(rid, payload, expiry_s)

    def _resend(self, frame: wire.Frame, sent: dict[int, float], expiry_s: int) -> Future:
        """A worker answered "stopping" (it did not run the request): send ``frame`` again under a new id, which
        the shared subscription hands to the group's next worker. Returns the future its reply resolves; ids
        still awaited (a hedged copy) resolve it too."""
        fut: Future[tuple[bytes, float, int]] = Future()
        rid = next(self._ids)
        frame.request_id = rid
        payload = self._encode(frame)
        with self._lock:
            for old in sent:
                if old in self._pending:
                    self._pending[old] = fut
            self._pending[rid] = fut
            self._after_stopping.add(rid)
            self.resent += 1
        sent[rid] = time.perf_counter()
        log.info("a worker answered `stopping` (it did not run the request): request sent again as %d", rid)
        self._publish(rid, payload, expiry_s)
        return fut

    def _publish(self, request_id: int, payload: bytes, expiry_s: int) -> None:
        info = self._client.publish(self._req_topic, payload, response_topic=self._resp_topic,
                                    correlation=transport.correlation_bytes(request_id), expiry_s=expiry_s)
        self._refusals.watch(info.mid, request_id)

    def _broker_refused(self, request_id: int, why: str) -> None:
        """The broker refused (or had no subscriber for) request ``request_id``: its infer() ends now."""
        with self._lock:
            text = refusal_text(why, request_id, self._client.url, self._req_topic, self.bundle,
                                stopped=request_id in self._after_stopping)
            fut = self._pending.get(request_id)
            if fut is not None and not fut.done():
                fut.set_exception(TransportError(text))

    def _why_local(self, left_ms: float) -> str:
        """Why the deepest exit must answer now instead of the server ("" = ask the server; a reason marked
        ``_STALE``: answer now, and send the request as well, to learn the round trip again)."""
        if not self._client.connected:
            return f"server unreachable: {self._broker_gone()} (reconnecting in the background)"
        now = _clock()
        if now < self._suspect_until:
            return f"server unreachable: {self._suspect_why}; retrying in {self._suspect_until - now:.1f} s"
        if self.rtt_ms is not None and self.rtt_ms > left_ms:
            why = f"deadline: predicted round trip {self.rtt_ms:.1f} ms > {max(left_ms, 0.0):.1f} ms left"
            # A prediction learnt longer ago than RTT_STALE_S is checked: requests it keeps local teach nothing,
            # so one stall (a server frozen for seconds, whose late replies then came) kept every later request
            # local for good while the server answered in 1 ms again. The exit still answers at once, and the
            # request goes out too; its late reply measures the round trip afresh.
            return why if now - self._rtt_at < RTT_STALE_S else _STALE + why
        return ""

    def _broker_gone(self) -> str:
        if self._connect_error:
            return self._connect_error
        # paho reconnects in silence: a TLS broker back with a certificate we refuse looked like one still down
        why = self._client.reconnect_error
        return f"lost the broker at {self._client.url}" + (f"; reconnecting fails: {why}" if why else "")

    def _suspect(self, why: str) -> None:
        self._suspect_why, self._suspect_until = why, _clock() + SUSPECT_BACKOFF_S

    def _observe_rtt(self, ms: float) -> None:
        now = _clock()
        self._suspect_until = 0.0
        fresh = self.rtt_ms is not None and now - self._rtt_at < RTT_STALE_S  # else the old estimate is history
        self.rtt_ms = (1 - RTT_EWMA_ALPHA) * self.rtt_ms + RTT_EWMA_ALPHA * ms if fresh else ms
        self._rtt_at = now

    def _local(self, step: exits_mod.Step, i: int, reason: str, t_start: float,
               t_front: float | None = None) -> Result:
        """An exit's answer; ``t_front``: when the front half ended, if the device then waited for a
        reply (the wait is ``waited``, not device time: it was counted as compute, 50 ms for 0.05)."""
        name = self.bundle.outputs[0].name
        now = time.perf_counter()
        total = (now - t_start) * 1e3
        timings = {"device": total, "total": total}
        if t_front is not None:
            timings = {"device": (t_front - t_start) * 1e3, "waited": (now - t_front) * 1e3, "total": total}
        return Result(output={name: step.heads[i]}, answered_by=f"exit:{i}", reason=reason, request_id=0,
                      timings_ms=timings, front_compute_fraction=step.compute_fraction)

    def _new_client(self) -> transport.MqttClient:
        return transport.MqttClient(
            self._broker, transport.client_id(self.device_id), on_message=self._on_reply,
            will=(self._presence, transport.presence_payload("device", self.device_id, "offline")),
            refusals=self._refusals)

    def _open(self, client: transport.MqttClient) -> None:
        """Connect, subscribe to the replies, announce presence (TransportError on failure)."""
        client.connect()
        try:
            client.subscribe(self._resp_topic)
            client.announce(self._presence, transport.presence_payload(
                "device", self.device_id, "online", bundle=self.bundle.hash, engine=self._engine_kind))
        except Exception:
            client.close()
            raise

    def _reconnect_loop(self) -> None:
        """Background: connect once the broker is up (paho reconnects by itself after that)."""
        while not self._closing.wait(RECONNECT_EVERY_S):
            try:
                client = self._new_client()
                self._open(client)
            except (TransportError, ConfigError) as exc:  # ConfigError: the URL's CA or key file went bad meanwhile
                self._connect_error = str(exc)  # the device's answers say why; the loop keeps trying
                continue
            with self._lock:  # close() reads self._client under it: the client is either handed over or ended here
                closing = self._closing.is_set()
                if not closing:
                    self._client, self._connect_error = client, ""
            if closing:  # close() did not wait for this connect: end it, clearing the presence it announced
                client.close(final=(self._presence, b""))
                return
            log.info("connected to the broker at %s", client.url)
            return

    def close(self) -> None:
        """Publish presence "offline", disconnect; pending requests fail with TransportError."""
        self._closing.set()
        # No wait for a background connect in progress: against a broker that accepts TCP and never answers
        # (hung, or a black-holed network) it takes up to 10 s, and Ctrl-C / SIGTERM of a robot's loop waited
        # that long. The reconnector ends its own client if close() ran first (under self._lock).
        with self._lock:
            client = self._client
        # A clean close clears the retained presence (an empty retained message) instead of leaving
        # "offline": each Device has a new id, and 3,000 open/close cycles left 3,000 retained
        # messages on the broker for good (a watcher at QoS 1 then got only ~1,000 of them).
        # A crash still leaves the last will's "offline".
        client.close(final=(self._presence, b""))
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
    def _run_front(self, feeds: Any) -> dict[str, np.ndarray]:
        """Run the front half; batches above the native engine's max_batch go through in slices. Model
        inputs that pass through the cut (``Bundle.passthrough``) join the front's outputs as they came."""
        limit = getattr(self.engine, "max_batch", None)
        first = next(iter(feeds.values())) if isinstance(feeds, dict) else feeds
        n = int(first.shape[0])
        if limit is None or n <= limit:
            return with_passthrough(self.engine.run(feeds), feeds, self.bundle.passthrough)
        parts = []
        for lo in range(0, n, limit):
            sl = {k: v[lo : lo + limit] for k, v in feeds.items()} if isinstance(feeds, dict) else feeds[lo : lo + limit]
            parts.append(self.engine.run(sl))
        return with_passthrough({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, feeds,
                                self.bundle.passthrough)

    def _finish(self, reply: bytes, request_id: int, marks: tuple[float, float, float, float], batch: int,
                resent: int = 0) -> Result:
        t_start, t_front, t_enc, t_recv = marks
        frame = self._decode(reply, max_bytes=self.max_frame_bytes, expect_hash=self.bundle.hash16)
        if frame.kind == wire.Kind.ERROR:
            meta = frame.meta or {}
            code, message = str(meta.get("code", "unknown")), str(meta.get("message", ""))
            if code == "stopping" and resent:  # RESENDS_MAX reached, or the deadline left no time for another
                message += f" (this device sent it {resent + 1} times: each copy met a stopping worker)"
            raise error_from_reply(code, message, self.bundle.topic_id)
        if frame.kind != wire.Kind.REPLY or frame.request_id != request_id:
            raise FrameError(f"reply to request {request_id} is a {frame.kind!r} for request {frame.request_id}",
                             "bad_reply")
        names = [s.name for s in self.bundle.outputs]
        if len(frame.tensors) != len(names):
            raise FrameError(f"reply carries {len(frame.tensors)} tensors, the model has {len(names)} outputs",
                             "bad_reply")
        meta = frame.meta if isinstance(frame.meta, dict) else {}
        check_reply(frame.tensors, self.bundle.outputs, batch, meta)
        t_dec = time.perf_counter()
        server_ms = float(meta.get("server_us", 0)) / 1000.0
        timings = {
            "device": (t_front - t_start) * 1e3,
            "encode": (t_enc - t_front) * 1e3,
            "network": max((t_recv - t_enc) * 1e3 - server_ms, 0.0),
            "server": server_ms,
            # from the reply's arrival (paho's thread) on: the hand-over to this thread and the decode. Counted
            # from the decode's own start, the hand-over (up to 9 ms on a busy 2-core box) was in no stage, and the
            # stages did not add up to "total"
            "decode": (t_dec - t_recv) * 1e3,
            "total": (t_dec - t_start) * 1e3,
        }
        return Result(output=dict(zip(names, frame.tensors)), answered_by="server",
                      reason="server replied" + resent_note(resent),
                      request_id=request_id, timings_ms=timings, worker=str(meta.get("worker", "")))

    def _late_reply(self, request_id: int, t_recv: float, t_sent: float) -> None:
        """A reply after its deadline (counted as dropped by the caller). The server is up, only
        slower than that deadline: learn its round trip (the deadline check then predicts the next
        miss) instead of treating the miss as an outage, which answered every request locally for a
        second after one too-short deadline."""
        self._observe_rtt((t_recv - t_sent) * 1e3)
        log.info("dropped the reply to request %s: it came after its deadline", request_id)

    def _on_reply(self, msg: Any) -> None:
        """paho thread: hand the reply to the waiting infer(); unknown or repeated ids are dropped."""
        t_recv = time.perf_counter()
        props = getattr(msg, "properties", None)
        request_id = transport.correlation_id(getattr(props, "CorrelationData", None))
        with self._lock:
            fut = self._pending.pop(request_id, None) if request_id is not None else None
            if fut is None and request_id in self._hedge_losers:  # its twin was answered first
                del self._hedge_losers[request_id]
                return
            sent = self._late_ids.pop(request_id, None) if fut is None else None
            if fut is None:
                self.dropped_replies += 1
            elif not fut.done():  # under the lock: _settle sees a popped id's future as answered
                fut.set_result((bytes(msg.payload), t_recv, request_id))
        if sent is not None:
            self._late_reply(request_id, t_recv, sent)
            return
        if fut is None:
            log.warning("dropped a reply for unknown or already answered request %s", request_id)


def _make_front(b: Bundle, engine: str, threads: int) -> Any:
    from edgerun.engine import check_io, make_engine

    if engine == "native":
        if not b.native_ok:
            raise UnsupportedOpError(f"the native engine cannot run the front half of {b} ({b.native_reason}): "
                            "use engine='ort' (--engine ort)")
        path = b.file("front.erg")
        eng = make_engine("native", erg_path=path, threads=threads)
    else:
        path = b.file("front.onnx")
        eng = make_engine("ort", onnx_path=path, threads=threads)
    passed = b.passthrough
    check_io(path, eng.input_names, eng.output_names, [s.name for s in b.inputs],
             [s.name for s in b.cut if s.name not in passed], some_inputs=True)
    return eng
