"""Integration fixtures: one exported digits bundle per session, a private Mosquitto per test,
and real ``edgerun serve`` processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgerun import transport
from edgerun.broker import Mosquitto
from edgerun.bundle import Bundle
from edgerun.procs import die_with_parent

SERVER_START_TIMEOUT_S = 60.0  # process start + onnxruntime session; generous for a loaded 2-core CI box
SERVER_STOP_TIMEOUT_S = 15.0
N_EVAL = 48  # digits test samples pushed through the split in the accuracy test


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The zoo digits CNN exported once with the default cut."""
    from edgerun.exporters import ExportConfig, export

    return export("zoo:digits-cnn", ExportConfig(cut=None, evaluate=False), tmp_path_factory.mktemp("bundle") / "digits")


@pytest.fixture(scope="session")
def digits_test_set() -> tuple[np.ndarray, np.ndarray]:
    from edgerun.exporters.data import load_digits_split

    s = load_digits_split()
    return s.x_test[:N_EVAL], s.y_test[:N_EVAL]


@pytest.fixture(scope="session")
def device_engine(digits_bundle: Bundle) -> str:
    """The native engine when the bundle supports it (the device's default), else ORT."""
    return "native" if digits_bundle.native_ok else "ort"


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as b:
        yield b


def _cli_argv() -> list[str]:
    # `python -m edgerun` once the package has a __main__; the same typer app either way.
    import edgerun

    if (Path(edgerun.__file__).parent / "__main__.py").exists():
        return [sys.executable, "-m", "edgerun"]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'edgerun'; from edgerun.cli import main; main()"]


class ServerProc:
    """One ``edgerun serve`` child process; its stdout/stderr are kept for the assertions."""

    def __init__(self, bundle: Bundle, url: str, *extra: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(  # ends with the test run, even when its watchdog ends it
            die_with_parent([*_cli_argv(), "serve", str(bundle.path), "--broker", url, *extra]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.stdout = ""
        self.stderr = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop it (SIGTERM: a clean stop) and collect its output; returns the exit code."""
        self.send(sig)
        try:
            out, err = self.proc.communicate(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.stdout += out or ""
        self.stderr += err or ""
        return self.proc.returncode

    def stats(self) -> dict:
        """The ServerStats the CLI prints as the last stdout line on a clean stop."""
        lines = [ln for ln in self.stdout.splitlines() if ln.startswith("{")]
        assert lines, f"server printed no stats; stderr:\n{self.stderr[-2000:]}"
        return json.loads(lines[-1])["stats"]


def wait_servers_online(bundle: Bundle, url: str, n: int, procs: list[ServerProc]) -> None:
    """Block until ``n`` server workers announced themselves online (retained presence)."""
    online: set[str] = set()
    done = threading.Event()
    lock = threading.Lock()

    def on_msg(msg) -> None:
        body = json.loads(msg.payload)
        with lock:
            if body.get("status") == "online":
                online.add(body["id"])
            else:
                online.discard(body["id"])
            if len(online) >= n:
                done.set()

    watcher = transport.MqttClient(url, f"watch-{os.getpid()}-{threading.get_ident()}", on_message=on_msg)
    watcher.connect()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        watcher.subscribe(f"{transport.base_topic(bundle.model_id, bundle.topic_id)}/presence/server/+")
        while not done.wait(0.2):
            for p in procs:
                if p.proc.poll() is not None:
                    p.stop()
                    pytest.fail(f"edgerun serve exited with {p.proc.returncode}:\n{p.stderr[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{n} server(s) did not come online within {SERVER_START_TIMEOUT_S} s")
    finally:
        watcher.close()


@pytest.fixture(scope="session")
def cli_argv() -> list[str]:
    """argv prefix that runs the ``edgerun`` CLI in a fresh interpreter."""
    return _cli_argv()


@pytest.fixture
def wait_online():
    """``wait_online(bundle, url, n, procs)``: block until n workers are online."""
    return wait_servers_online


@pytest.fixture
def spawn_server(digits_bundle: Bundle, broker: Mosquitto):
    """Factory: start one ``edgerun serve`` (on the test's broker unless ``url``) without waiting for it."""
    started: list[ServerProc] = []

    def spawn(*extra: str, url: str | None = None) -> ServerProc:
        p = ServerProc(digits_bundle, url or broker.url, *extra)
        started.append(p)
        return p

    yield spawn
    for p in started:
        if p.proc.poll() is None:
            p.stop(signal.SIGKILL)


@pytest.fixture
def start_servers(digits_bundle: Bundle, broker: Mosquitto):
    """Factory: start ``n`` ``edgerun serve`` workers on the test's broker, wait until online."""
    started: list[ServerProc] = []

    def start(n: int = 1, *extra: str) -> list[ServerProc]:
        procs = [ServerProc(digits_bundle, broker.url, *extra) for _ in range(n)]
        started.extend(procs)
        wait_servers_online(digits_bundle, broker.url, n, procs)
        return procs

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.stop(signal.SIGKILL)


@pytest.fixture
def serve_bundle(broker: Mosquitto):
    """Factory: start one ``edgerun serve`` of any bundle on the test's broker, wait until online."""
    started: list[ServerProc] = []

    def start(bundle: Bundle, *extra: str) -> ServerProc:
        p = ServerProc(bundle, broker.url, *extra)
        started.append(p)
        wait_servers_online(bundle, broker.url, 1, [p])
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def cpp_device(tmp_path_factory):
    """The C++-only device program (cpp/examples: edgerun_device), built once per session; skipped, saying
    why, where its libraries are not installed (`scripts/setup.sh --test` installs them)."""
    from cpp_device_build import built_once, missing_tools

    why = missing_tools()
    if why:
        pytest.skip(f"the C++ device cannot be built here: {why}")
    return built_once(tmp_path_factory)


@contextlib.contextmanager
def silent_worker(bundle: Bundle, url: str) -> Iterator[None]:
    """A server of ``bundle``'s group that takes every request and never answers (a frozen worker): a device
    then waits for its reply. With no subscriber at all the broker's PUBACK (no matching subscribers) ends a
    request at once."""
    c = transport.MqttClient(url, "edgerun-silent-worker", on_message=lambda msg: None)
    c.connect()
    try:
        c.subscribe(transport.shared_request_filter(bundle.model_id, bundle.topic_id, "edgerun"))
        yield
    finally:
        c.close()
