"""`kill` (SIGTERM) on a command that started a Mosquitto or `edgerun serve` processes stops them
too, as Ctrl-C does: before, Python's default SIGTERM ended the command at once and left its
broker (and the bench's servers) running, holding ports and temp directories."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

HANG_GUARD_S = 60.0  # only to turn a hang into a failure


def descendants(pid: int) -> set[int]:
    """Every live process under ``pid`` (Linux /proc)."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for k in map(int, kids):
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone but for its parent's wait
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(cond, what: str) -> None:
    end = time.monotonic() + HANG_GUARD_S
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def names(pids: set[int]) -> set[str]:
    out = set()
    for p in pids:
        try:
            out.add(Path(f"/proc/{p}/comm").read_text().strip())
        except OSError:
            pass
    return out


def sigterm_and_check_children_gone(argv: list[str], ready_line: str) -> None:
    """Start ``argv``; once a line of its output contains ``ready_line`` (its children are up,
    not half-spawned), SIGTERM it and check that every process it started is gone."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[int] = set()
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()

        def ready() -> bool:
            seen.update(descendants(proc.pid))
            return any(ready_line in ln for ln in lines)

        wait_for(ready, f"{ready_line!r} from {' '.join(argv[2:4])}")
        seen.update(descendants(proc.pid))
        assert seen, "it started no child process"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=HANG_GUARD_S)
        wait_for(lambda: not any(alive(p) for p in seen), f"{names(seen)} to stop after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in seen:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_sigterm_on_edgerun_broker_stops_its_mosquitto(cli_argv):
    sigterm_and_check_children_gone([*cli_argv, "broker"], "mqtt://")


def test_sigterm_on_edgerun_bench_stops_its_broker_and_servers(cli_argv, digits_bundle):
    # "mode server" is logged once both `edgerun serve` processes (split, all on server) answer
    sigterm_and_check_children_gone([*cli_argv, "bench", str(digits_bundle.path), "--link", "ethernet",
                                     "--requests", "100000"], "mode server")
