"""The C++ control loop (edgerun_control_loop) for days: its summary keeps a bounded window of latencies."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from cpp_device_build import control_loop

pytestmark = pytest.mark.integration


def test_the_loop_keeps_the_last_window_of_latencies(cpp_device, digits_bundle, start_servers, broker, tmp_path):
    """`--ticks 0` runs until Ctrl-C, and every tick's latency and size were kept for the summary at the end
    (16 B a tick, without bound); the percentiles now cover the last --window answers, the mean bytes all."""
    start_servers(1)
    x = np.ascontiguousarray(digits_bundle.samples()[:4], dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([str(control_loop(cpp_device)), str(digits_bundle.path), "--broker", broker.url, "--input",
                        str(tmp_path / "x.npy"), "--ticks", "12", "--rate", "200", "--deadline-ms", "5000",
                        "--window", "5"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["requests"] == 12 and summary["answered_by_server"] == 12
    assert summary["total_ms_answers"] == 5 and set(summary["total_ms"]) == {"p50", "p90", "p99"}
    assert summary["bytes_sent_mean"] > 0
