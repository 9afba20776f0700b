"""`edgerun_device --hedge-ms` (the C++ device library's Options::hedge_ms), as tests/integration/test_hedging.py
checks `Device(hedge_ms=...)`: with one of two `edgerun serve` workers frozen (SIGSTOP: its broker session stays
up, so the shared subscription keeps handing it its share of the requests), a run without hedging ends at its
first request that met the frozen worker (exit code 5, no reply by the deadline); with hedging each such request
goes once more after H ms under a new id, the live worker answers the copy, and every request meets its deadline.
Nothing here asserts on time but the deadline that the program itself enforces."""

from __future__ import annotations

import json
import signal
import subprocess

import numpy as np
import pytest

pytestmark = pytest.mark.integration

EXIT_DEADLINE = 5
DEADLINE_MS = 1500  # far above a loopback round trip (~1 ms)
HEDGE_MS = 400  # a stall of the machine must not look like a wait for the hedge
REQUESTS = 6


def run_cpp(exe, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_hedged_requests_meet_their_deadline_with_a_frozen_worker(cpp_device, digits_bundle, broker, start_servers,
                                                                  tmp_path):
    live, frozen = start_servers(2)
    np.save(tmp_path / "x.npy", digits_bundle.samples()[:1].astype(np.float32))
    args = (digits_bundle.path, "--broker", broker.url, "--input", tmp_path / "x.npy", "--deadline-ms", DEADLINE_MS,
            "--repeat", REQUESTS)
    frozen.send(signal.SIGSTOP)
    try:
        plain = run_cpp(cpp_device, *args)
        assert plain.returncode == EXIT_DEADLINE, "no request reached the frozen worker: the test proves nothing"
        assert f"no reply within {DEADLINE_MS} ms from a server" in plain.stderr, plain.stderr
        r = run_cpp(cpp_device, *args, "--hedge-ms", HEDGE_MS)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        each = got["repeat"]["each_total_ms"]
        assert len(each) == REQUESTS and got["repeat"]["hedged"] >= 1
        # After the first copy won, both copies go out at once for 2 s: only the first request waits for the
        # hedge (one more may have stalled as long on a loaded machine).
        assert 1 <= sum(t >= HEDGE_MS for t in each) <= 2, each
    finally:
        frozen.send(signal.SIGCONT)
    assert live.stop() == 0 and frozen.stop() == 0


def test_a_local_answer_after_a_hedged_miss_says_it_was_sent_twice(cpp_device, broker, serve_bundle, tmp_path_factory):
    """A bundle with exits, its only worker frozen: the request goes twice, no reply comes, the deepest exit
    answers, and the JSON says it was hedged."""
    from edgerun.exporters.pipeline import ExportConfig, export

    tmp = tmp_path_factory.mktemp("cpp-hedge")
    b = export("zoo:digits-cnn", ExportConfig(cut="block2", exits="auto", evaluate=False), tmp / "exits")
    np.save(tmp / "x.npy", b.samples()[:1].astype(np.float32))
    server = serve_bundle(b)
    server.send(signal.SIGSTOP)
    try:
        r = run_cpp(cpp_device, b.path, "--broker", broker.url, "--input", tmp / "x.npy", "--budget", "off",
                    "--deadline-ms", 2000, "--hedge-ms", 50)
    finally:
        server.send(signal.SIGCONT)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["answered_by"].startswith("exit:") and got["hedged"] is True
    assert got["reason"].startswith("deadline: no reply") and "(sent twice)" in got["reason"], got["reason"]
    assert server.stop() == 0


def test_a_hedge_that_is_not_a_number_of_ms_is_refused(cpp_device, digits_bundle, tmp_path):
    np.save(tmp_path / "x.npy", digits_bundle.samples()[:1].astype(np.float32))
    r = run_cpp(cpp_device, digits_bundle.path, "--broker", "mqtt://127.0.0.1:1", "--input", tmp_path / "x.npy",
                "--hedge-ms", "-3")
    assert r.returncode == 2 and "--hedge-ms -3 must be a number of ms > 0" in r.stderr
