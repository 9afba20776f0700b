"""Early exits on the C++ device (cpp/examples: edgerun_device), with a real Mosquitto and a real `edgerun
serve`, on the digits CNN exported with `--exits auto`: under budget "fast" every request is answered
where the Python Device answers it, with the same outputs bit for bit (a confident exit's head on the
device, else the server); with the server killed, or no broker at all, every request is answered by the
deepest exit, equal to the Python Device's local answer, and the program exits 0."""

from __future__ import annotations

import json
import signal
import socket

import numpy as np
import pytest

from conftest import ServerProc, wait_servers_online
from cpp_device_build import same_words

pytestmark = pytest.mark.integration
EXIT_USAGE = 2



@pytest.fixture(scope="module")
def exits_bundle(tmp_path_factory):
    from edgerun.exporters import ExportConfig, export

    return export("zoo:digits-cnn", ExportConfig(cut="block2", exits="auto", evaluate=False),
                  tmp_path_factory.mktemp("cpp-exits") / "digits-exits")


@pytest.fixture(scope="module")
def inputs(exits_bundle):
    from edgerun.exporters.data import load_digits_split

    x = np.ascontiguousarray(load_digits_split().x_test[:24], dtype=np.float32)
    return x.reshape((len(x), *exits_bundle.inputs[0].shape[1:]))


def run_cpp(exe, *args):
    import subprocess

    r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=120)
    return r, (json.loads(r.stdout) if r.returncode == 0 else None)


def output(rec: dict) -> np.ndarray:
    (v,) = rec["outputs"].values()
    return np.array(v["data"], dtype=v["dtype"]).reshape(v["shape"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_with_the_server_up_each_answer_comes_from_where_the_python_device_answers_it_with_its_bits(
        cpp_device, exits_bundle, inputs, broker, tmp_path):
    from edgerun.device import Device

    server = ServerProc(exits_bundle, broker.url)
    try:
        wait_servers_online(exits_bundle, broker.url, 1, [server])
        seen = set()
        with Device(exits_bundle, broker=broker.url, budget="fast") as dev:
            cases = [("fast", inputs[i:i + 1]) for i in range(len(inputs))] + [("off", inputs[:8])]
            for i, (budget, x) in enumerate(cases):
                np.save(tmp_path / f"x{i}.npy", x)
                r, got = run_cpp(cpp_device, exits_bundle.path, "--broker", broker.url, "--input", tmp_path / f"x{i}.npy",
                                 "--budget", budget, "--deadline-ms", 20000)
                assert r.returncode == 0, r.stderr
                dev.exits.thresholds = [None] * dev.exits.n_exits if budget == "off" else \
                    list(exits_bundle.manifest["exits"]["budgets"]["fast"]["thresholds"])
                want = dev.infer(x, deadline_ms=20000)
                assert got["answered_by"] == want.answered_by, (i, got["reason"], want.reason)
                assert got["budget"] == budget and got["front_compute_fraction"] == want.front_compute_fraction
                if want.local:
                    assert got["reason"] == want.reason and got["bytes_sent"] == 0 and got["request_id"] == 0
                else:
                    assert got["reason"] == "server replied" and got["worker"]
                (want_out,) = want.output.values()
                assert np.array_equal(output(got), want_out), (i, np.abs(output(got) - want_out).max())
                seen.add(got["answered_by"])
        assert "server" in seen and any(s.startswith("exit:") for s in seen), seen  # both kinds were compared
    finally:
        server.stop()


def test_with_the_server_killed_or_no_broker_the_deepest_exit_answers_as_the_python_devices(
        cpp_device, exits_bundle, inputs, broker, tmp_path):
    from edgerun.device import Device

    x = inputs[:4]
    np.save(tmp_path / "x.npy", x)
    server = ServerProc(exits_bundle, broker.url)
    wait_servers_online(exits_bundle, broker.url, 1, [server])
    server.stop(signal.SIGKILL)
    deepest = f"exit:{len(exits_bundle.manifest['exits']['points']) - 1}"
    with Device(exits_bundle, broker=broker.url, budget="off") as dev:
        want = dev.infer(x, deadline_ms=300)
    assert want.answered_by == deepest
    (want_out,) = want.output.values()

    r, got = run_cpp(cpp_device, exits_bundle.path, "--broker", broker.url, "--input", tmp_path / "x.npy",
                     "--budget", "off", "--deadline-ms", 300, "--repeat", 3)
    assert r.returncode == 0, r.stderr
    assert got["repeat"]["answered_by"] == {deepest: 3}
    assert got["answered_by"] == deepest and np.array_equal(output(got), want_out)
    # the first ended at the broker's PUBACK (no subscriber: the killed server's subscription went with it); the
    # next ones answer at once while the server is suspect
    assert got["reason"].startswith("server unreachable: no server took request ") and "; retrying in" in got["reason"]

    r, got = run_cpp(cpp_device, exits_bundle.path, "--broker", broker.url, "--input", tmp_path / "x.npy",
                     "--budget", "off", "--deadline-ms", 300)
    assert r.returncode == 0, r.stderr
    assert same_words(got["reason"]) == same_words(want.reason) and got["bytes_sent"] > 0

    url = f"mqtt://127.0.0.1:{free_port()}"
    r, got = run_cpp(cpp_device, exits_bundle.path, "--broker", url, "--input", tmp_path / "x.npy", "--budget", "off")
    assert r.returncode == 0, r.stderr
    assert got["answered_by"] == deepest and np.array_equal(output(got), want_out)
    assert got["reason"].startswith(f"server unreachable: cannot reach the MQTT broker at {url}")
    r, got = run_cpp(cpp_device, exits_bundle.path, "--broker", url, "--input", tmp_path / "x.npy")
    assert r.returncode == 0 and got["budget"] == exits_bundle.manifest["exits"]["default_budget"], r.stderr
    with Device(exits_bundle, broker=url) as dev:  # the Python device, no broker either, its default budget
        want = dev.infer(x, deadline_ms=300)
    assert got["answered_by"] == want.answered_by and np.array_equal(output(got), next(iter(want.output.values())))


@pytest.mark.parametrize("case", ["error_frame", "wrong_shape"])
def test_a_server_error_is_answered_by_the_deepest_exit_as_the_python_device_does(
        cpp_device, exits_bundle, inputs, broker, tmp_path, case):
    """It ended the C++ device with exit code 6 / 7 (a control loop's tick got an error) where the Python
    Device with exits answers from its deepest exit, reason "server error: ..."."""
    from test_cpp_device import Responder

    from edgerun import wire
    from edgerun.device import Device

    def make(req: wire.Frame) -> bytes:
        if case == "error_frame":
            return wire.error_frame(req.request_id, exits_bundle.hash16, "internal", "the back half failed")
        return wire.encode(wire.Frame(wire.Kind.REPLY, req.request_id, 0, exits_bundle.hash16,
                                      [np.zeros((2, 3), np.float32)], {"server_us": 5}))

    x = inputs[:2]
    np.save(tmp_path / "x.npy", x)
    deepest = f"exit:{len(exits_bundle.manifest['exits']['points']) - 1}"
    fake = Responder(broker.url, make)
    try:
        with Device(exits_bundle, broker=broker.url, budget="off") as dev:
            want = dev.infer(x, deadline_ms=20000)
        r, got = run_cpp(cpp_device, exits_bundle.path, "--broker", broker.url, "--input", tmp_path / "x.npy",
                         "--budget", "off", "--deadline-ms", 20000)
    finally:
        fake.client.close()
    assert want.answered_by == deepest and want.reason.startswith("server error: ")
    assert r.returncode == 0, r.stderr
    assert got["answered_by"] == deepest and got["reason"].startswith("server error: ")
    assert ("the back half failed" if case == "error_frame" else "malformed reply: its 'logits'") in got["reason"]
    assert got["bytes_sent"] > 0 and got["bytes_received"] > 0
    assert np.array_equal(output(got), next(iter(want.output.values())))


def test_budgets_it_cannot_use_are_refused_saying_what_to_do(cpp_device, exits_bundle, digits_bundle, inputs, tmp_path):
    np.save(tmp_path / "x.npy", inputs[:1])
    r, _ = run_cpp(cpp_device, exits_bundle.path, "--broker", "mqtt://127.0.0.1:1", "--input", tmp_path / "x.npy",
                   "--budget", "turbo")
    assert r.returncode == EXIT_USAGE and "--budget turbo: this bundle has accurate, balanced, fast (or off" in r.stderr
    r, _ = run_cpp(cpp_device, digits_bundle.path, "--broker", "mqtt://127.0.0.1:1", "--input", tmp_path / "x.npy",
                   "--budget", "fast")
    assert r.returncode == EXIT_USAGE and "needs a bundle with early exits" in r.stderr
    np.save(tmp_path / "x2.npy", inputs[:2])
    r, _ = run_cpp(cpp_device, exits_bundle.path, "--broker", "mqtt://127.0.0.1:1", "--input", tmp_path / "x2.npy",
                   "--max-batch", 1)
    assert r.returncode == EXIT_USAGE and "a batch of 2 is over --max-batch 1" in r.stderr


@pytest.fixture(scope="module")
def two_input_policy(tmp_path_factory):
    """The camera + joints policy of test_exits_multi_input_outage.py: segments read model inputs by name,
    the joints pass through the cut."""
    from robot_policy import export_with_exits

    return export_with_exits(tmp_path_factory.mktemp("cpp-policy"))


def test_a_two_input_policy_with_exits_answers_as_the_python_device(cpp_device, two_input_policy, broker,
                                                                     serve_bundle, tmp_path):
    from test_exits_multi_input_outage import _inputs

    from edgerun.device import Device

    b = two_input_policy
    assert "joints" in b.manifest["exits"]["cut_tensors"]  # passing through the cut
    serve_bundle(b)
    seen = set()
    with Device(b, broker=broker.url, budget="fast") as dev:
        for i in range(6):
            x = _inputs(1, seed=100 + i)
            for k, v in x.items():
                np.save(tmp_path / f"{k}{i}.npy", v)
            r, got = run_cpp(cpp_device, b.path, "--broker", broker.url, "--input", f"image={tmp_path / f'image{i}.npy'}",
                             "--input", f"joints={tmp_path / f'joints{i}.npy'}", "--budget", "fast",
                             "--deadline-ms", 20000)
            assert r.returncode == 0, r.stderr
            want = dev.infer(x, deadline_ms=20000)
            assert got["answered_by"] == want.answered_by, (got["reason"], want.reason)
            (want_out,) = want.output.values()
            assert np.array_equal(output(got), want_out), np.abs(output(got) - want_out).max()
            seen.add(got["answered_by"])
    with Device(b, broker="mqtt://127.0.0.1:1", budget="off") as dev:  # no broker: the deepest exit
        want = dev.infer(x, deadline_ms=300)
    r, got = run_cpp(cpp_device, b.path, "--broker", "mqtt://127.0.0.1:1", "--input", f"image={tmp_path / 'image5.npy'}",
                     "--input", f"joints={tmp_path / 'joints5.npy'}", "--budget", "off")
    assert r.returncode == 0 and got["answered_by"] == want.answered_by, r.stderr
    assert np.array_equal(output(got), next(iter(want.output.values())))
    assert "server" in seen, seen


def test_a_request_over_the_brokers_packet_limit_is_answered_by_the_deepest_exit_as_the_python_devices(
        cpp_device, exits_bundle, inputs, tmp_path):
    """Nothing is sent and the link is not suspect: each repeat is refused for its size, not skipped for a
    server thought unreachable (the reason of the last says so)."""
    from edgerun.broker import Mosquitto
    from edgerun.device import Device

    x = inputs[:8]  # ~9 KB of cut activations: over a 4,000-byte packet limit
    np.save(tmp_path / "x.npy", x)
    deepest = f"exit:{len(exits_bundle.manifest['exits']['points']) - 1}"
    with Mosquitto(max_packet_size=4000) as broker:
        with Device(exits_bundle, broker=broker.url, budget="off") as dev:
            want = dev.infer(x, deadline_ms=20000)
        r, got = run_cpp(cpp_device, exits_bundle.path, "--broker", broker.url, "--input", tmp_path / "x.npy",
                         "--budget", "off", "--deadline-ms", 20000, "--repeat", 3)
    assert r.returncode == 0, r.stderr
    assert want.answered_by == deepest and "not sent" in want.reason
    (want_out,) = want.output.values()
    assert got["repeat"]["answered_by"] == {deepest: 3} and np.array_equal(output(got), want_out)
    assert "not sent: its frame is" in got["reason"] and "maximum packet size of 4000 bytes" in got["reason"]
