"""The C++-only device program (cpp/examples: edgerun_device) against a real Mosquitto and a real
`edgerun serve`: it answers exactly as the Python Device on the same inputs (the same core runs the
front half, the same server the back half), sends the very frame the Python device sends (request id
aside) with the same MQTT 5 request properties, runs the device copy `edgerun pack --for device`
writes, and fails with a clear message and its documented exit code when the broker is down, no
server answers, the server answers an error, a responder sends garbage, or the bundle or input is
wrong. Skipped only where libmosquitto-dev & co. are missing (scripts/setup.sh --test installs them)."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import tarfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from cpp_device_build import same_words
from edgerun import crossing, transport, wire
from edgerun.bundle import Bundle

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 120
EXIT_USAGE, EXIT_BUNDLE, EXIT_BROKER, EXIT_DEADLINE, EXIT_SERVER_ERROR, EXIT_BAD_REPLY = 2, 3, 4, 5, 6, 7



def run_cpp(exe: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def outputs_of(stdout: str) -> dict[str, np.ndarray]:
    out = json.loads(stdout)["outputs"]
    return {k: np.array(v["data"], dtype=v["dtype"]).reshape(v["shape"]) for k, v in out.items()}


def python_frame(bundle: Bundle, x: np.ndarray | dict[str, np.ndarray], request_id: int) -> bytes:
    """The REQUEST frame edgerun.device.Device builds for ``x`` (its own front-half and packing code)."""
    from edgerun.device import Device, _make_front

    dev = Device.__new__(Device)  # its front half and packer only: no broker
    dev.bundle, dev.engine = bundle, _make_front(bundle, "native", 1)
    outs = dev._run_front(x if isinstance(x, dict) else np.ascontiguousarray(x))
    cut = crossing.Packer(bundle.manifest.get("codec", {"id": "none"})).pack({s.name: outs[s.name] for s in bundle.cut})
    return wire.best_encoder()(wire.Frame(kind=wire.Kind.REQUEST, request_id=request_id, seq=0,
                                          bundle_hash=bundle.hash16, tensors=cut, meta={}))


def with_request_id(frame: bytes, request_id: int) -> bytes:
    body = frame[:8] + request_id.to_bytes(8, "little") + frame[16:-4]
    return body + zlib.crc32(body).to_bytes(4, "little")


class Sniffer:
    """Every request on the broker, with its MQTT 5 properties (a plain subscription beside the servers')."""

    def __init__(self, url: str) -> None:
        self.msgs: list = []
        self._lock = threading.Lock()
        self.client = transport.MqttClient(url, "sniffer-cpp-device", on_message=self._on)
        self.client.connect()
        self.client.subscribe("edgerun/v1/+/+/req/+")

    def _on(self, msg) -> None:
        with self._lock:
            self.msgs.append((msg.topic, bytes(msg.payload), msg.properties))

    def close(self) -> None:
        self.client.close()


def device_copy(bundle: Bundle, cli_argv: list[str], tmp: Path) -> Path:
    """`edgerun pack --for device`, extracted as a robot would: the directory inside the archive."""
    archive = tmp / "device.tar.gz"
    r = subprocess.run([*cli_argv, "pack", str(bundle.path), "--for", "device", "--out", str(archive)],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-2000:]
    with tarfile.open(archive) as tf:
        tf.extractall(tmp / "copy", filter="data")
    (top,) = (tmp / "copy").iterdir()
    assert not (top / "back.onnx").exists() and (top / "front.erg").exists()
    return top


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ answers --
def test_the_cpp_device_answers_as_the_python_device_and_sends_the_same_frame(
        cpp_device, digits_bundle, broker, serve_bundle, cli_argv, tmp_path):
    from edgerun.device import Device

    serve_bundle(digits_bundle)
    copy = device_copy(digits_bundle, cli_argv, tmp_path)
    x = np.ascontiguousarray(digits_bundle.samples(), dtype=np.float32)  # 8 real held-out digits
    np.save(tmp_path / "x.npy", x)
    sniffer = Sniffer(broker.url)
    try:
        r = run_cpp(cpp_device, copy, "--broker", broker.url, "--input", tmp_path / "x.npy", "--repeat", 3,
                    "--device-id", "robot-1", "--deadline-ms", 20000)
        assert r.returncode == 0, r.stderr
        with Device(digits_bundle, broker=broker.url, device_id="py-1") as dev:
            want = dev.infer(x, deadline_ms=20000)
    finally:
        sniffer.close()
    rec = json.loads(r.stdout)
    got = outputs_of(r.stdout)
    assert list(got) == [s.name for s in digits_bundle.outputs]
    for name, arr in want.output.items():  # same front-half bits, same server: the same answer, exactly
        assert np.array_equal(got[name], arr), np.abs(got[name] - arr).max()
    assert rec["answered_by"] == "server" and rec["batch"] == 8 and rec["worker"] and rec["codec"] == "none"
    assert set(rec["timings_ms"]) >= {"front", "encode", "round_trip", "server", "network", "decode", "total"}
    assert rec["repeat"]["n"] == 3 and set(rec["repeat"]["total_ms"]) >= {"mean", "p50", "min", "max"}

    cpp_reqs = [m for m in sniffer.msgs if m[0].endswith("/req/robot-1")]
    py_reqs = [m for m in sniffer.msgs if m[0].endswith("/req/py-1")]
    assert len(cpp_reqs) == 3 and len(py_reqs) == 1
    base = transport.base_topic(digits_bundle.model_id, digits_bundle.topic_id)
    ids = []
    for topic, payload, props in cpp_reqs:  # the topic and request properties of docs/TOPICS.md
        assert topic == f"{base}/req/robot-1"
        assert props.ResponseTopic == f"{base}/resp/robot-1"
        rid = transport.correlation_id(props.CorrelationData)
        assert rid == wire.decode(payload).request_id
        assert 1 <= props.MessageExpiryInterval <= math.ceil(20000 / 1000)
        ids.append(rid)
    assert ids == [ids[0], ids[0] + 1, ids[0] + 2] and ids[0] < 2**62 + 1
    # The frame the C++ device sent is the Python device's, byte for byte, but for the request id.
    py_payload = py_reqs[0][1]
    assert cpp_reqs[0][1] == with_request_id(py_payload, ids[0])


def test_four_threads_on_one_device_each_get_the_answer_to_their_own_request(
        cpp_device, digits_bundle, broker, serve_bundle, tmp_path):
    """`--concurrent 4`: four threads call infer() on one Device at once (their front-half runs take turns,
    their waits overlap on one pending map): 100 answers, all equal to the Python device's answer, none dropped
    (a reply handed to the wrong waiter would be another thread's request id and fail its check)."""
    from edgerun.device import Device

    serve_bundle(digits_bundle)
    x = np.ascontiguousarray(digits_bundle.samples()[:2], dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run_cpp(cpp_device, digits_bundle.path, "--broker", broker.url, "--input", tmp_path / "x.npy",
                "--concurrent", 4, "--repeat", 25, "--deadline-ms", 20000)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["repeat"]["n"] == 100 and rec["repeat"]["concurrent"] == 4 and len(rec["repeat"]["each_total_ms"]) == 100
    assert rec["repeat"]["distinct_outputs"] == 1 and rec["dropped_replies"] == 0
    with Device(digits_bundle, broker=broker.url) as dev:
        want = dev.infer(x, deadline_ms=20000)
    got = outputs_of(r.stdout)
    for name, arr in want.output.items():
        assert np.array_equal(got[name], arr)


def test_the_request_frame_equals_the_python_devices_with_the_codec_and_a_batch_over_max_batch(
        cpp_device, tmp_path_factory, tmp_path):
    from edgerun.exporters import ExportConfig, export

    bundle = export("zoo:digits-cnn", ExportConfig(cut=None, codec="tsq", evaluate=False),
                    tmp_path_factory.mktemp("tsq") / "digits")
    s = np.ascontiguousarray(bundle.samples(), dtype=np.float32)
    x = np.concatenate([s, s[:3]])  # 11 samples: the front half runs in slices of 8, as in Python
    np.save(tmp_path / "x.npy", x)
    for codec, flags in (("tsq", []), ("none", ["--codec", "none"])):
        r = run_cpp(cpp_device, bundle.path, "--input", tmp_path / "x.npy", "--request-id", 77,
                    "--dump-frame", tmp_path / f"{codec}.bin", *flags)
        assert r.returncode == 0, r.stderr
        got = (tmp_path / f"{codec}.bin").read_bytes()
        if codec == "none":
            bundle.manifest = {**bundle.manifest, "codec": {"id": "none"}}
        assert got == python_frame(bundle, x, 77), codec
        assert wire.decode(got).tensors[0].__class__.__name__ == ("CodedTensor" if codec == "tsq" else "ndarray")


# ------------------------------------------------------------------------------------------- errors --
def test_a_dead_broker_is_named_with_its_exit_code(cpp_device, digits_bundle, tmp_path):
    np.save(tmp_path / "x.npy", digits_bundle.samples()[:1].astype(np.float32))
    url = f"mqtt://127.0.0.1:{free_port()}"
    r = run_cpp(cpp_device, digits_bundle.path, "--broker", url, "--input", tmp_path / "x.npy")
    assert r.returncode == EXIT_BROKER, r.stderr
    assert f"cannot reach the MQTT broker at {url}" in r.stderr and "nothing was sent" in r.stderr
    assert r.stdout == ""


def test_no_server_ends_at_the_brokers_puback_saying_to_start_one(cpp_device, digits_bundle, broker, tmp_path):
    """Nothing subscribes to the request topic: the broker drops the request and says so in its PUBACK (reason
    0x10), which ends the run at once (it waited out the deadline), exit code 5 as before, and the words the
    Python device uses."""
    from edgerun.device import Device
    from edgerun.errors import TransportError

    np.save(tmp_path / "x.npy", digits_bundle.samples()[:1].astype(np.float32))
    r = run_cpp(cpp_device, digits_bundle.path, "--broker", broker.url, "--input", tmp_path / "x.npy",
                "--deadline-ms", 60_000)
    assert r.returncode == EXIT_DEADLINE, r.stderr
    why = r.stderr.split("error: ", 1)[1].strip()
    assert why.startswith("no server took request ") and "(No matching subscribers)" in why
    assert "edgerun serve" in why and digits_bundle.topic_id in why
    with Device(digits_bundle, broker=broker.url, engine="ort") as dev, pytest.raises(TransportError) as e:
        dev.infer(digits_bundle.samples()[:1].astype(np.float32), deadline_ms=60_000)
    assert same_words(str(e.value)) == same_words(why)


class Responder:
    """A fake server on the request topics: answers every request with ``make(frame, props)``."""

    def __init__(self, url: str, make) -> None:
        self.make = make
        self.client = transport.MqttClient(url, "fake-server", on_message=self._on)
        self.client.connect()
        self.client.subscribe("edgerun/v1/+/+/req/+")

    def _on(self, msg) -> None:
        req = wire.decode(bytes(msg.payload))
        self.client.publish(msg.properties.ResponseTopic, self.make(req),
                            correlation=msg.properties.CorrelationData)


def answered_by_responder(exe: Path, bundle, url: str, tmp_path: Path, make) -> subprocess.CompletedProcess:
    """``edgerun_device`` on two of ``bundle``'s samples, every request answered by ``make(frame)``."""
    np.save(tmp_path / "x.npy", bundle.samples()[:2].astype(np.float32))
    fake = Responder(url, make)
    try:
        return run_cpp(exe, bundle.path, "--broker", url, "--input", tmp_path / "x.npy", "--deadline-ms", 20000)
    finally:
        fake.client.close()


@pytest.mark.parametrize("case", ["error_frame", "garbage", "wrong_shape"])
def test_a_server_error_and_a_malformed_reply_are_told_apart(cpp_device, digits_bundle, broker, tmp_path, case):
    def make(req: wire.Frame) -> bytes:
        if case == "error_frame":
            return wire.error_frame(req.request_id, digits_bundle.hash16, "bad_tensors", "cut tensor 0 has shape (2, 3)")
        if case == "garbage":
            return b"ERWF" + bytes(60)
        return wire.encode(wire.Frame(wire.Kind.REPLY, req.request_id, 0, digits_bundle.hash16,
                                      [np.zeros((2, 3), np.float32)], {"server_us": 5}))

    r = answered_by_responder(cpp_device, digits_bundle, broker.url, tmp_path, make)
    if case == "error_frame":
        assert r.returncode == EXIT_SERVER_ERROR, r.stderr
        assert "the server refused the request (bad_tensors): cut tensor 0 has shape (2, 3)" in r.stderr
    else:
        assert r.returncode == EXIT_BAD_REPLY, r.stderr
        assert "malformed reply: " + ("bad_version" if case == "garbage" else "its 'logits' is float32 [2,3]") \
            in r.stderr


def test_bundles_and_inputs_it_cannot_run_are_refused_saying_what_to_do(cpp_device, digits_bundle, tmp_path):
    import shutil

    from edgerun.bundle import write_manifest

    x = tmp_path / "x.npy"
    np.save(x, digits_bundle.samples()[:1].astype(np.float32))

    def refused(bundle_dir, *extra, code=EXIT_BUNDLE) -> str:
        r = run_cpp(cpp_device, bundle_dir, "--broker", "mqtt://127.0.0.1:1", "--input", *extra)
        assert r.returncode == code, r.stderr
        return r.stderr

    edited = tmp_path / "edited"
    shutil.copytree(digits_bundle.path, edited)
    m = json.loads((edited / "manifest.json").read_text())
    m["model_id"] = "other"
    (edited / "manifest.json").write_text(json.dumps(m))
    assert "does not match its bundle_hash" in refused(edited, x)

    no_native = tmp_path / "no_native"
    shutil.copytree(digits_bundle.path, no_native)
    m = {k: v for k, v in json.loads((no_native / "manifest.json").read_text()).items() if k != "bundle_hash"}
    m["native"] = {"ok": False, "reason": "op Foo is not supported"}
    write_manifest(no_native, m)
    assert "op Foo is not supported" in refused(no_native, x) and "--engine ort" in refused(no_native, x)

    (edited / "front.erg").unlink()
    shutil.copy(digits_bundle.path / "manifest.json", edited / "manifest.json")
    assert "front.erg is missing" in refused(edited, x) and "pack BUNDLE --for device" in refused(edited, x)
    assert "extract it first" in refused(tmp_path / "b.tar.gz", x)

    np.save(tmp_path / "f64.npy", digits_bundle.samples()[:1].astype(np.float64))
    assert "astype(numpy.float32)" in refused(digits_bundle.path, tmp_path / "f64.npy", code=EXIT_USAGE)
    np.save(tmp_path / "nobatch.npy", digits_bundle.samples()[0].astype(np.float32))
    assert "x[None]" in refused(digits_bundle.path, tmp_path / "nobatch.npy", code=EXIT_USAGE)


def test_a_two_input_robot_policy_runs_with_its_joint_state_passing_through(
        cpp_device, tmp_path, cli_argv, broker, serve_bundle):
    from edgerun.device import Device
    from robot_policy import POLICY

    model_py = tmp_path / "policy.py"
    model_py.write_text(POLICY)
    out = tmp_path / "bundle"
    r = subprocess.run([*cli_argv, "export", f"{model_py}:actor_critic", "--cut", "vision.1", "--no-eval",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    bundle = Bundle.load(out)
    assert bundle.passthrough == ["joints"]
    serve_bundle(bundle)
    g = np.random.default_rng(1)
    feeds = {"image": g.standard_normal((3, 3, 16, 16), dtype=np.float32),
             "joints": g.standard_normal((3, 5), dtype=np.float32)}
    for k, v in feeds.items():
        np.save(tmp_path / f"{k}.npy", v)
    assert "--input NAME=FILE.npy" in run_cpp(cpp_device, out, "--broker", broker.url, "--input",
                                              tmp_path / "image.npy").stderr
    r = run_cpp(cpp_device, out, "--broker", broker.url, "--input", f"joints={tmp_path / 'joints.npy'}",
                "--input", f"image={tmp_path / 'image.npy'}", "--deadline-ms", 20000)
    assert r.returncode == 0, r.stderr
    with Device(bundle, broker=broker.url) as dev:
        want = dev.infer(feeds, deadline_ms=20000)
    got = outputs_of(r.stdout)
    assert list(got) == ["action", "value"]
    for name in ("action", "value"):
        assert np.array_equal(got[name], want.output[name]), name
    assert python_frame(bundle, feeds, 5) == run_frame(cpp_device, out, tmp_path, feeds)


def run_frame(exe: Path, bundle_dir: Path, tmp: Path, feeds: dict[str, np.ndarray]) -> bytes:
    args = [a for k in feeds for a in ("--input", f"{k}={tmp / (k + '.npy')}")]
    r = run_cpp(exe, bundle_dir, *args, "--request-id", 5, "--dump-frame", tmp / "frame.bin")
    assert r.returncode == 0, r.stderr
    return (tmp / "frame.bin").read_bytes()
