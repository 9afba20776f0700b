"""The C++ device library (cpp/device, edgerun/device.h) through its control-loop example
(cpp/examples/control_loop.cpp: edgerun_control_loop), with a real Mosquitto and a real `edgerun serve`:
every tick's answer equals the Python Device's for the same input; the broker stopped and restarted on
its port mid-loop: with early exits the ticks meanwhile are answered by the deepest exit and, in the
same process run, later ones by the server again; without exits those ticks are missed and later ones
answered by the server. Nothing here asserts on time: the waits are hang guards only."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from conftest import ServerProc, wait_servers_online
from cpp_device_build import control_loop
from edgerun.broker import Mosquitto

pytestmark = pytest.mark.integration
HANG_GUARD_S = 120.0  # a test that waits longer than this for a tick fails instead of hanging


@pytest.fixture(scope="session")
def loop_exe(cpp_device):
    return control_loop(cpp_device)


@pytest.fixture(scope="module")
def exits_bundle(tmp_path_factory):
    from edgerun.exporters import ExportConfig, export

    return export("zoo:digits-cnn", ExportConfig(cut="block2", exits="auto", evaluate=False),
                  tmp_path_factory.mktemp("loop-exits") / "digits-exits")


def samples(bundle, n: int) -> np.ndarray:
    from edgerun.exporters.data import load_digits_split

    x = np.ascontiguousarray(load_digits_split().x_test[:n], dtype=np.float32)
    return x.reshape((len(x), *bundle.inputs[0].shape[1:]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Loop:
    """edgerun_control_loop --each running; its tick lines read as they come."""

    def __init__(self, exe, bundle, url: str, x_path, *args) -> None:
        self.proc = subprocess.Popen([str(exe), str(bundle.path), "--broker", url, "--input", str(x_path), "--each",
                                      *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.ticks: list[dict] = []
        threading.Thread(target=lambda: [self.lines.put(json.loads(ln)) for ln in self.proc.stdout], daemon=True).start()

    def until(self, pred) -> None:
        """Read tick lines until pred(tick) holds for one (the hang guard fails the test)."""
        give_up = time.monotonic() + HANG_GUARD_S
        while time.monotonic() < give_up:
            try:
                t = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, f"the loop exited {self.proc.returncode}: {self.proc.stderr.read()}"
                continue
            self.ticks.append(t)
            if pred(t):
                return
        pytest.fail(f"hang guard: no such tick in {HANG_GUARD_S} s; last ticks {self.ticks[-3:]}")

    def stop(self) -> dict:
        """SIGINT, as Ctrl-C: the loop ends after its tick and prints the summary (returned)."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        while not self.lines.empty():
            self.ticks.append(self.lines.get())
        summary = self.ticks.pop()
        assert self.proc.returncode == 0 and "requests" in summary, (self.proc.returncode, self.proc.stderr.read())
        return summary


def out(tick: dict) -> np.ndarray:
    (v,) = tick["outputs"].values()
    return np.array(v, dtype=np.float32)


def test_each_tick_answers_as_the_python_device(loop_exe, exits_bundle, broker, tmp_path):
    """Budget "fast": some ticks answered by a confident exit on the device, the others by the server."""
    from edgerun.device import Device

    real = samples(exits_bundle, 16)
    # The exits may be confident on every real digit (an export whose budgets share one low threshold): blends of
    # two digits and noise give the server some ticks. 8 of each kind, as the Python device answers them.
    noise = np.random.default_rng(0).normal(real.mean(), real.std(), real.shape)
    pool = np.concatenate([real, 0.5 * real + 0.5 * real[::-1], noise]).astype(np.float32)
    server = ServerProc(exits_bundle, broker.url)
    try:
        wait_servers_online(exits_bundle, broker.url, 1, [server])
        with Device(exits_bundle, broker=broker.url, budget="fast") as dev:
            answers = [dev.infer(pool[i:i + 1], deadline_ms=20000) for i in range(len(pool))]
        pick = sorted([i for i, a in enumerate(answers) if a.answered_by == "server"][:8]
                      + [i for i, a in enumerate(answers) if a.answered_by != "server"][:8])
        x, want = np.ascontiguousarray(pool[pick]), [answers[i] for i in pick]
        np.save(tmp_path / "x.npy", x)
        r = subprocess.run([str(a) for a in (loop_exe, exits_bundle.path, "--broker", broker.url, "--input",
                                             tmp_path / "x.npy", "--budget", "fast", "--ticks", len(x), "--rate", 20,
                                             "--deadline-ms", 20000, "--each")], capture_output=True, text=True,
                           timeout=300)
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr
    *ticks, summary = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [t["tick"] for t in ticks] == list(range(len(x)))
    for t, w in zip(ticks, want):
        assert t["answered_by"] == w.answered_by, (t["tick"], t["reason"], w.reason)
        assert np.array_equal(out(t), next(iter(w.output.values())).reshape(-1)), t["tick"]
    kinds = {t["answered_by"] for t in ticks}
    assert "server" in kinds and any(k.startswith("exit:") for k in kinds), kinds  # both kinds compared
    assert summary["requests"] == len(x) and summary["missed"] == 0 and summary["errors"] == 0
    assert summary["answered_by_server"] + summary["answered_on_device"] == len(x)
    assert set(summary["total_ms"]) == {"p50", "p90", "p99"}


@pytest.mark.parametrize("with_exits", [True, False], ids=["exits", "no-exits"])
def test_broker_stopped_and_restarted_mid_loop(loop_exe, exits_bundle, digits_bundle, tmp_path, with_exits):
    from edgerun.device import Device

    bundle = exits_bundle if with_exits else digits_bundle
    x = samples(bundle, 8)
    np.save(tmp_path / "x.npy", x)
    budget = ["--budget", "off"] if with_exits else []
    deepest = f"exit:{len(exits_bundle.manifest['exits']['points']) - 1}"
    first = Mosquitto().start()
    second = Mosquitto(port=first.port)
    server = ServerProc(bundle, first.url)
    loop = None
    try:
        wait_servers_online(bundle, first.url, 1, [server])
        kw = {"budget": "off"} if with_exits else {}
        with Device(bundle, broker=first.url, **kw) as dev:  # the server's answers
            by_server = [next(iter(dev.infer(x[i:i + 1], deadline_ms=20000).output.values())) for i in range(len(x))]
        if with_exits:
            with Device(bundle, broker=f"mqtt://127.0.0.1:{free_port()}", budget="off") as dev:  # no broker
                local = [dev.infer(x[i:i + 1], deadline_ms=300) for i in range(len(x))]
            assert all(r.answered_by == deepest for r in local)
            by_exit = [next(iter(r.output.values())) for r in local]

        loop = Loop(loop_exe, bundle, first.url, tmp_path / "x.npy", "--ticks", 0, "--rate", 20,
                    "--deadline-ms", 2000, *budget)
        server_ticks = lambda: sum(t.get("answered_by") == "server" for t in loop.ticks)  # noqa: E731
        loop.until(lambda t: server_ticks() >= 3)
        first.stop()
        stopped_at = len(loop.ticks)
        if with_exits:
            loop.until(lambda t: t.get("answered_by") == deepest and "unreachable" in t["reason"]
                       and len(loop.ticks) > stopped_at + 3)
        else:
            loop.until(lambda t: "missed" in t and len(loop.ticks) > stopped_at + 3)
        second.start()  # the same port: the device finds it again on its own
        restarted_at = len(loop.ticks)
        loop.until(lambda t: sum(u.get("answered_by") == "server" for u in loop.ticks[restarted_at:]) >= 3)
        summary = loop.stop()
    finally:
        if loop is not None and loop.proc.poll() is None:
            loop.proc.kill()
        server.stop(signal.SIGKILL)
        first.stop()
        second.stop()

    ticks = loop.ticks
    assert [t["tick"] for t in ticks] == list(range(len(ticks)))
    assert not any("error" in t for t in ticks), [t for t in ticks if "error" in t][:2]
    for t in ticks:  # every answer is the Python device's for this input, from where it came
        i = t["tick"] % len(x)
        if t.get("answered_by") == "server":
            assert np.array_equal(out(t), by_server[i].reshape(-1)), t["tick"]
        elif with_exits:
            assert t["answered_by"] == deepest, t
            assert np.array_equal(out(t), by_exit[i].reshape(-1)), t["tick"]
    # the ticks read before the stop may have been answered before it: the outage starts at its first local tick
    after_stop = ticks[stopped_at:restarted_at]
    first_down = next(k for k, t in enumerate(after_stop) if t.get("answered_by") != "server")
    outage = after_stop[first_down:]
    assert len(outage) >= 3
    if with_exits:  # every tick answered: during the outage by the deepest exit
        assert not any("missed" in t for t in ticks)
        assert all(t["answered_by"] == deepest for t in outage), outage
        assert summary["missed"] == 0 and summary["answered_on_device"] >= len(outage)
    else:  # no exits: each is missed, at once (the broker is away, nothing is sent)
        assert all("missed" in t for t in outage), outage
        assert all(t["missed"].count("in the background") <= 1 for t in outage), outage  # was said twice
        assert summary["missed"] >= len(outage) and "broker" in summary["last_miss"]
    assert sum(t.get("answered_by") == "server" for t in ticks[restarted_at:]) >= 3  # the server again
    assert summary["requests"] == len(ticks) and summary["errors"] == 0


def test_server_errors_are_answered_by_the_deepest_exit_and_counted(loop_exe, exits_bundle, broker, tmp_path):
    """A server answering with errors: with exits each tick is answered on the device and counted, as
    `edgerun run --rate` counts them (edgerun/run_loop.py); the loop ends 0 (every tick was answered)."""
    from test_cpp_device import Responder

    from edgerun import wire

    np.save(tmp_path / "x.npy", samples(exits_bundle, 4))
    fake = Responder(broker.url, lambda req: wire.error_frame(req.request_id, exits_bundle.hash16, "internal",
                                                              "the back half failed"))
    try:
        r = subprocess.run([str(a) for a in (loop_exe, exits_bundle.path, "--broker", broker.url, "--input",
                                             tmp_path / "x.npy", "--budget", "off", "--ticks", 4, "--rate", 20,
                                             "--deadline-ms", 20000, "--each")], capture_output=True, text=True,
                           timeout=300)
    finally:
        fake.client.close()
    assert r.returncode == 0, r.stderr
    *ticks, summary = [json.loads(ln) for ln in r.stdout.splitlines()]
    deepest = f"exit:{len(exits_bundle.manifest['exits']['points']) - 1}"
    assert all(t["answered_by"] == deepest and t["reason"].startswith("server error: ") for t in ticks), ticks
    assert (summary["requests"], summary["answered_on_device"], summary["server_errors_answered_on_device"],
            summary["errors"]) == (4, 4, 4, 0)
    assert "the back half failed" in summary["last_error"]


def test_a_loop_with_exits_started_while_the_broker_is_down_finds_it_when_it_comes(loop_exe, exits_bundle, tmp_path):
    """A robot that boots before the network: the device opens (its first connect fails), the deepest exit
    answers every tick, and once a broker and a server come up on that port the same process sends to the
    server (libmosquitto's thread keeps connecting; the response topic is subscribed on its first connection)."""
    np.save(tmp_path / "x.npy", samples(exits_bundle, 4))
    port = free_port()
    broker = Mosquitto(port=port)
    server = None
    loop = Loop(loop_exe, exits_bundle, f"mqtt://127.0.0.1:{port}", tmp_path / "x.npy", "--ticks", 0, "--rate", 20,
                "--deadline-ms", 2000, "--budget", "off")
    try:
        loop.until(lambda t: len(loop.ticks) >= 3)
        assert all(t["answered_by"].startswith("exit:") and t["reason"].startswith("server unreachable: ")
                   for t in loop.ticks), loop.ticks
        broker.start()
        server = ServerProc(exits_bundle, broker.url)
        wait_servers_online(exits_bundle, broker.url, 1, [server])
        up_at = len(loop.ticks)
        loop.until(lambda t: sum(u.get("answered_by") == "server" for u in loop.ticks[up_at:]) >= 3)
        summary = loop.stop()
    finally:
        if loop.proc.poll() is None:
            loop.proc.kill()
        if server is not None:
            server.stop(signal.SIGKILL)
        broker.stop()
    assert summary["missed"] == 0 and summary["errors"] == 0
    assert summary["answered_by_server"] >= 3 and summary["answered_on_device"] >= 3


def test_a_link_slower_than_the_deadline_is_learnt_from_the_late_replies(loop_exe, exits_bundle, broker, tmp_path):
    """A server that answers, but after the deadline (a link of 2 x 40 ms, a 30 ms deadline). The late replies
    say the server is up, only slower: their round trip is learnt, and the ticks are answered by the deepest
    exit at once ("predicted round trip"). Before, only replies in time taught the round trip: the device took
    the miss for an outage, and once a second, when that suspicion lapsed, a tick waited out its deadline
    again. A prediction over 1 s old is checked by a request sent anyway (not waited for), so once the link
    is fast again the server answers again (edgerun/device.py RTT_STALE_S)."""
    from edgerun.linkemu import LinkConfig, LinkEmulator

    np.save(tmp_path / "x.npy", samples(exits_bundle, 4))
    server = ServerProc(exits_bundle, broker.url)
    predicted = lambda t: t["reason"].startswith("deadline: predicted round trip")  # noqa: E731
    probe = lambda t: t["reason"].endswith("(sent anyway, to measure the round trip again)")  # noqa: E731
    loop = None
    try:
        wait_servers_online(exits_bundle, broker.url, 1, [server])
        with LinkEmulator(("127.0.0.1", broker.port), LinkConfig(delay_ms=40.0)) as emu:
            loop = Loop(loop_exe, exits_bundle, emu.url, tmp_path / "x.npy", "--ticks", 0, "--rate", 20,
                        "--deadline-ms", 30, "--budget", "off")
            loop.until(lambda t: probe(t) and sum(predicted(u) and not probe(u) for u in loop.ticks) >= 5)
            slow = list(loop.ticks)
            emu.config = LinkConfig()  # the link is fast again
            loop.until(lambda t: sum(u.get("answered_by") == "server" for u in loop.ticks[len(slow):]) >= 3)
            summary = loop.stop()
    finally:
        if loop is not None and loop.proc.poll() is None:
            loop.proc.kill()
        server.stop(signal.SIGKILL)
    reasons = [t["reason"] for t in slow]
    assert reasons[0].startswith("deadline: no reply from a server"), reasons[0]  # nothing learnt yet: it waited
    # the next ones: suspect until the first late reply came, then predicted; none waited out its deadline again
    assert all(predicted(t) or t["reason"].startswith("server unreachable: no reply to the last request")
               for t in slow[1:]), reasons
    assert all(t["answered_by"] == slow[0]["answered_by"] != "server" for t in slow)  # the deepest exit
    assert summary["missed"] == 0 and summary["errors"] == 0
