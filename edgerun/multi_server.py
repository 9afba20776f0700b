"""One server process for the back halves of several bundles (`edgerun serve A B ...`).

A GPU server usually hosts several models (a robot's perception model and its policy), or two
versions of one model while a fleet of devices updates: one process for all of them shares the
process's onnxruntime (and GPU) set-up instead of paying it per bundle. Each bundle gets its own
worker, MQTT client, presence and request topics (as if served alone: ``server.serve`` in a
thread); one stop (Ctrl-C, SIGTERM, ``stop.set()``) ends them all, and a worker that fails ends the
others too.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pathlib import Path

from edgerun.errors import ConfigError
from edgerun.server import ServerStats, _install_signals, _load, serve

log = logging.getLogger("edgerun.server")

_JOIN_POLL_S = 0.2


def serve_many(
    bundles: list[Any],
    broker_url: str,
    *,
    stop: threading.Event | None = None,
    handle_signals: bool = False,
    max_sessions: int | None = None,
    session_ttl_s: float | None = None,
    **options: Any,
) -> list[ServerStats]:
    """Serve the back halves of ``bundles`` (model or split LLM bundles, paths or loaded) until ``stop``.

    Args:
        bundles: two or more bundles (one is ``server.serve``'s job, and works here too).
        broker_url: the broker, shared by all.
        stop: set it to stop every worker.
        handle_signals: stop on SIGINT / SIGTERM (main thread only).
        max_sessions, session_ttl_s: for the split LLM bundles among them (a ConfigError when there is none).
        options: ``server.serve``'s other keywords (group, threads, max_frame_bytes, worker_id,
            max_batch, batch_wait_ms), the same for every bundle.

    Returns:
        Each bundle's ServerStats, in the order given.

    Raises:
        BundleError: a bundle is missing or damaged (before any worker starts).
        ConfigError: no bundle, or one given twice (same hash), or session options without an LLM bundle.
        TransportError / any error of a worker: the first one, after every worker has stopped.
    """
    from edgerun.llm import LlmBundle

    if not bundles:
        raise ConfigError("give at least one bundle to serve")
    loaded = [_load(b) for b in bundles]  # all checked before any connects
    seen: dict[str, Any] = {}
    for b in loaded:
        if b.hash in seen:  # named as given: an archive's unpacked copy is a temp directory the user never saw
            raise ConfigError(f"{label(b)} and {label(seen[b.hash])} are the same bundle (hash {b.hash[:12]}): give "
                              "each once")
        seen[b.hash] = b
    llm = [isinstance(b, LlmBundle) for b in loaded]
    if (max_sessions is not None or session_ttl_s is not None) and not any(llm):
        raise ConfigError("--max-sessions / --session-ttl-s: only a split LLM bundle (edgerun llm export) keeps "
                          "sessions, and none of these is one: drop them")
    stop = stop or threading.Event()
    restore = _install_signals(stop) if handle_signals else None
    results: list[ServerStats | None] = [None] * len(loaded)
    errors: list[BaseException] = []

    def run(i: int, b: Any) -> None:
        sessions = dict(max_sessions=max_sessions, session_ttl_s=session_ttl_s) if llm[i] else {}
        try:
            results[i] = serve(b, broker_url, stop=stop, **sessions, **options)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller, after the others stopped
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, args=(i, b), name=f"edgerun-serve-{i}", daemon=True)
               for i, b in enumerate(loaded)]
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(_JOIN_POLL_S)  # short joins: the main thread stays free for signals
    finally:
        stop.set()
        for t in threads:
            t.join()
        if restore is not None:
            restore()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def with_whole_models(bundles: list[Path], work: Path) -> list[Any]:
    """``bundles``, loaded, and after them each one's whole model as a bundle cut at the input
    (``bench.make_server_bundle``, written under ``work``): served beside the split, it is the plain-offload
    peer of `edgerun bench --broker`, which builds the same files, so the same bundle hash, on the device.
    Loaded once here: ``serve`` / ``serve_many`` take them as they are (an archive is not unpacked twice).

    Raises:
        ConfigError: a split LLM bundle (its whole model is not a request-response model).
        BundleError: a bundle that lacks its whole model (a pack for the server: ``--keep whole.onnx``).
    """
    from edgerun.bench import make_server_bundle
    from edgerun.bundle import Bundle

    loaded = [_load(str(p)) for p in bundles]
    wholes = []
    for i, (p, b) in enumerate(zip(bundles, loaded)):
        if not isinstance(b, Bundle):
            raise ConfigError(f"--with-whole: {p} is a split LLM bundle; its whole model is not served this way")
        b.require("whole.onnx", why="--with-whole")
        wholes.append(make_server_bundle(b, work / f"whole-{i}"))
    return [*loaded, *wholes]


def label(bundle: Any) -> str:
    """How a bundle (a path, or loaded) is named in messages and in `serve`'s stats lines: as the user gave it
    (an archive's unpacked copy is a temp directory the user never saw)."""
    if isinstance(bundle, (str, Path)):
        return str(bundle)
    return str(getattr(bundle, "source", None) or bundle.path)
