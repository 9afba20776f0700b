"""The device side of a split LLM: the front half, its KV cache, and a session pinned to one worker.

Each step runs the front half on the new positions (the prompt, then one token at a time), sends
their hidden states to the server and takes the next token from the reply's top-k. The device
keeps every hidden state it sent (``hidden`` floats per position) so that it can **replay**: when
the pinned worker goes offline (its presence, i.e. its last will when it dies), does not answer
within ``step_timeout_s``, or answers ``session_lost`` / ``session_gap``, the whole session so far
is sent from position 0 on the shared topic and whichever worker takes it rebuilds the cache and
answers the pending step. Each step's token is taken from exactly one reply: replies to requests
the device has given up on are counted (``stale_replies``) and dropped, so no answer is lost and
none is given twice. The broker drops a message no one subscribes to, so a request for the shared
topic waits (up to ``step_timeout_s``) until some worker of this bundle is online: a replay after
the last worker died goes to its replacement once that one has loaded, not into the void.

With ``local_fallback`` the device **answers alone** when no server can: the broker is down (also
when the device starts; it reconnects in the background), no worker is online, or none answered a
step after the replays. It then loads the back half here (once; the bundle holds it; at the start
with ``preload_back``), rebuilds its cache from the hidden states it kept, and finishes the
generation itself: the same tokens, at on-device cost and memory. Those steps say ``worker ==
"local"``; the next generation tries the servers again. "No worker is online" is known at once
when the device has been connected for ``PRESENCE_GRACE_S`` (the retained presences have come):
the step after the last worker's death is answered here without a further wait.

Example:
    >>> with LlmDevice("bundles/llm", "mqtt://127.0.0.1:1883") as dev:      # doctest: +SKIP
    ...     print(dev.generate("What is the capital of France?").text)
    The capital of France is Paris.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgerun import crossing, llm, transport, wire
from edgerun.device_checks import error_from_reply, refusal_hint
from edgerun.errors import ConfigError, FrameError, TransportError

log = logging.getLogger("edgerun.device")

REPLAY_CODES = ("session_lost", "session_gap")
LOCAL = "local"             # Step.worker of a step the device answered itself (local_fallback)
PRESENCE_GRACE_S = 1.0      # local_fallback: after a (re)connect, how long the retained presences may take to come
RECONNECT_EVERY_S = 1.0     # local_fallback: background reconnect period while the broker is down


@dataclass(frozen=True)
class _Refusal:
    """In the inbox beside the broker's messages: the broker refused request ``request_id`` in its PUBACK."""
    request_id: int
    why: str


@dataclass
class Step:
    """One round trip: the positions sent, the token chosen, where the time went."""

    position: int       # first position this step's answer covers (the replayed steps: 0)
    positions: int      # positions sent (the prompt, one token, or the whole session on a replay)
    token: int
    front_ms: float
    rtt_ms: float       # request sent -> reply received (replays included)
    server_us: int
    worker: str         # the worker that answered, or "local" (the device itself, local_fallback)
    replays: int        # times this step was replayed before it was answered
    why: str = ""       # why it was replayed (the last time), or why the device answered it itself
    up_bytes: int = 0   # frames sent for this step (its replays included)
    shrinks: int = 0    # times a server refused a frame as too large and the session went again in smaller ones


@dataclass
class Generation:
    """What one ``generate`` call produced and what it cost."""

    session: str
    prompt_tokens: int
    tokens: list[int]
    text: str
    steps: list[Step] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    stale_replies: int = 0
    wall_s: float = 0.0

    @property
    def replays(self) -> int:
        return sum(s.replays for s in self.steps)

    @property
    def workers(self) -> list[str]:
        return list(dict.fromkeys(s.worker for s in self.steps))

    @property
    def local_steps(self) -> int:
        """Steps the device answered itself (``local_fallback``)."""
        return sum(s.worker == LOCAL for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(replays=self.replays, workers=self.workers, local_steps=self.local_steps)
        return d


class LlmDevice:
    """Generates text with the front half here and the back half on the servers of ``broker_url``.

    Args:
        bundle: an LlmBundle or its path.
        broker_url: ``mqtt://host:port``.
        device_id: topic segment naming this device (default ``device-<host>-<pid>-<hex>``).
        threads: onnxruntime threads for the front half.
        topk: next-token candidates each reply carries (sampling with ``temperature`` draws from them).
        step_timeout_s: no reply within this: the session is replayed on the shared topic. Also the
            longest wait for some worker to be online before a request on the shared topic.
        max_replays: replays of one step before it fails with TransportError (or, with
            ``local_fallback``, before the device answers it itself).
        frame_positions: most positions one request carries (a long prompt, or a replay, goes in
            several; 1024 hidden states of SmolLM2 are 2.4 MB raw, under `serve`'s 16 MiB limit).
        local_fallback: when no server can answer, run the back half here and finish the generation
            (see the module's docstring); the device then needs the whole model's memory.
        preload_back: with ``local_fallback``, load the back half now rather than at the first step
            the device answers itself: the whole model's memory from the start, and that step costs
            only the rebuild of the session's cache (for a deadline).

    Raises:
        BundleError: not an LLM bundle, or damaged.
        TransportError: the broker cannot be reached (without ``local_fallback``).
    """

    def __init__(self, bundle: llm.LlmBundle | str | Path, broker_url: str, *, device_id: str | None = None,
                 threads: int = 1, topk: int = 8, step_timeout_s: float = 10.0, max_replays: int = 3,
                 frame_positions: int = 1024, local_fallback: bool = False, preload_back: bool = False) -> None:
        if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= llm.MAX_TOPK:
            raise ConfigError(f"topk={topk!r} must be a whole number in 1..{llm.MAX_TOPK}")
        if not (isinstance(step_timeout_s, (int, float)) and 0 < step_timeout_s <= 3600):
            raise ConfigError(f"step_timeout_s={step_timeout_s!r} must be in (0, 3600] seconds")
        if isinstance(max_replays, bool) or not isinstance(max_replays, int) or not 0 <= max_replays <= 100:
            raise ConfigError(f"max_replays={max_replays!r} must be a whole number in 0..100")
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 256:
            raise ConfigError(f"threads={threads!r} must be a whole number in 1..256 (onnxruntime threads for the "
                              "front half)")
        if preload_back and not local_fallback:
            raise ConfigError("preload_back loads the back half for the local fallback: give local_fallback too "
                              "(--local-fallback)")
        if isinstance(frame_positions, bool) or not isinstance(frame_positions, int) or frame_positions < 1:
            raise ConfigError(f"frame_positions={frame_positions!r} must be a whole number >= 1")
        self.frame_positions = frame_positions
        self.bundle = bundle if isinstance(bundle, llm.LlmBundle) else llm.LlmBundle.load(bundle)
        b = self.bundle
        self.device_id = transport.check_segment("device id", device_id or transport.default_id("device"))
        self.topk, self.step_timeout_s, self.max_replays = topk, float(step_timeout_s), max_replays
        self.threads, self.local_fallback = threads, bool(local_fallback)
        if local_fallback:  # a device's pack without the back half: say so now, not at the outage
            b.file(llm.BACK)
        # loaded on the first step the device answers itself, or now with preload_back
        self._back: llm.Half | None = llm.Half(self.bundle, "back", threads) if preload_back else None
        self._back_cache: llm.Cache | None = None
        self.front = llm.Half(b, "front", threads)
        self._packer = crossing.Packer(b.codec)  # the bundle's activation codec (tsq: token-wise rows)
        self.tokenizer = llm.Tokenizer(b)
        self._shared = transport.request_topic(b.model_id, b.topic_id, self.device_id)
        self._resp = transport.response_topic(b.model_id, b.topic_id, self.device_id)
        self._presence = transport.presence_topic(b.model_id, b.topic_id, "device", self.device_id)
        self._servers = transport.presence_filter(b.model_id, b.topic_id, "server")
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._refusals = transport.Refusals(self._refused)
        self._ids = itertools.count(secrets.randbits(48))
        self._decode, self._encode = wire.best_decoder(), wire.best_encoder()
        self._offline: set[str] = set()
        self._online: set[str] = set()  # workers of this bundle whose presence says online
        self._connected_at = time.monotonic()  # the last (re)connect: the retained presences follow it
        self._sample: tuple[float, np.random.Generator] = (0.0, np.random.default_rng())
        self._last_frame = 0  # positions in the last frame sent
        # Called with the Generation before each step is sent (len(g.steps) steps done): a place for
        # monitoring, and for the tests, the benchmark and the demo to kill a worker mid-answer.
        self.before_step: Callable[[Generation], None] | None = None
        self._broker_url = broker_url
        self._closing = threading.Event()
        self._reconnector: threading.Thread | None = None
        self._client = self._new_client()
        try:
            self._open(self._client)
        except TransportError as exc:
            if not self.local_fallback or self._client.refused:  # wrong credentials are not an outage
                raise
            log.warning("%s; answering on the device and reconnecting in the background", exc)
            self._reconnector = threading.Thread(target=self._reconnect_loop, name="edgerun-llm-reconnect",
                                                 daemon=True)
            self._reconnector.start()

    def _new_client(self) -> transport.MqttClient:
        return transport.MqttClient(
            self._broker_url, transport.client_id(self.device_id), on_message=self._inbox.put,
            will=(self._presence, transport.presence_payload("device", self.device_id, "offline")),
            on_connect=self._on_connect, refusals=self._refusals)

    def _refused(self, request_id: int, why: str) -> None:  # network thread: _wait reads it
        self._inbox.put(_Refusal(request_id, why))

    def _on_connect(self) -> None:
        """(Re)connected: the retained presences come again, so a worker gone meanwhile drops out."""
        self._online.clear()
        self._connected_at = time.monotonic()

    def _open(self, client: transport.MqttClient) -> None:
        """Connect, subscribe to the replies and the workers' presence, announce ours."""
        client.connect()
        try:
            client.subscribe(self._resp)
            client.subscribe(self._servers)
            self._connected_at = time.monotonic()  # the retained presences come after the subscription
            client.announce(self._presence, transport.presence_payload(
                "device", self.device_id, "online", bundle=self.bundle.hash))
        except Exception:
            client.close()
            raise

    def _reconnect_loop(self) -> None:
        """Background (local_fallback, broker down at the start): connect once the broker is up."""
        while not self._closing.wait(RECONNECT_EVERY_S):
            client = self._new_client()
            try:
                self._open(client)
            except TransportError:
                if client.refused:
                    log.error("the broker at %s refused this device (%s): answering on the device only; check the "
                              "user and password in the broker URL", client.url, client.refused)
                    return
                continue
            if self._closing.is_set():
                client.close(final=(self._presence, b""))
                return
            self._client = client
            log.info("connected to the broker at %s", client.url)
            return

    def close(self) -> None:
        """Disconnect; a clean close clears the retained presence (as ``Device.close`` does)."""
        self._closing.set()
        if self._reconnector is not None:
            self._reconnector.join(timeout=10)
        self._client.close(final=(self._presence, b""))

    def __enter__(self) -> LlmDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until a server worker answers (one that is still loading its back half does not):
        one-token generations, each given at most the time left (no replays), 0.2 s apart. Each try
        may wait ``step_timeout_s`` for a worker's presence and as long for its answer, so a try gets
        half the time left.

        Raises:
            TransportError: the broker is gone (at once), or no worker answered within ``timeout_s``.
        """
        until = time.monotonic() + timeout_s
        saved = (self.step_timeout_s, self.max_replays, self.local_fallback)
        try:
            while True:
                self.step_timeout_s = max(0.05, min(saved[0], (until - time.monotonic()) / 2))
                self.max_replays, self.local_fallback = 0, False  # only a server's answer counts
                try:
                    self.generate(ids=[self.bundle.spec.eos], max_new_tokens=1)
                    return
                except TransportError:
                    reconnecting = self._reconnector is not None and self._reconnector.is_alive()
                    if (not self._client.connected and not reconnecting) or time.monotonic() >= until:
                        raise
                time.sleep(0.2)
        finally:
            self.step_timeout_s, self.max_replays, self.local_fallback = saved

    # -- generation ----------------------------------------------------------
    def generate(self, prompt: str | None = None, *, ids: list[int] | None = None, max_new_tokens: int = 64,
                 temperature: float = 0.0, seed: int | None = None, stop_at_eos: bool = True,
                 stop: str | None = None) -> Generation:
        """Answer ``prompt`` (one user turn in the model's chat template) or continue raw token ``ids``;
        stop at the end-of-sequence token, after ``max_new_tokens``, or once the text holds ``stop``.

        Raises:
            ConfigError: no prompt, an empty one, or one past the bundle's context.
            TransportError: no worker answered a step after ``max_replays`` replays (without
                ``local_fallback``), or the broker is gone.
            FrameError / BundleError / InternalError: the server refused a request.
        """
        if (prompt is None) == (ids is None):
            raise ConfigError("give a prompt or token ids (one of them)")
        check_generation(prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        ids = self.tokenizer.chat(prompt) if prompt is not None else [int(i) for i in ids]
        spec = self.bundle.spec
        if not ids:
            raise ConfigError("no token ids given")
        check_fits(len(ids), max_new_tokens, spec)
        if any(not 0 <= i < spec.vocab for i in ids):
            raise ConfigError(f"token ids must be in 0..{spec.vocab - 1}")
        self._sample = (float(temperature), np.random.default_rng(seed))
        g = Generation(session=secrets.token_hex(16), prompt_tokens=len(ids), tokens=[], text="")
        cache, history, pinned, pos, local = self.front.new_cache(), [], None, 0, False
        x = np.array([ids], np.int64)
        t0 = time.perf_counter()
        for _ in range(max_new_tokens):
            t = time.perf_counter()
            h = self.front.step(x, cache)
            front_ms = (time.perf_counter() - t) * 1e3
            if not np.isfinite(h).all():
                raise FrameError("the front half produced NaN or Inf hidden states; not sent", "bad_tensors")
            history.append(h)
            if self.before_step is not None:
                self.before_step(g)
            if local:
                step = self._answer_here(pos, h, front_ms)
            else:
                t_ask = time.perf_counter()
                try:
                    step = self._ask(g, pos, h, history, pinned, front_ms)
                except TransportError as exc:
                    if not self.local_fallback:
                        raise
                    log.warning("answering session %s on the device from position %d: %s", g.session, pos, exc)
                    step = self._answer_here(pos, np.concatenate(history, axis=1), front_ms, rebuild=True,
                                             why=str(exc), t=t_ask)
                    step.replays, step.up_bytes = getattr(exc, "replays", 0), getattr(exc, "up_bytes", 0)
                    local = True
            pinned = step.worker
            pos += h.shape[1]
            g.steps.append(step)
            g.tokens.append(step.token)
            if stop_at_eos and step.token == spec.eos:
                break
            if stop and stop in self.tokenizer.decode(g.tokens):
                break
            x = np.array([[step.token]], np.int64)
        g.wall_s = time.perf_counter() - t0
        g.text = self.tokenizer.decode(g.tokens)
        self._back_cache = None  # a local generation's cache is rebuilt by the next one anyway
        return g

    def _answer_here(self, pos: int, h: np.ndarray, front_ms: float, *, rebuild: bool = False, why: str = "",
                     t: float | None = None) -> Step:
        """The back half on this device (loaded the first time; it stays): with ``rebuild`` (the
        generation's first such step) a new cache from the whole session's hidden states ``h``, else one
        more step on that cache. Its ``rtt_ms`` counts from ``t`` (from when the device tried the servers)."""
        t = time.perf_counter() if t is None else t
        if self._back is None:
            self._back = llm.Half(self.bundle, "back", self.threads)
        if rebuild or self._back_cache is None:
            self._back_cache = self._back.new_cache()
        logits = self._back.step(np.ascontiguousarray(h), self._back_cache)
        if not np.isfinite(logits).all():
            raise FrameError("the back half gives NaN / Inf logits on this device's hidden states", "bad_tensors")
        ids, vals = llm.top_k(logits, self.topk)
        return Step(position=pos, positions=int(h.shape[1]), token=self._choose(ids, vals), front_ms=front_ms,
                    rtt_ms=(time.perf_counter() - t) * 1e3, server_us=0, worker=LOCAL, replays=0, why=why)

    def _ask(self, g: Generation, pos: int, h: np.ndarray, history: list[np.ndarray], pinned: str | None,
             front_ms: float) -> Step:
        """Send positions ``pos``.. and wait for the next token, replaying the session when needed."""
        replays, shrunk, why, seq, hidden = 0, 0, "", pos, h
        t_sent, up = time.perf_counter(), [0]
        while True:
            try:
                got = self._send(g, seq, hidden, pinned, up)
            except TransportError as exc:  # what this step cost so far, for a step answered here instead
                exc.replays, exc.up_bytes = replays, up[0]  # type: ignore[attr-defined]
                raise
            if isinstance(got, wire.Frame):
                ids, logits = got.tensors
                return Step(position=pos, positions=int(hidden.shape[1]), token=self._choose(ids, logits),
                            front_ms=front_ms, rtt_ms=(time.perf_counter() - t_sent) * 1e3,
                            server_us=int(got.meta.get("server_us", 0)), worker=str(got.meta.get("worker", "")),
                            replays=replays, why=why, up_bytes=up[0], shrinks=shrunk)
            why = got
            replays += 1
            if why.startswith("too_large") and self._last_frame > 1:
                # the server takes smaller frames than the one it refused: halve that and send the session again
                self.frame_positions = max(1, min(self.frame_positions, self._last_frame) // 2)
                replays -= 1  # not a lost worker: does not count against max_replays
                shrunk += 1
                if shrunk > 32:
                    raise TransportError("the server refused every frame size as too large")
            elif replays > self.max_replays:
                exc = TransportError(f"no server worker answered position {pos} of session {g.session} after "
                                     f"{self.max_replays} replay(s) (last: {why}); start `edgerun serve` workers for "
                                     f"this bundle on {self._client.url}")
                exc.replays, exc.up_bytes = self.max_replays, up[0]  # type: ignore[attr-defined]
                raise exc
            seq, hidden, pinned = 0, np.concatenate(history, axis=1), None

    def _send(self, g: Generation, seq: int, hidden: np.ndarray, pinned: str | None, up: list[int]) -> wire.Frame | str:
        """Positions ``seq``.. in frames of at most ``frame_positions`` (a long prompt or a replay would
        pass the server's frame limit in one), each to the worker that answered the one before; the
        reply to the last frame, or why the session must be replayed."""
        b = self.bundle
        got: wire.Frame | str = "nothing sent"
        for start in range(0, hidden.shape[1], self.frame_positions):
            part = np.ascontiguousarray(hidden[:, start:start + self.frame_positions])
            self._last_frame = int(part.shape[1])
            if pinned is None:
                self._await_worker(g)
            topic = self._shared if pinned is None else \
                transport.pinned_request_topic(b.model_id, b.topic_id, pinned, self.device_id)
            rid = next(self._ids) & ((1 << 64) - 1)
            frame = self._encode(wire.Frame(kind=wire.Kind.REQUEST, request_id=rid, seq=seq + start,
                                            bundle_hash=b.hash16, tensors=self._packer.pack({"hidden": part}),
                                            meta={"session": g.session, "topk": self.topk}))
            if not self._client.connected:  # paho would queue it and send the backlog on reconnect
                raise TransportError(f"the MQTT broker at {self._client.url} is unreachable; nothing was sent "
                                     f"(session {g.session}, position {seq + start}): check the broker and retry")
            try:
                info = self._client.publish(topic, frame, response_topic=self._resp,
                                            correlation=transport.correlation_bytes(rid))
            except FrameError as exc:  # over the broker's Maximum Packet Size: smaller frames, as for a server's limit
                if exc.code != "too_large" or part.shape[1] <= 1:
                    raise
                return f"too_large: {exc}"
            self._refusals.watch(info.mid, rid)
            g.bytes_up += len(frame)
            up[0] += len(frame)
            try:
                got = self._wait(g, rid, pinned)
            finally:
                self._refusals.forget({rid})
            if not isinstance(got, wire.Frame):
                return got
            pinned = str(got.meta.get("worker", ""))
        return got

    def _wait(self, g: Generation, rid: int, pinned: str | None) -> wire.Frame | str:
        """The reply to ``rid``, or why the session must be replayed."""
        until = time.monotonic() + self.step_timeout_s
        while True:
            try:  # what has arrived first: a reply already here beats a presence change
                msg = self._inbox.get_nowait()
            except queue.Empty:
                if pinned is not None and pinned in self._offline:
                    return f"worker {pinned} went offline"
                if not self._client.connected:
                    raise TransportError(f"lost the MQTT broker at {self._client.url} while waiting for the server "
                                         f"(session {g.session}); nothing more was sent: check the broker and retry")
                left = until - time.monotonic()
                if left <= 0:
                    return f"no reply within {self.step_timeout_s:g} s"
                try:
                    msg = self._inbox.get(timeout=min(left, 0.25))  # wakes to see a lost broker
                except queue.Empty:
                    continue
            if isinstance(msg, _Refusal):
                if msg.request_id != rid:
                    continue
                if msg.why == transport.NO_SUBSCRIBER:  # as no reply: replay or fall back
                    return f"no worker is subscribed to this bundle's requests (the broker: {msg.why})"
                raise TransportError(f"the broker at {self._client.url} refused request {rid} of session "
                                     f"{g.session} ({msg.why}): {refusal_hint(msg.why, 'the request topics')}")
            if msg.topic != self._resp:
                self._presence_changed(msg)
                continue
            g.bytes_down += len(msg.payload)
            try:
                frame = self._decode(msg.payload, expect_hash=self.bundle.hash16)
            except FrameError:
                g.stale_replies += 1  # not ours to act on: a damaged message names no request
                continue
            if frame.request_id != rid:
                g.stale_replies += 1
                continue
            if frame.kind == wire.Kind.ERROR:
                code, message = str(frame.meta.get("code", "")), str(frame.meta.get("message", ""))
                if code in REPLAY_CODES or (code == "too_large" and self._last_frame > 1):
                    return f"{code}: {message}"
                raise error_from_reply(code, message, self.bundle.hash[:12])
            _check_reply(frame, self.topk)
            return frame

    def _await_worker(self, g: Generation) -> None:
        """Before a request on the shared topic: read the presence that has come in and, while no worker
        of this bundle is online, wait for one (at most ``step_timeout_s``; then send all the same, as
        a broker or worker that keeps no presence would never say). With ``local_fallback`` the wait
        ends ``PRESENCE_GRACE_S`` after the last (re)connect (at once when that is past: the presences
        have come and none is online) and raises TransportError: the device answers itself rather
        than wait. Replies read here answer requests already given up on."""
        if self.local_fallback:
            until = min(time.monotonic() + self.step_timeout_s, max(time.monotonic(),
                                                                    self._connected_at + PRESENCE_GRACE_S))
        else:
            until = time.monotonic() + self.step_timeout_s
        while True:
            try:
                msg = self._inbox.get_nowait() if self._online else \
                    self._inbox.get(timeout=max(0.0, min(until - time.monotonic(), 0.25)))
            except queue.Empty:
                if self._online or not self._client.connected:
                    return  # a lost broker is reported by the send that follows
                if time.monotonic() >= until:
                    if self.local_fallback:
                        raise TransportError(f"no server worker of this bundle is online on {self._client.url}")
                    return
                continue
            if msg.topic == self._resp:
                g.bytes_down += len(msg.payload)
                g.stale_replies += 1
            else:
                self._presence_changed(msg)

    def _presence_changed(self, msg: Any) -> None:
        """A worker's presence: only its own topic speaks for it (the id in the body must agree). A
        cleared (empty) presence is a worker gone for good."""
        wid = str(msg.topic).rsplit("/", 1)[-1]
        if not msg.payload:
            self._online.discard(wid)
            return
        try:
            body = json.loads(msg.payload)
            status = body["status"]
            if str(body["id"]) != wid:
                return
        except (ValueError, KeyError, TypeError):
            return
        if status == "offline":
            self._offline.add(wid)
            self._online.discard(wid)
        else:
            self._offline.discard(wid)
            if body.get("bundle", self.bundle.hash) == self.bundle.hash:
                self._online.add(wid)

    def _choose(self, ids: np.ndarray, logits: np.ndarray) -> int:
        """Greedy (temperature 0): the best id; else a draw from the top-k's softmax at that temperature."""
        temperature, rng = self._sample
        if temperature == 0:
            return int(ids[0, 0])
        z = (logits[0].astype(np.float64) - float(logits[0].max())) / temperature
        p = np.exp(z) / np.exp(z).sum()
        return int(ids[0, rng.choice(len(p), p=p)])


def check_generation(prompt: str | None, *, max_new_tokens: Any, temperature: Any = 0.0, seed: Any = None) -> None:
    """What ``generate`` refuses without the bundle, the tokenizer or the broker (``edgerun llm run``
    checks it first: a dead broker or a missing bundle was reported for an empty prompt or
    ``--max-new-tokens 0``).

    Raises:
        ConfigError: an empty or non-UTF-8 prompt, max_new_tokens < 1, a temperature outside 0..10,
            a negative seed.
    """
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError("the prompt is empty: give the user's message")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError("the prompt is not valid UTF-8 text; pass it as UTF-8") from None
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be a whole number >= 1")
    if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and 0 <= temperature <= 10):
        raise ConfigError(f"temperature={temperature!r} must be in 0..10 (0 = greedy)")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"seed={seed!r} must be a whole number >= 0")


def check_fits(prompt_tokens: int, max_new_tokens: int, spec: llm.LlmSpec) -> None:
    """ConfigError when the prompt and the new tokens pass the bundle's context."""
    if prompt_tokens + max_new_tokens - 1 > spec.max_context:  # the last new token is never sent
        raise ConfigError(f"{prompt_tokens} prompt tokens + {max_new_tokens} new ones pass this bundle's context of "
                          f"{spec.max_context}: shorten the prompt or ask for fewer tokens (--max-new-tokens)")


def _check_reply(frame: wire.Frame, topk: int) -> None:
    ok = (frame.kind == wire.Kind.REPLY and len(frame.tensors) == 2
          and isinstance(frame.tensors[0], np.ndarray) and frame.tensors[0].dtype == np.int64
          and isinstance(frame.tensors[1], np.ndarray) and frame.tensors[1].dtype == np.float32
          and frame.tensors[0].shape == frame.tensors[1].shape and frame.tensors[0].ndim == 2
          and frame.tensors[0].shape[0] == 1
          and 1 <= frame.tensors[0].shape[-1] <= topk and np.isfinite(frame.tensors[1]).all())
    if not ok:
        raise FrameError("the server's reply is not a split-LLM answer (top-k ids and logits): it serves another "
                         "kind of bundle under this hash, or is broken", "bad_reply")
