"""The client side of TLS to the broker: the context that checks its certificate (and presents ours), and
what a failed handshake means for the user (``transport.MqttClient`` uses both)."""

from __future__ import annotations

import ssl
from collections.abc import Callable

from edgerun.errors import ConfigError


def tls_context(tls, url: str, on_handshake_error: Callable[[ssl.SSLError], None] | None = None) -> ssl.SSLContext:
    """A client context that checks the broker's certificate and host name (the CA of ``tls.ca``, else the
    system's trust store) and presents ``tls.cert`` when given; ``on_handshake_error`` sees every failed
    handshake, also those of paho's reconnects in its own thread.

    Raises:
        ConfigError: a file is not a PEM certificate / key, the key is encrypted or does not match the
            certificate.
    """
    try:
        ctx = ssl.create_default_context(cafile=tls.ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"broker URL {url}: ca={tls.ca} is not a PEM CA certificate ({exc})") from None
    if tls.cert is not None:
        try:  # without a password callback OpenSSL asks for a pass phrase on the terminal, and waits
            ctx.load_cert_chain(tls.cert, tls.key, password=_no_password)
        except _EncryptedKey:
            raise ConfigError(f"broker URL {url}: key={tls.key} is encrypted (it needs a pass phrase, which a URL "
                              f"does not carry): decrypt it once, openssl pkey -in {tls.key} -out CLIENT.key, keep "
                              "that file private, and give key=CLIENT.key") from None
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise ConfigError(f"broker URL {url}: key={tls.key} is not the private key of cert={tls.cert}: "
                                  "give the key made with that certificate") from None
            raise ConfigError(f"broker URL {url}: cert={tls.cert} / key={tls.key} are not a PEM client certificate "
                              f"and its private key ({exc})") from None
        except OSError as exc:
            raise ConfigError(f"broker URL {url}: cert={tls.cert} / key={tls.key} cannot be read ({exc})") from None
    if on_handshake_error is not None:
        class _Socket(ssl.SSLSocket):
            def do_handshake(self, *args, **kwargs):
                try:
                    return super().do_handshake(*args, **kwargs)
                except ssl.SSLError as exc:
                    on_handshake_error(exc)
                    raise

        ctx.sslsocket_class = _Socket
    return ctx


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    raise _EncryptedKey


# X509_V_ERR_* codes that are not "the CA is unknown": telling the user to give the CA would mislead
_HOST_MISMATCH = (62, 64)      # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
_NOT_VALID_NOW = (9, 10, 13, 14)  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED, bad notBefore / notAfter fields


def tls_problem(exc: ssl.SSLError, url: str, host: str) -> str:
    """What went wrong in a TLS handshake with the broker at ``url``, and what to do about it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message
        if exc.verify_code in _HOST_MISMATCH:
            return (f"TLS: the certificate of the MQTT broker at {url} is not for {host!r} ({why}): connect by a "
                    f"name the certificate holds (its subjectAltName), or give the broker a certificate for {host}")
        if exc.verify_code in _NOT_VALID_NOW:
            return (f"TLS: the MQTT broker at {url} presented a certificate that is not valid now ({why}): renew "
                    "the broker's certificate (or its CA's), or, if it should be valid, check this machine's clock "
                    "(`date`)")
        return (f"TLS: the MQTT broker at {url} presented a certificate this client does not trust ({why}): give "
                "the CA that signed it in the URL, mqtts://host:port?ca=/path/ca.pem")
    return (f"TLS handshake with the MQTT broker at {url} failed ({exc.reason or exc}): does the broker listen "
            "with TLS on that port (else use mqtt://), and does it require a client certificate "
            "(&cert=CLIENT.pem&key=CLIENT.key)?")
