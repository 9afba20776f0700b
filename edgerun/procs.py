"""Child processes the demo and the benchmarks start: `edgerun serve` workers.

Each is started in its own session (Ctrl-C in the terminal does not reach it
before the parent has stopped it cleanly) and always stopped on the way out.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.errors import TransportError

SERVER_START_TIMEOUT_S = 60.0


def sigterm_unwinds() -> None:
    """Make SIGTERM unwind like Ctrl-C (KeyboardInterrupt) in this process.

    Python's default SIGTERM ends the process at once, without the ``with`` / ``finally``
    blocks that stop the Mosquitto and ``edgerun serve`` processes a command started, so
    ``kill`` (or a supervisor stopping the command) left them running. Commands that start
    children call this first; main thread only.
    """
    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)


def start_server(bundle_dir: Path, url: str, log_path: Path) -> subprocess.Popen:
    """Start ``edgerun serve BUNDLE --broker URL`` with its output in ``log_path``."""
    log = open(log_path, "wb")
    cmd = [sys.executable, "-m", "edgerun", "serve", str(bundle_dir), "--broker", url]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; a no-op for a process already gone."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def first_server_answer(dev: Any, x: np.ndarray, server: subprocess.Popen, log_path: Path) -> None:
    """Retry a request until the server process answers it (it may still be subscribing).

    A device with early exits answers locally while no server is there; only an
    answer from the server counts.

    Raises:
        TransportError: the server exited (its log tail is in the message) or never answered.
    """
    t0 = time.monotonic()
    deadline_ms = 2000.0
    while True:
        if server.poll() is not None:
            raise TransportError(f"`edgerun serve` exited ({server.returncode}); its log:\n"
                                 f"{log_path.read_text()[-2000:]}")
        try:
            if dev.infer(x, deadline_ms=deadline_ms).answered_by == "server":
                return
        except TransportError:
            # A big request over a slow link can take longer than one try: wait twice as long
            # next time (a fixed short deadline would queue resends behind each other forever).
            deadline_ms = min(2 * deadline_ms, 30000.0)
        if time.monotonic() - t0 > SERVER_START_TIMEOUT_S:
            raise TransportError(f"no answer from `edgerun serve` within {SERVER_START_TIMEOUT_S:g} s; "
                                 f"its log:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.1)
