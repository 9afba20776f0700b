"""Child processes the demo and the benchmarks start: `edgerun serve` workers.

Each is started in its own session (Ctrl-C in the terminal does not reach it
before the parent has stopped it cleanly) and always stopped on the way out; on
Linux it also gets SIGTERM when its parent dies without stopping it (``kill -9``).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
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


@functools.lru_cache(maxsize=1)
def _setpriv_pdeathsig() -> str | None:
    """util-linux's ``setpriv`` if it can set the parent-death signal (2.33 and later), else None."""
    exe = shutil.which("setpriv")
    if exe is None:
        return None
    try:
        text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return exe if "--pdeathsig" in text else None


def die_with_parent(argv: list[str]) -> list[str]:
    """``argv`` wrapped so that the child gets SIGTERM when this process dies, however it dies.

    The ``finally`` blocks that stop a command's Mosquitto and ``edgerun serve`` children do not run
    when the command is killed with SIGKILL (an out-of-memory kill, a supervisor's last resort, the
    test suite's hang watchdog): the children ran on, holding their ports. Linux's parent-death
    signal, set by ``setpriv --pdeathsig TERM`` just before it executes ``argv``, ends them too.
    The kernel sends it when the *thread* that started the child ends, so it is set only from the
    main thread; from another thread, or where ``setpriv`` is missing, ``argv`` is returned as is.
    ``EDGERUN_NO_PDEATHSIG=1`` turns it off (the SIGTERM tests check the clean stop alone with it).
    """
    exe = _setpriv_pdeathsig()
    off = os.environ.get("EDGERUN_NO_PDEATHSIG", "") not in ("", "0")
    if exe is None or off or threading.current_thread() is not threading.main_thread():
        return list(argv)
    return [exe, "--pdeathsig", "TERM", "--", *argv]


def start_server(bundle_dir: Path, url: str, log_path: Path, *extra: str) -> subprocess.Popen:
    """Start ``edgerun serve BUNDLE --broker URL [EXTRA...]`` with its output in ``log_path``."""
    log = open(log_path, "wb")
    cmd = die_with_parent([sys.executable, "-m", "edgerun", "serve", str(bundle_dir), "--broker", url, *extra])
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
