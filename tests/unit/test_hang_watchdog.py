"""The suite's watchdog (tests/conftest.py): a hung test ends the run with its stack, not a stall."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def _run(tmp_path: Path, body: str, timeout_s: str) -> subprocess.CompletedProcess:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(body)
    env = dict(os.environ, EDGERUN_TEST_TIMEOUT_S=timeout_s)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sample.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_hung_test_ends_the_run_with_its_stack(tmp_path):
    r = _run(tmp_path, "import time\n\ndef test_stuck():\n    time.sleep(60)\n", "1")
    assert r.returncode != 0
    assert "Timeout (0:00:01)!" in r.stderr  # printed past pytest's output capture
    assert "in test_stuck" in r.stderr  # the stack names the test that hung


def test_the_limit_is_per_test_not_per_run(tmp_path):
    # Three tests of 0.7 s each under a 2 s limit: the run takes longer than the limit, no test does.
    body = "import time\n" + "".join(f"\ndef test_{i}():\n    time.sleep(0.7)\n" for i in range(3))
    r = _run(tmp_path, body, "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 passed" in r.stdout
    assert "Timeout" not in r.stderr
