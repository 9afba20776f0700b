"""A broker that refuses a request in its PUBACK (an MQTT 5 reason code): here an ACL that does not let the
device publish on the request topics, a common misconfiguration of a deployed broker.

The device used to wait out its deadline and then say "is `edgerun serve` running?": the broker had
answered at once, and the answer was not read. Now infer() ends at the PUBACK with the broker's reason and
what to change; a device with exits answers from its deepest exit saying why."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest
from configured_mosquitto import acl_mosquitto

from edgerun.device import Device
from edgerun.errors import TransportError

pytestmark = pytest.mark.integration

EXIT_BROKER = 4
DEADLINE_MS = 60000  # a refusal is read at once: a device that waited it out would say "no reply"
ACL = """topic readwrite edgerun/v1/+/+/presence/#
topic readwrite edgerun/v1/+/+/resp/#
topic read edgerun/v1/+/+/req/#
"""


@pytest.fixture
def acl_broker(tmp_path) -> Iterator[str]:
    """A Mosquitto whose anonymous clients may read the request topics but not publish on them."""
    with acl_mosquitto(tmp_path, ACL) as url:
        yield url


def test_a_request_the_acl_refuses_ends_with_the_brokers_reason(acl_broker, digits_bundle, device_engine):
    x = digits_bundle.samples()[:1].astype(np.float32)
    with Device(digits_bundle, broker=acl_broker, engine=device_engine, timeout_ms=DEADLINE_MS) as dev:
        for _ in range(2):
            with pytest.raises(TransportError, match=r"refused request \d+ \(Not authorized\): its ACL does not "
                                                     r"let this device publish on edgerun/v1/.*/req/.*acl_file"):
                dev.infer(x)


@pytest.fixture(scope="module")
def exits_bundle(tmp_path_factory):
    from edgerun.exporters import ExportConfig, export

    return export("zoo:digits-cnn", ExportConfig(cut="block1", exits="auto", evaluate=False),
                  tmp_path_factory.mktemp("refusals") / "exits")


def test_with_exits_the_deepest_exit_answers_a_refused_request_saying_why(acl_broker, exits_bundle):
    with Device(exits_bundle, broker=acl_broker, budget="off", timeout_ms=DEADLINE_MS) as dev:
        r = dev.infer(exits_bundle.samples()[:1].astype(np.float32))
    assert r.answered_by.startswith("exit:") and "Not authorized" in r.reason and "acl_file" in r.reason


def test_the_cpp_device_ends_a_refused_request_with_the_brokers_reason(cpp_device, acl_broker, digits_bundle,
                                                                      tmp_path):
    np.save(tmp_path / "x.npy", digits_bundle.samples()[:1].astype(np.float32))
    r = subprocess.run([str(cpp_device), str(digits_bundle.path), "--broker", acl_broker, "--input",
                        str(tmp_path / "x.npy"), "--deadline-ms", str(DEADLINE_MS)], capture_output=True, text=True,
                       timeout=DEADLINE_MS / 1000 + 60)
    assert r.returncode == EXIT_BROKER, r.stderr
    assert "refused request" in r.stderr and "(Not authorized): its ACL does not let this device publish" in r.stderr


def test_with_exits_the_cpp_device_answers_a_refused_request_from_its_deepest_exit(cpp_device, acl_broker,
                                                                                  exits_bundle, tmp_path):
    import json

    np.save(tmp_path / "x.npy", exits_bundle.samples()[:1].astype(np.float32))
    r = subprocess.run([str(cpp_device), str(exits_bundle.path), "--broker", acl_broker, "--input",
                        str(tmp_path / "x.npy"), "--budget", "off", "--deadline-ms", str(DEADLINE_MS)],
                       capture_output=True, text=True, timeout=DEADLINE_MS / 1000 + 60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["answered_by"].startswith("exit:") and "(Not authorized): its ACL" in got["reason"]


def test_an_llm_session_whose_request_the_acl_refuses_ends_with_the_brokers_reason(acl_broker, llm_bundle,
                                                                                  wait_online):
    """Not a replay after each step timeout (the worker is up; the broker refused the request)."""
    from conftest import ServerProc

    from edgerun.llm_device import LlmDevice

    w = ServerProc(llm_bundle, acl_broker, "--worker-id", "w0")
    try:
        wait_online(llm_bundle, acl_broker, 1, [w])
        with LlmDevice(llm_bundle, acl_broker, step_timeout_s=DEADLINE_MS / 1000) as dev:
            with pytest.raises(TransportError, match=r"refused request \d+ of session .*\(Not authorized\): its ACL"):
                dev.generate("Name three colours of the rainbow.", max_new_tokens=2)
    finally:
        w.stop(signal.SIGKILL)


def test_a_refused_presence_is_not_taken_for_a_later_request_of_the_same_mid(broker):
    """The broker answers a retained presence nobody subscribes to with 0x10 (no matching subscribers). Nobody
    watched that PUBACK, so it was kept as an early refusal under its mid; when paho's 16-bit mid came round
    (65,535 publishes later: half an hour of a 30 Hz control loop) the request sent under that mid was told
    "no server took it" at once, though its server was up."""
    from edgerun import transport

    told: list[tuple[object, str]] = []
    refusals = transport.Refusals(lambda key, why: told.append((key, why)))
    c = transport.MqttClient(broker.url, "edgerun-wrap", refusals=refusals)
    c.connect()
    try:
        c.announce("edgerun/v1/m/0123456789abcdef0123456789abcdef/presence/device/d", b"online")
        presence_mid = c._client._last_mid
        c.subscribe("edgerun/v1/m/0123456789abcdef0123456789abcdef/req/d")  # its SUBACK: the PUBACK came first
        assert c.refusals is refusals
        c._client._last_mid = presence_mid - 1  # paho's mid wraps at 65,535: the next publish reuses this one
        info = c.publish("edgerun/v1/m/0123456789abcdef0123456789abcdef/req/d", b"request")
        assert info.mid == presence_mid
        refusals.watch(info.mid, "request 1")
        c.subscribe("edgerun/v1/m/0123456789abcdef0123456789abcdef/req/other")  # its PUBACK has come
    finally:
        c.close()
    assert told == []
