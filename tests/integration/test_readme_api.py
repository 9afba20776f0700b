"""The README's "Python API" blocks run as written: the server block in its own process, the device
block in another, against a real Mosquitto, with only the bundle path and the broker URL swapped
for the test's (the digits bundle, the test's broker). A README example that drifts from the API
fails here."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SERVER_START_TIMEOUT_S, wait_servers_online
from edgerun.procs import die_with_parent

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def _api_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _as_test(code: str, bundle: Path, url: str) -> str:
    assert "bundles/digits" in code and "mqtt://127.0.0.1:1883" in code
    return code.replace("bundles/digits", str(bundle)).replace("mqtt://127.0.0.1:1883", url)


class _Proc:
    """Enough of conftest's ServerProc for wait_servers_online: .proc, .stop(), .stderr."""

    def __init__(self, code: str) -> None:
        self.proc = subprocess.Popen(die_with_parent([sys.executable, "-c", code]), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.stdout = self.stderr = ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.stdout, self.stderr = self.stdout + (out or ""), self.stderr + (err or "")
        return self.proc.returncode


def test_the_readme_python_api_blocks_run_as_written(digits_bundle, broker):
    device_code, server_code = _api_blocks()
    server = _Proc(_as_test(server_code, digits_bundle.path, broker.url))
    try:
        wait_servers_online(digits_bundle, broker.url, 1, [server])
        r = subprocess.run([sys.executable, "-c", _as_test(device_code, digits_bundle.path, broker.url)],
                           capture_output=True, text=True, timeout=SERVER_START_TIMEOUT_S)
        assert r.returncode == 0, r.stderr[-3000:]
        lines = r.stdout.splitlines()
        assert len(lines) == 10 and all(ln.split()[1] == "server" for ln in lines), r.stdout
    finally:
        code = server.stop()
    assert code == 0, server.stderr[-3000:]  # handle_signals=True: SIGTERM is a clean stop
