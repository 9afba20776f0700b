"""MQTT over TLS: mqtts:// URLs, the launcher's TLS listener, and what a client is told when TLS is wrong.

A device and a GPU server talk across networks; without TLS the activations, the answers and the
broker password travelled in clear ("TLS and websockets are not supported yet").
"""

from __future__ import annotations

import shutil
import time

import pytest

from edgerun.broker import DEFAULT_MQTTS_PORT, BrokerTls, Mosquitto, broker_tls, parse_broker_url, redact_broker_url
from edgerun.errors import ConfigError, TransportError
from edgerun.transport import MqttClient

_HAVE_MOSQUITTO = bool(shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto"))
_HAVE_OPENSSL = bool(shutil.which("openssl"))


def needs_tls_broker(fn):
    """A real Mosquitto with a TLS listener on certificates openssl makes here."""
    skip = pytest.mark.skipif(not (_HAVE_MOSQUITTO and _HAVE_OPENSSL), reason="mosquitto or openssl not installed")
    return pytest.mark.integration(skip(fn))


@pytest.fixture
def pem(tmp_path):
    for name in ("ca.pem", "c.pem", "c.key", "my @ca.pem"):
        (tmp_path / name).write_text("x")
    return tmp_path


def test_mqtts_urls_default_to_port_8883_and_name_their_files(pem):
    assert parse_broker_url("mqtts://broker.example") == ("broker.example", DEFAULT_MQTTS_PORT)
    assert parse_broker_url(f"ssl://h:9000?ca={pem}/ca.pem") == ("h", 9000)
    assert broker_tls("mqtt://h:1883") is None
    assert broker_tls("mqtts://h") == BrokerTls()  # the system's trust store
    got = broker_tls(f"mqtts://u:pw@h:8883?ca={pem}/ca.pem&cert={pem}/c.pem&key={pem}/c.key")
    assert got == BrokerTls(f"{pem}/ca.pem", f"{pem}/c.pem", f"{pem}/c.key")


@pytest.mark.parametrize("query, message", [
    ("?ca={d}/ca.pem&insecure=1", r"unknown settings \['insecure'\]: an mqtts:// URL takes \?ca=CA.pem"),
    ("?ca={d}/nope.pem", r"ca=.*/nope.pem is not a file: give the path of the PEM file"),
    ("?ca=", r"give ca= once, with a file path"),
    ("?ca={d}/ca.pem&ca={d}/ca.pem", r"give ca= once"),
    ("?cert={d}/c.pem", r"a client certificate needs both cert= and key="),
])
def test_bad_tls_settings_are_refused_saying_what_to_give(pem, query, message):
    with pytest.raises(ConfigError, match=message):
        broker_tls("mqtts://h:8883" + query.format(d=pem))


def test_a_query_on_a_plain_url_is_refused(pem):
    with pytest.raises(ConfigError, match=r"has a query, which only an mqtts:// \(TLS\) URL takes"):
        parse_broker_url(f"mqtt://h:1883?ca={pem}/ca.pem")


def test_the_password_is_redacted_and_an_at_sign_in_a_path_is_not_taken_for_one(pem):
    url = f"mqtts://user:secret@h:8883?ca={pem}/my @ca.pem"
    assert redact_broker_url(url) == f"mqtts://user:***@h:8883?ca={pem}/my @ca.pem"
    assert redact_broker_url(f"mqtts://h:8883?ca={pem}/my @ca.pem") == f"mqtts://h:8883?ca={pem}/my @ca.pem"


def test_a_file_that_is_not_a_pem_certificate_is_a_config_error(pem):
    with pytest.raises(ConfigError, match=r"ca=.*/ca.pem is not a PEM CA certificate"):
        MqttClient(f"mqtts://127.0.0.1:8883?ca={pem}/ca.pem", "t")


@needs_tls_broker
def test_a_client_with_the_ca_connects_and_one_without_is_told_to_give_it():
    with Mosquitto(tls=True) as m:
        assert m.url.startswith(f"mqtts://127.0.0.1:{m.port}?ca=")
        c = MqttClient(m.url, "with-ca")
        c.connect()
        assert c.connected
        c.close()
        with pytest.raises(TransportError, match=r"presented a certificate this client does not trust .*"
                                                 r"give the CA that signed it in the URL, mqtts://host:port\?ca="):
            MqttClient(f"mqtts://127.0.0.1:{m.port}", "system-store").connect()


@needs_tls_broker
def test_plain_mqtt_to_a_tls_listener_fails_at_once_naming_mqtts():
    with Mosquitto(tls=True) as m:
        t0 = time.monotonic()
        with pytest.raises(TransportError, match=r"closed the connection before accepting it: does it listen with "
                                                 r"TLS\? then use mqtts://host:port\?ca=CA.pem"):
            MqttClient(f"mqtt://127.0.0.1:{m.port}", "plain").connect(timeout_s=30)
        assert time.monotonic() - t0 < 20  # it did not wait out the 30 s for a CONNACK


@needs_tls_broker
def test_a_broker_that_requires_client_certificates_takes_one_and_refuses_none():
    with Mosquitto(tls=True, require_client_cert=True) as m:
        assert "&cert=" in m.url and "&key=" in m.url
        c = MqttClient(m.url, "with-cert")
        c.connect()
        c.close()
        with pytest.raises(TransportError, match=r"closed the connection before accepting it: does it require a "
                                                 r"client certificate\? then add &cert=CLIENT.pem&key=CLIENT.key"):
            MqttClient(m.url_without_client_cert, "no-cert").connect(timeout_s=30)


def test_a_client_certificate_needs_a_tls_broker():
    with pytest.raises(ConfigError, match="require_client_cert=True needs tls=True"):
        Mosquitto(require_client_cert=True)


# -- bugs found by trying TLS as a user (each docstring says what went wrong before) -------------------
def _dev_certs(folder, **kw):
    from edgerun.tls_dev import make_dev_certs

    return make_dev_certs(folder, **kw)


def test_a_plus_in_a_file_name_stays_a_plus(tmp_path):
    """parse_qs read '+' as a space: ?ca=/etc/ssl/ca+intermediate.pem was "not a file" (…/ca intermediate.pem)."""
    (tmp_path / "ca+chain.pem").write_text("x")
    assert broker_tls(f"mqtts://h?ca={tmp_path}/ca+chain.pem").ca == f"{tmp_path}/ca+chain.pem"
    assert broker_tls(f"mqtts://h?ca={tmp_path}/ca%2Bchain.pem").ca == f"{tmp_path}/ca+chain.pem"


def test_a_hash_in_a_path_is_told_to_be_percent_encoded(tmp_path):
    """A '#' in a certificate path began a URL fragment and the URL was refused as having "a path"."""
    with pytest.raises(ConfigError, match=r"percent-encode .*%23"):
        broker_tls(f"mqtts://h?ca={tmp_path}/a#b.pem")


def test_a_relative_path_that_is_missing_names_where_it_was_looked_for(tmp_path, monkeypatch):
    """ca=certs/ca.pem "is not a file" did not say relative to what (the process's working directory)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"ca=certs/ca.pem is not a file \(looked for {tmp_path}/certs/ca.pem: a relative path is taken from the working directory\)"):
        broker_tls("mqtts://h?ca=certs/ca.pem")


@pytest.mark.parametrize("url", ["mqtts://u:p?ss@h:8883?ca=/x.pem", "mqtt://u:p?ss@h:1883",
                                 "mqtt://u:p#ss@h:1883", "mqtts://u:p/ss@h"])
def test_a_password_with_a_question_mark_is_not_shown_in_the_error(url):
    """redact_broker_url cut at the first '?' (the TLS query) before looking for the '@': a raw '?' in the
    password left "p?ss" in the ConfigError ("has a query" / "has a bad port")."""
    with pytest.raises(ConfigError) as exc:
        parse_broker_url(url)
    assert "ss@" not in str(exc.value) and "u:***@h" in str(exc.value)
    assert "percent-encode" in str(exc.value)


@pytest.mark.skipif(not _HAVE_OPENSSL, reason="openssl not installed")
def test_an_encrypted_client_key_is_a_config_error_not_a_pass_phrase_prompt(tmp_path):
    """OpenSSL asked "Enter PEM pass phrase:" on the terminal (twice), blocking a server started by hand,
    then failed with "[Errno 22] Invalid argument"."""
    import subprocess

    c = _dev_certs(tmp_path)
    enc = tmp_path / "enc.key"
    subprocess.run(["openssl", "pkey", "-in", str(c.client_key), "-aes256", "-passout", "pass:pw", "-out", str(enc)],
                   check=True, capture_output=True)
    with pytest.raises(ConfigError, match=r"key=.*enc.key is encrypted .*openssl pkey -in .*enc.key -out"):
        MqttClient(f"mqtts://127.0.0.1:8883?ca={c.ca}&cert={c.client_cert}&key={enc}", "t")


@pytest.mark.skipif(not _HAVE_OPENSSL, reason="openssl not installed")
def test_a_key_of_another_certificate_is_named_as_such(tmp_path):
    """A key that does not match the certificate was "not a PEM client certificate and its private key"."""
    c = _dev_certs(tmp_path)
    with pytest.raises(ConfigError, match=r"key=.*server.key is not the private key of cert=.*client.pem"):
        MqttClient(f"mqtts://127.0.0.1:8883?ca={c.ca}&cert={c.client_cert}&key={c.server_key}", "t")


@needs_tls_broker
def test_a_certificate_for_another_host_names_the_host_not_the_ca(tmp_path):
    """A certificate made for another name failed with "give the CA that signed it in the URL", though the
    CA was right: the user was sent after the wrong file."""
    _dev_certs(tmp_path, host="broker.example")  # SAN: broker.example, localhost; not 127.0.0.1
    with Mosquitto(tls=True, certs_dir=tmp_path) as m:
        with pytest.raises(TransportError, match=r"certificate of the MQTT broker at .* is not for '127.0.0.1' "
                                                 r".*connect by a name the certificate holds \(its subjectAltName\), "
                                                 r"or give the broker a certificate for 127.0.0.1") as exc:
            MqttClient(m.url, "by-ip").connect()
        assert "give the CA" not in str(exc.value)
        c = MqttClient(m.url.replace("127.0.0.1", "localhost"), "by-name")
        c.connect()
        c.close()


@needs_tls_broker
def test_an_expired_certificate_says_it_expired(tmp_path):
    """An expired broker certificate was reported as untrusted, "give the CA that signed it"."""
    _dev_certs(tmp_path, days=-1)
    with Mosquitto(tls=True, certs_dir=tmp_path) as m:
        with pytest.raises(TransportError, match=r"not valid now \(certificate has expired\): renew the broker's "
                                                 r"certificate .*check this machine's clock") as exc:
            MqttClient(m.url, "late").connect()
        assert "give the CA" not in str(exc.value)


@needs_tls_broker
def test_a_tls_broker_whose_process_died_starts_again_on_its_certificates():
    """start() after the mosquitto process died made a new temp dir and dropped the old one, certificates
    and all, but kept naming them: mosquitto failed "Unable to load CA certificates"."""
    with Mosquitto(tls=True) as m:
        url = m.url
        m._proc.kill()
        m._proc.wait()
        m.start()
        assert m.url.split("?")[1] == url.split("?")[1]  # the same files: clients keep their URL's CA
        c = MqttClient(m.url, "again")
        c.connect()
        c.close()


@needs_tls_broker
def test_certificates_in_a_folder_are_kept_and_reused(tmp_path):
    """Every Mosquitto(tls=True) made a new CA in a temp dir deleted on stop: a broker restarted on its
    port could never be trusted by the clients already holding the URL."""
    with Mosquitto(tls=True, certs_dir=tmp_path / "tls") as m:
        first, port = (tmp_path / "tls" / "ca.pem").read_bytes(), m.port
    assert (tmp_path / "tls" / "ca.pem").read_bytes() == first  # kept after stop
    with Mosquitto(tls=True, certs_dir=tmp_path / "tls", port=port) as m:
        assert (tmp_path / "tls" / "ca.pem").read_bytes() == first
        c = MqttClient(m.url, "reused")
        c.connect()
        c.close()


@needs_tls_broker
def test_a_client_whose_broker_came_back_with_another_ca_says_why_it_cannot_reconnect(caplog):
    """paho retried the TLS handshake forever without a word: a device kept saying "lost the broker ...
    reconnecting" while the broker was up with certificates it did not trust."""
    with Mosquitto(tls=True) as m:
        port = m.port
        c = MqttClient(m.url, "stays")
        c.connect()
    try:
        with Mosquitto(tls=True, port=port):  # new throwaway CA
            give_up = time.monotonic() + 30
            while not c.reconnect_error and time.monotonic() < give_up:
                time.sleep(0.1)
            assert "does not trust" in c.reconnect_error
            assert any("cannot reconnect" in r.getMessage() and "does not trust" in r.getMessage()
                       for r in caplog.records)
    finally:
        c.close()


@needs_tls_broker
def test_a_connection_closed_before_its_connack_is_not_logged_as_a_lost_broker(caplog):
    """A refused TLS client also logged "lost the broker ... reconnecting with backoff" while connect()
    was raising: it had never had the broker, and nothing reconnects."""
    with Mosquitto(tls=True, require_client_cert=True) as m:
        with pytest.raises(TransportError, match="closed the connection before accepting it"):
            MqttClient(m.url_without_client_cert, "no-cert").connect(timeout_s=30)
    assert not [r for r in caplog.records if "lost the broker" in r.getMessage()]


@pytest.mark.integration
@pytest.mark.skipif(not _HAVE_MOSQUITTO, reason="mosquitto not installed")
def test_a_plain_broker_that_is_down_is_unreachable_not_a_tls_listener_and_connects_once_up():
    """A guard for the early-close path (a close before the CONNACK fails at once): a plain broker that is
    down must still read "cannot reach", not "does it listen with TLS?", and one that came up connects."""
    from edgerun.broker import free_port

    port = free_port()
    with pytest.raises(TransportError, match="cannot reach the MQTT broker") as exc:
        MqttClient(f"mqtt://127.0.0.1:{port}", "down").connect()
    assert "closed the connection" not in str(exc.value)
    with Mosquitto(port=port) as m:
        c = MqttClient(m.url, "up")
        c.connect()
        assert c.connected
        c.close()


@pytest.mark.skipif(not _HAVE_OPENSSL, reason="openssl not installed")
def test_an_ipv6_broker_gets_a_bracketed_url_and_an_ip_subject_alt_name(tmp_path):
    """tls_url wrote mqtts://::1:PORT (no brackets: a bad port), and the certificate for ::1 named it
    DNS:::1, which no host name check matches."""
    import subprocess

    from edgerun.broker import tls_url

    assert parse_broker_url(tls_url("::1", 8884, BrokerTls())) == ("::1", 8884)
    c = _dev_certs(tmp_path, host="::1")
    san = subprocess.run(["openssl", "x509", "-in", str(c.server_cert), "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True, check=True).stdout
    assert "IP Address:0:0:0:0:0:0:0:1" in san
