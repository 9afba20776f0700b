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
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import numpy as np

from edgerun import llm, transport
from edgerun.errors import FrameError
from edgerun.server import _Worker

log = logging.getLogger("edgerun.server")

_SESSION = re.compile(r"^[0-9a-f]{32}$")
DEFAULT_TOPK = 8


class LlmWorker(_Worker):
    """Answers split-LLM requests; the MQTT plumbing (publish, error frames, stats) is the server's."""

    def __init__(self, bundle: llm.LlmBundle, threads: int, max_frame_bytes: int, worker_id: str,
                 max_sessions: int = 32, session_ttl_s: float = 600.0) -> None:
        self._common(bundle, max_frame_bytes, worker_id, max_batch=1)  # sessions are not batched
        self.back = llm.Half(bundle, "back", threads)
        self.sessions = llm.SessionStore(self.back, max_sessions, session_ttl_s)

    def extra_filters(self) -> list[str]:
        """This worker's own request topics: the sessions pinned to it."""
        return [transport.pinned_request_filter(self.bundle.model_id, self.bundle.topic_id, self.stats.worker)]

    def handle_from(self, first: Any, wait_s: float = 0.0, stop: Any = None) -> None:
        """Answer one message; never raises (sessions are not batched)."""
        r = self._prepare_llm(first)
        if r is None:
            return
        req, sid, topk = r
        frame = req.frame
        try:
            logits, length = self._step(sid, frame.seq, frame.tensors[0])
        except FrameError as exc:
            self._fail(req.topic, req.resp_topic, req.corr, frame.request_id, exc.code, str(exc))
            return
        except Exception as exc:  # a bug or onnxruntime failing: answer, log, keep serving
            log.exception("back half failed on request %d (session %s)", frame.request_id, sid)
            self.sessions.drop(sid)  # its cache may hold half a step
            self._fail(req.topic, req.resp_topic, req.corr, frame.request_id, "internal",
                       f"server error: {type(exc).__name__}: {exc}")
            return
        ids, vals = llm.top_k(logits, topk)
        self.stats.runs += 1
        self.stats.max_run = 1
        self._reply(req, [ids, vals], session_len=length)

    def _prepare_llm(self, msg: Any) -> tuple[Any, str, int] | None:
        req = self._prepare(msg)  # decodes, checks the frame (kind, bundle, size); counts it
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
        return req, sid, topk

    def _step(self, sid: str, seq: int, h: np.ndarray) -> tuple[np.ndarray, int]:
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
        logits = self.back.step(np.ascontiguousarray(h), cache)
        if not np.isfinite(logits).all():  # finite but huge hidden states overflow inside the back half
            cache.truncate(seq)
            raise FrameError(f"the back half gives NaN / Inf logits on these hidden states (|h| up to "
                             f"{float(np.abs(h).max()):.3g}): the front half diverged; not answered", "bad_tensors")
        return logits, cache.length

    def tick(self) -> None:
        """Between requests: free the caches of sessions idle longer than the TTL."""
        self.sessions.expire(time.monotonic())
