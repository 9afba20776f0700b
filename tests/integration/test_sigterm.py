"""`kill` (SIGTERM) on a command that started a Mosquitto or `edgerun serve` processes stops them
too, as Ctrl-C does: before, Python's default SIGTERM ended the command at once and left its
broker (and the bench's servers) running, holding ports and temp directories. `kill -9` runs none
of the command's code; its children still end, on their parent-death signal (`procs.die_with_parent`)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import silent_worker
from edgerun import procs

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


def start_and_wait_ready(argv: list[str], ready_line: str, env: dict) -> tuple[subprocess.Popen, set[int]]:
    """Start ``argv``; return once a line of its output contains ``ready_line`` (its children are
    up, not half-spawned), with the process and every process it started."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen: set[int] = set()
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    def ready() -> bool:
        seen.update(descendants(proc.pid))
        return any(ready_line in ln for ln in lines)

    try:
        wait_for(ready, f"{ready_line!r} from {' '.join(argv[2:4])}")
    except BaseException:
        proc.kill()
        raise
    seen.update(descendants(proc.pid))
    return proc, seen


def stop_and_check_children_gone(argv: list[str], ready_line: str, sig: int) -> None:
    """Start ``argv``, send it ``sig`` once it is ready, and check every process it started is gone.

    SIGTERM checks the command's own clean stop, so the children's parent-death signal is off
    (``EDGERUN_NO_PDEATHSIG``): with it, they would go even if the command stopped nothing.
    SIGKILL runs no code in the command: only the parent-death signal can end the children.
    """
    env = dict(os.environ)
    if sig == signal.SIGTERM:
        env["EDGERUN_NO_PDEATHSIG"] = "1"
    proc, seen = start_and_wait_ready(argv, ready_line, env)
    try:
        assert seen, "it started no child process"
        proc.send_signal(sig)
        proc.wait(timeout=HANG_GUARD_S)
        wait_for(lambda: not any(alive(p) for p in seen), f"{names(seen)} to stop after {signal.Signals(sig).name}")
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in seen:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def bench_argv(cli_argv: list[str], bundle) -> list[str]:
    # "mode server" is logged once both `edgerun serve` processes (split, all on server) answer
    return [*cli_argv, "bench", str(bundle.path), "--link", "ethernet", "--requests", "100000"]


def test_sigterm_on_edgerun_broker_stops_its_mosquitto(cli_argv):
    stop_and_check_children_gone([*cli_argv, "broker"], "mqtt://", signal.SIGTERM)


def test_sigterm_on_edgerun_bench_stops_its_broker_and_servers(cli_argv, digits_bundle):
    stop_and_check_children_gone(bench_argv(cli_argv, digits_bundle), "mode server", signal.SIGTERM)


@pytest.mark.skipif(procs._setpriv_pdeathsig() is None, reason="needs util-linux setpriv --pdeathsig")
def test_kill_9_on_edgerun_broker_still_ends_its_mosquitto(cli_argv):
    stop_and_check_children_gone([*cli_argv, "broker"], "mqtt://", signal.SIGKILL)


@pytest.mark.skipif(procs._setpriv_pdeathsig() is None, reason="needs util-linux setpriv --pdeathsig")
def test_kill_9_on_edgerun_bench_still_ends_its_broker_and_servers(cli_argv, digits_bundle):
    stop_and_check_children_gone(bench_argv(cli_argv, digits_bundle), "mode server", signal.SIGKILL)


def test_edgerun_broker_ends_with_an_error_when_its_mosquitto_dies(cli_argv):
    """It slept on for good after its mosquitto was killed, printing nothing: the URL it had printed was
    dead and nothing said so. It now exits 2 naming the broker and its log."""
    p = subprocess.Popen([*cli_argv, "broker"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("mqtt://")
        wait_for(lambda: "mosquitto" in names(descendants(p.pid)), "its mosquitto")
        (mosq,) = [q for q in descendants(p.pid) if names({q}) == {"mosquitto"}]
        os.kill(mosq, signal.SIGKILL)
        _, err = p.communicate(timeout=HANG_GUARD_S)
    finally:
        p.kill()
    assert p.returncode == 2 and "mosquitto stopped (exit -9)" in err and "is gone" in err, err[-2000:]


def test_sigterm_on_edgerun_run_of_an_archive_removes_its_unpacked_copy(cli_argv, digits_bundle, broker, tmp_path):
    """DEPLOY.md runs `edgerun run policy-device.tar.gz` on the robot; the archive is unpacked into a temp
    directory that Python removes on a clean exit. SIGTERM (a supervisor stopping the robot's process) ended
    a plain `run` at once, and every stop left an unpacked bundle in /tmp for good."""
    import numpy as np

    archive, tmp = tmp_path / "device.tar.gz", tmp_path / "tmp"
    tmp.mkdir()
    subprocess.run([*cli_argv, "pack", str(digits_bundle.path), "--for", "device", "--out", str(archive)],
                   check=True, capture_output=True, timeout=120)
    np.save(tmp_path / "x.npy", np.repeat(digits_bundle.samples()[:1], 50, axis=0))
    with silent_worker(digits_bundle, broker.url):  # it takes the requests and never answers: run waits
        p = subprocess.Popen([*cli_argv, "run", str(archive), "--broker", broker.url, "--input",
                              str(tmp_path / "x.npy"), "--deadline-ms", "60000"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "TMPDIR": str(tmp)})
        try:
            give_up = time.monotonic() + HANG_GUARD_S
            while not list(tmp.glob("edgerun-bundle-*")) and time.monotonic() < give_up and p.poll() is None:
                time.sleep(0.05)
            assert list(tmp.glob("edgerun-bundle-*")), "the archive was not unpacked into TMPDIR"
            time.sleep(0.5)  # let it reach its wait for the reply (not needed for the check, only to be mid-run)
            p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=HANG_GUARD_S)
        finally:
            p.kill()
    assert p.returncode == 143, err[-2000:]
    assert list(tmp.glob("edgerun-bundle-*")) == []
    assert "Traceback" not in err
