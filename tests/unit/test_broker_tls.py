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
