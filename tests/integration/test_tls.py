"""Split inference over MQTT with TLS and client certificates, with real processes: a Mosquitto that
requires certificates of its CA, `edgerun serve` and `edgerun run` given mqtts:// URLs. Every answer
equals the whole model; a device without a client certificate is told what to add, and nothing is sent."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import numpy as np
import pytest

from conftest import ServerProc, wait_servers_online
from edgerun.broker import Mosquitto
from edgerun.engine import make_engine

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="openssl makes the test certificates")


def test_serve_and_run_over_mutual_tls_answer_as_the_whole_model(digits_bundle, cli_argv):
    with Mosquitto(tls=True, require_client_cert=True) as broker:
        server = ServerProc(digits_bundle, broker.url)
        try:
            wait_servers_online(digits_bundle, broker.url, 1, [server])
            r = subprocess.run([*cli_argv, "run", str(digits_bundle.path), "--broker", broker.url, "--limit", "4",
                                "--json"], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr[-2000:]
            got = np.array([json.loads(line)["output"] for line in r.stdout.splitlines()], dtype=np.float32)
            x = digits_bundle.samples()[:4].astype(np.float32)
            want = make_engine("ort", onnx_path=digits_bundle.path / "whole.onnx").run(x)[digits_bundle.outputs[0].name]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

            bad = subprocess.run([*cli_argv, "run", str(digits_bundle.path), "--broker", broker.url_without_client_cert,
                                  "--limit", "1"], capture_output=True, text=True, timeout=120)
            assert bad.returncode != 0
            assert "does it require a client certificate? then add &cert=CLIENT.pem&key=CLIENT.key" in bad.stderr
            assert "Traceback" not in bad.stderr
        finally:
            assert server.stop() == 0, server.stderr[-2000:]
    assert server.stats()["served"] == 4  # the refused device sent nothing


@pytest.fixture(scope="module")
def exits_bundle(tmp_path_factory):
    """digits-cnn cut at block2 with auto exits: a device that answers alone while the broker is away."""
    from edgerun.exporters import ExportConfig, export

    return export("zoo:digits-cnn", ExportConfig(cut="block2", exits="auto", evaluate=False),
                  tmp_path_factory.mktemp("tls-exits") / "digits-exits")


def _until(cond, timeout_s: float = 30.0) -> bool:
    give_up = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < give_up:
        time.sleep(0.1)
    return cond()


def test_a_device_answers_alone_while_the_tls_broker_is_down_and_the_server_again_once_it_restarts(
        exits_bundle, tmp_path):
    """A TLS broker could not be restarted for its clients: every Mosquitto(tls=True) / `edgerun broker --tls`
    made a new CA, so the device and server, holding the old URL, never trusted the restarted broker.
    With the certificates kept in a folder, both reconnect by themselves."""
    from edgerun.device import Device

    x = exits_bundle.samples()[:1].astype(np.float32)
    certs = tmp_path / "tls"
    with Mosquitto(tls=True, require_client_cert=True, certs_dir=certs) as broker:
        url, port = broker.url, broker.port
        server = ServerProc(exits_bundle, url)
        try:
            wait_servers_online(exits_bundle, url, 1, [server])
            with Device(exits_bundle, broker=url, engine="ort", budget="off") as dev:
                assert dev.infer(x, deadline_ms=10_000).answered_by == "server"
                broker.stop()
                down = [dev.infer(x, deadline_ms=400) for _ in range(3)]
                assert all(r.local and r.reason.startswith("server unreachable: lost the broker at mqtts://")
                           for r in down), [r.reason for r in down]
                with Mosquitto(tls=True, require_client_cert=True, certs_dir=certs, port=port) as again:
                    assert again.url == url  # the same port and files: the clients' URL still holds
                    wait_servers_online(exits_bundle, url, 1, [server])
                    assert _until(lambda: dev._client.connected)
                    assert dev.infer(x, deadline_ms=10_000).answered_by == "server"
        finally:
            server.stop()
    assert "cannot reconnect" not in server.stderr, server.stderr[-2000:]


def test_a_device_whose_broker_came_back_with_another_ca_says_why_in_its_answers(exits_bundle):
    """The device said "lost the broker ... (reconnecting in the background)" for good while the broker was
    up again with certificates it did not trust: paho retried the handshake without a word."""
    from edgerun.device import Device

    x = exits_bundle.samples()[:1].astype(np.float32)
    with Mosquitto(tls=True) as broker:
        port = broker.port
        dev = Device(exits_bundle, broker=broker.url, engine="ort", budget="off")
    try:
        with Mosquitto(tls=True, port=port):  # a new throwaway CA
            assert _until(lambda: "reconnecting fails" in dev.infer(x, deadline_ms=400).reason)
            r = dev.infer(x, deadline_ms=400)
            assert r.local and "presented a certificate this client does not trust" in r.reason
            assert "give the CA that signed it in the URL" in r.reason
    finally:
        dev.close()


def test_edgerun_broker_restarted_with_its_certs_dir_and_port_prints_the_same_url(cli_argv, tmp_path):
    """`edgerun broker --tls` had no --port and kept its certificates in a temp folder deleted on exit: the
    URL it printed died with it, and a restarted one could only be reached with a new URL."""
    import os
    import signal

    from edgerun.broker import free_port
    from edgerun.procs import die_with_parent
    from edgerun.transport import MqttClient

    port, urls = free_port(), []
    for _ in range(2):
        p = subprocess.Popen(die_with_parent([*cli_argv, "broker", "--tls", "--require-client-cert",
                                              "--certs-dir", str(tmp_path / "tls"), "--port", str(port)]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
        try:
            urls.append(p.stdout.readline().strip())
            c = MqttClient(urls[0], "first-url")
            c.connect(timeout_s=30)
            c.close()
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)
    assert urls[0] == urls[1] and urls[0].startswith(f"mqtts://127.0.0.1:{port}?ca={tmp_path}/tls/ca.pem&cert=")
    assert (tmp_path / "tls" / "ca.pem").is_file()  # kept after the broker stopped


def test_a_device_started_while_the_broker_is_down_keeps_retrying_when_its_ca_file_goes_bad(exits_bundle, tmp_path):
    """The background reconnect caught TransportError only: a CA file that vanished (or was replaced by a bad
    one) meanwhile raised ConfigError in it and ended the thread, and the device answered on its exits for
    good. It now says why in its answers and connects once the file and the broker are back."""
    import shutil as sh

    from edgerun.broker import free_port
    from edgerun.device import Device

    x = exits_bundle.samples()[:1].astype(np.float32)
    certs, port = tmp_path / "tls", free_port()
    with Mosquitto(tls=True, certs_dir=certs, port=port) as broker:
        url = broker.url
    ca = certs / "ca.pem"
    kept = sh.copy(ca, tmp_path / "ca-kept.pem")
    with Device(exits_bundle, broker=url, engine="ort", budget="off") as dev:  # broker down: opens on its exits
        ca.unlink()
        assert _until(lambda: "not a file" in (dev._connect_error or ""))
        assert dev._reconnector.is_alive()
        assert "not a file" in dev.infer(x, deadline_ms=300).reason
        sh.copy(kept, ca)
        with Mosquitto(tls=True, certs_dir=certs, port=port):
            assert _until(lambda: dev._client.connected)
