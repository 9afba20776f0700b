"""The server side of a split LLM: the back half, with one KV cache per session, pinned to this worker.

A session's first request (and every replay) reaches a worker through the shared subscription;
the worker that answers names itself in the reply (``meta.worker``) and the device sends the
session's next tokens to that worker's own topic (``transport.pinned_request_topic``). A request
carries the hidden states of new positions, starting at position ``seq``:

- ``seq == 0``: a new session (or a replay of a whole one): the cache starts empty;
- ``seq`` <= the cache's length: the cache is cut back to ``seq`` first (a resend: MQTT QoS 1 may
  deliver a message twice, and the device resends a step it got no answer for), so the answer is
  the same as the first time;
- otherwise the worker cannot answer: ``session_lost`` (it has no cache for the session: another
  worker held it, or it was evicted) or ``session_gap`` (positions are missing). The device then
  replays the whole session from position 0 on the shared topic and a worker rebuilds it.

The reply carries the top-k next-token ids (int64) and logits (float32) of the last position.

With ``max_batch`` > 1 (``serve --max-batch``) the decode steps (one new position each) of different
sessions waiting in the inbox run as one back-half call: their caches, of different lengths, padded
to the longest and masked (the back half's ``past_len`` input). A step weighs about as much as a
weight read, so N of them cost far less than N calls. A prompt or a replay of several positions
runs alone; so does a second step of a session already in the batch. A batched call that fails
(its padded caches may be what did not fit) is run again step by step.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgerun import llm, transport
from edgerun.errors import ConfigError, FrameError
from edgerun.server import _Request, _Worker

log = logging.getLogger("edgerun.server")

_SESSION = re.compile(r"^[0-9a-f]{32}$")
DEFAULT_TOPK = 8


@dataclass
class _Step:
    """A checked split-LLM request: ``rows`` is what it weighs against ``max_batch`` (a prompt or a
    replay weighs a whole batch, so it runs alone)."""

    req: _Request
    sid: str
    topk: int
    rows: int


class LlmWorker(_Worker):
    """Answers split-LLM requests; the MQTT plumbing (publish, error frames, stats) and the gathering
    of a batch (``_Worker.handle_from``) are the server's."""

    def __init__(self, bundle: llm.LlmBundle, threads: int, max_frame_bytes: int, worker_id: str,
                 max_sessions: int = llm.DEFAULT_MAX_SESSIONS, session_ttl_s: float = llm.DEFAULT_SESSION_TTL_S,
                 max_batch: int = 1) -> None:
        # the options before the back half (300 MB, seconds to load) is read
        llm.check_session_options(max_sessions, session_ttl_s)
        if max_batch > max_sessions:  # a new session in a batch would evict another one of the same batch
            raise ConfigError(f"--max-batch {max_batch} is more than --max-sessions {max_sessions}: a batch holds "
                              "steps of distinct sessions, so keep --max-batch <= --max-sessions")
        self._common(bundle, max_frame_bytes, worker_id, max_batch)
        self.back = llm.Half(bundle, "back", threads)
        if max_batch > 1 and not self.back.batches:
            raise ConfigError("this LLM bundle's back half runs one session per call (exported before the server "
                              "batched sessions): re-export it with `edgerun llm export`, or serve it with "
                              "--max-batch 1")
        self.sessions = llm.SessionStore(self.back, max_sessions, session_ttl_s)

    def extra_filters(self) -> list[str]:
        """This worker's own request topics: the sessions pinned to it."""
        return [transport.pinned_request_filter(self.bundle.model_id, self.bundle.topic_id, self.stats.worker)]

    def _answer(self, run: list[_Step]) -> None:  # type: ignore[override]
        """One step alone, or the decode steps of distinct sessions as one call; never raises."""
        if len(run) == 1:
            self._answer_one(run[0])
            return
        batch, caches, alone, seen = [], [], [], set()
        for st in run:
            if st.sid in seen:  # the same session twice (a resend): after the batch, in order
                alone.append(st)
                continue
            seen.add(st.sid)
            try:
                caches.append(self._cache(st.sid, st.req.frame.seq))
                batch.append(st)
            except FrameError as exc:
                self._fail_step(st, exc.code, str(exc))
        if len(batch) == 1:
            alone.insert(0, batch.pop())
            caches.clear()
        if batch:
            try:
                logits = self.back.step_batch([np.ascontiguousarray(st.req.frame.tensors[0]) for st in batch], caches)
            except Exception:  # its padded batch may be what failed (memory): each alone, as the model workers do
                log.exception("a batched back-half call of %d sessions failed; running them one by one", len(batch))
                alone[:0] = batch  # each cut back to its seq again by _cache; a failure alone is its own
            else:
                self.stats.runs += 1
                self.stats.max_run = max(self.stats.max_run, len(batch))
                for i, (st, cache) in enumerate(zip(batch, caches)):
                    self._finish(st, logits[i:i + 1], cache, batch=len(batch))
        for st in alone:
            self._answer_one(st)

    def _answer_one(self, st: _Step) -> None:
        try:
            cache = self._cache(st.sid, st.req.frame.seq)
            logits = self.back.step(np.ascontiguousarray(st.req.frame.tensors[0]), cache)
        except FrameError as exc:
            self._fail_step(st, exc.code, str(exc))
            return
        except Exception as exc:  # a bug or onnxruntime failing: answer, log, keep serving
            log.exception("back half failed on request %d (session %s)", st.req.frame.request_id, st.sid)
            self.sessions.drop(st.sid)  # its cache may hold half a step
            self._fail_step(st, "internal", f"server error: {type(exc).__name__}: {exc}")
            return
        self.stats.runs += 1
        self.stats.max_run = max(self.stats.max_run, 1)
        self._finish(st, logits, cache, batch=1)

    def _finish(self, st: _Step, logits: np.ndarray, cache: llm.Cache, batch: int) -> None:
        """Reply with the top-k, or refuse NaN / Inf logits (the step is taken back out of the cache)."""
        h = st.req.frame.tensors[0]
        if not np.isfinite(logits).all():  # finite but huge hidden states overflow inside the back half
            cache.truncate(st.req.frame.seq)
            self._fail_step(st, "bad_tensors", f"the back half gives NaN / Inf logits on these hidden states (|h| "
                                               f"up to {float(np.abs(h).max()):.3g}): the front half diverged; not "
                                               "answered")
            return
        ids, vals = llm.top_k(logits, st.topk)
        self._reply(st.req, [ids, vals], session_len=cache.length, batch=batch)

    def _fail_step(self, st: _Step, code: str, message: str) -> None:
        r = st.req
        self._fail(r.topic, r.resp_topic, r.corr, r.frame.request_id, code, message)

    def _prepare(self, msg: Any) -> _Step | None:  # type: ignore[override]
        """Decode and check one message (the frame as any worker does, then the session's meta)."""
        req = super()._prepare(msg)  # decodes, checks the frame (kind, bundle, size); counts it
        if req is None:
            return None
        frame, spec = req.frame, self.bundle.spec
        try:
            sid = frame.meta.get("session")
            if not isinstance(sid, str) or not _SESSION.match(sid):
                raise FrameError(f"meta.session must be 32 lowercase hex characters, got {sid!r}", "bad_meta")
            topk = frame.meta.get("topk", DEFAULT_TOPK)
            if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= llm.MAX_TOPK:
                raise FrameError(f"meta.topk must be a whole number in 1..{llm.MAX_TOPK}, got {topk!r}", "bad_meta")
            h = frame.tensors[0]
            if h.shape[0] != 1 or h.shape[1] == 0:
                raise FrameError(f"a split-LLM request carries one sequence of >= 1 new positions, got hidden states of "
                                 f"shape {tuple(h.shape)}", "bad_tensors")
            if h.shape[1] + frame.seq > spec.max_context:
                raise FrameError(f"positions {frame.seq}..{frame.seq + h.shape[1] - 1} are past this bundle's context "
                                 f"of {spec.max_context}: start a new session (or re-export with a larger "
                                 "--max-context)", "too_long")
            if not np.isfinite(h).all():
                raise FrameError("the hidden states hold NaN or Inf: the front half diverged; not run", "bad_tensors")
        except FrameError as exc:
            self._fail(req.topic, req.resp_topic, req.corr, frame.request_id, exc.code, str(exc))
            return None
        return _Step(req, sid, topk, 1 if h.shape[1] == 1 else self.max_batch)

    def _cache(self, sid: str, seq: int) -> llm.Cache:
        """The session's cache, cut back to ``seq`` (a new one at 0), or FrameError why there is none."""
        now = time.monotonic()
        cache = self.sessions.start(sid, now) if seq == 0 else self.sessions.get(sid, now)
        if cache is None:
            raise FrameError(f"worker {self.stats.worker} holds no state for session {sid} (another worker held it, "
                             "or it was evicted): replay the session from position 0", "session_lost")
        if seq > cache.length:
            raise FrameError(f"session {sid} holds positions 0..{cache.length - 1} here, the request starts at {seq}: "
                             "replay the session from position 0", "session_gap")
        if seq < cache.length:
            cache.truncate(seq)
        return cache

    def tick(self) -> None:
        """Between requests: free the caches of sessions idle longer than the TTL."""
        self.sessions.expire(time.monotonic())
