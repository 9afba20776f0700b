"""The C++ device (cpp/examples: edgerun_device) over TLS, against a real Mosquitto that requires client
certificates of its CA and a real `edgerun serve`: with the URL the Python side takes
(mqtts://host:port?ca=...&cert=...&key=...) it answers exactly as the Python device; a broker it cannot
trust (another CA, a certificate for another host, an expired one) or one that wants a client
certificate it lacks ends it with exit code 4 and a message saying what to do, its password never shown;
a malformed URL or PEM file is a usage error (2) before any connection."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import ServerProc, wait_servers_online
from edgerun.broker import Mosquitto
from edgerun.broker_url import BrokerTls, tls_url

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not shutil.which("openssl"), reason="openssl makes the test certificates")]

EXIT_USAGE, EXIT_BROKER = 2, 4



def run_cpp(exe, *args):
    import subprocess

    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=120)


def outputs_of(stdout: str) -> dict[str, np.ndarray]:
    out = json.loads(stdout)["outputs"]
    return {k: np.array(v["data"], dtype=v["dtype"]).reshape(v["shape"]) for k, v in out.items()}


def test_over_mutual_tls_it_answers_as_the_python_device_and_without_a_client_cert_it_says_to_add_one(
        cpp_device, digits_bundle, tmp_path):
    from edgerun.device import Device

    x = np.ascontiguousarray(digits_bundle.samples(), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    with Mosquitto(tls=True, require_client_cert=True) as broker:
        assert broker.url.startswith("mqtts://") and "cert=" in broker.url
        server = ServerProc(digits_bundle, broker.url)
        try:
            wait_servers_online(digits_bundle, broker.url, 1, [server])
            r = run_cpp(cpp_device, digits_bundle.path, "--broker", broker.url, "--input", tmp_path / "x.npy",
                        "--deadline-ms", 20000)
            assert r.returncode == 0, r.stderr
            with Device(digits_bundle, broker=broker.url) as dev:
                want = dev.infer(x, deadline_ms=20000)
            got = outputs_of(r.stdout)
            for name, arr in want.output.items():
                assert np.array_equal(got[name], arr), np.abs(got[name] - arr).max()
            assert json.loads(r.stdout)["answered_by"] == "server"

            bad = run_cpp(cpp_device, digits_bundle.path, "--broker", broker.url_without_client_cert,
                          "--input", tmp_path / "x.npy")
            assert bad.returncode == EXIT_BROKER, bad.stderr
            assert "does it require a client certificate? then add &cert=CLIENT.pem&key=CLIENT.key" in bad.stderr
            assert "nothing was sent" in bad.stderr and bad.stdout == ""
        finally:
            assert server.stop() == 0, server.stderr[-2000:]
    assert server.stats()["served"] == 2  # one request from each device; the refused one sent nothing


def test_a_broker_it_cannot_trust_is_named_with_what_to_do_and_no_password(cpp_device, digits_bundle, tmp_path):
    from edgerun.tls_dev import make_dev_certs

    np.save(tmp_path / "x.npy", digits_bundle.samples()[:1].astype(np.float32))
    other = make_dev_certs(tmp_path / "other-ca")
    other_host = make_dev_certs(tmp_path / "other-host", host="10.9.9.9")  # a certificate for 10.9.9.9 and localhost
    expired = make_dev_certs(tmp_path / "expired", days=-1)

    def device(url: str):
        return run_cpp(cpp_device, digits_bundle.path, "--broker", url, "--input", tmp_path / "x.npy")

    with Mosquitto(tls=True) as broker:
        url = tls_url("127.0.0.1", broker.port, BrokerTls(str(other.ca))).replace("mqtts://", "mqtts://bob:s3cret@")
        r = device(url)
        assert r.returncode == EXIT_BROKER, r.stderr
        assert "presented a certificate this client does not trust" in r.stderr
        assert "give the CA that signed it in the URL" in r.stderr
        assert "mqtts://bob:***@127.0.0.1" in r.stderr and "s3cret" not in r.stderr

    with Mosquitto(tls=True, certs_dir=other_host.ca.parent) as broker:
        r = device(tls_url("127.0.0.1", broker.port, BrokerTls(str(other_host.ca))))
        assert r.returncode == EXIT_BROKER, r.stderr
        assert "is not for '127.0.0.1'" in r.stderr and "subjectAltName" in r.stderr
        ok = device(tls_url("localhost", broker.port, BrokerTls(str(other_host.ca))))  # a name it holds
        assert ok.returncode == 5 and "nothing subscribes to" in ok.stderr  # connected; no server for the bundle

    with Mosquitto(tls=True, certs_dir=expired.ca.parent) as broker:
        r = device(tls_url("127.0.0.1", broker.port, BrokerTls(str(expired.ca))))
        assert r.returncode == EXIT_BROKER, r.stderr
        assert "presented a certificate that is not valid now" in r.stderr and "renew" in r.stderr


def test_malformed_tls_urls_and_pem_files_are_usage_errors(cpp_device, digits_bundle, tmp_path):
    np.save(tmp_path / "x.npy", digits_bundle.samples()[:1].astype(np.float32))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    import subprocess

    from edgerun.tls_dev import make_dev_certs

    certs = make_dev_certs(tmp_path / "certs")
    enc_key = tmp_path / "enc.key"
    subprocess.run(["openssl", "pkey", "-in", str(certs.client_key), "-aes256", "-passout", "pass:pw",
                    "-out", str(enc_key)], check=True, capture_output=True)
    cases = [
        (f"mqtt://127.0.0.1:1883?ca={junk}", "only an mqtts:// (TLS) URL takes"),
        (f"mqtts://127.0.0.1:8883?ca={tmp_path / 'nope.pem'}", "is not a file"),
        (f"mqtts://127.0.0.1:8883?capath={junk}", "unknown setting 'capath'"),
        (f"mqtts://127.0.0.1:8883?cert={junk}", "needs both cert= and key="),
        (f"mqtts://u:pw@127.0.0.1:8883?ca={junk}", "is not a PEM CA certificate"),
        (f"mqtts://127.0.0.1:8883?cert={junk}&key={enc_key}", "is not a PEM client certificate"),
        (f"mqtts://127.0.0.1:8883?ca={certs.ca}&cert={certs.client_cert}&key={enc_key}",
         "is encrypted (it needs a pass phrase, which a URL does not carry)"),
        (f"mqtts://127.0.0.1:8883?ca={certs.ca}&cert={certs.client_cert}&key={certs.server_key}",
         "is not the private key of cert="),
        ("ws://127.0.0.1:8883", "use mqtt://host:port, or mqtts://host:port for TLS"),
    ]
    for url, want in cases:
        r = run_cpp(cpp_device, digits_bundle.path, "--broker", url, "--input", tmp_path / "x.npy")
        assert r.returncode == EXIT_USAGE and want in r.stderr, (url, r.stderr)
        assert ":pw@" not in r.stderr
