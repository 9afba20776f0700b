"""What a broker URL says: host and port, login, TLS settings, and its form for messages.

Broker URLs: ``mqtt://[USER:PASSWORD@]host[:port]`` (port 1883), or with TLS
``mqtts://host[:port][?ca=CA.pem][&cert=CLIENT.pem&key=CLIENT.key]`` (port 8883): ``ca`` is the
CA that signed the broker's certificate (default: the system's trust store), ``cert`` / ``key``
the client's own certificate for a broker that requires one. The broker's certificate is always
checked, its host name included (``transport.MqttClient``). Every client of the project (device,
server, LLM device, bench) reads its URL through these functions.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from edgerun.errors import ConfigError

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883
_PLAIN_SCHEMES = ("mqtt", "tcp")
_TLS_SCHEMES = ("mqtts", "ssl")
_SCHEMES = _PLAIN_SCHEMES + _TLS_SCHEMES
TLS_KEYS = ("ca", "cert", "key")  # the query of an mqtts:// URL


@dataclass(frozen=True)
class BrokerTls:
    """TLS settings of an ``mqtts://`` broker URL (files checked to exist when parsed)."""

    ca: str | None = None    # PEM CA bundle that signed the broker's certificate; None: the system's trust store
    cert: str | None = None  # PEM client certificate, for a broker that requires one
    key: str | None = None   # its private key


def parse_broker_url(url: str) -> tuple[str, int]:
    """Split a broker URL into ``(host, port)``.

    Accepts ``mqtt://host:port``, ``tcp://host:port``, ``host:port`` and ``host``
    (port 1883), each with an optional ``USER:PASSWORD@`` before the host (see
    ``broker_credentials``); ``mqtts://`` / ``ssl://`` (port 8883) with the TLS query of
    ``broker_tls``.

    Args:
        url: the broker address as a user typed it.

    Returns:
        ``(host, port)``.

    Raises:
        ConfigError: the URL has another scheme, no host, a bad port, a path, or a query that is
            not a TLS setting of an ``mqtts://`` URL.
    """
    parts, url = _split(url)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"broker URL {url!r} has a bad port: use a number in 1..65535") from None
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r} has no host: use e.g. mqtt://127.0.0.1:1883")
    if port == 0:
        raise ConfigError(f"broker URL {url!r} has port 0: use a number in 1..65535")
    default = DEFAULT_MQTTS_PORT if parts.scheme in _TLS_SCHEMES else DEFAULT_MQTT_PORT
    return parts.hostname, port if port is not None else default


def broker_tls(url: str) -> BrokerTls | None:
    """The TLS settings of an ``mqtts://host:port?ca=...&cert=...&key=...`` URL, None for a plain one.

    Raises:
        ConfigError: a setting is unknown, repeated or empty, a file does not exist, or only one of
            ``cert`` / ``key`` is given.
    """
    parts, url = _split(url)
    if parts.scheme not in _TLS_SCHEMES:
        return None
    # A '+' in a file name is a plus, not a space (parse_qs reads HTML forms): ca+chain.pem stays so.
    query = parse_qs(parts.query.replace("+", "%2B"), keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(query) - set(TLS_KEYS))
    if unknown:
        raise ConfigError(f"broker URL {url!r} has unknown settings {unknown}: an mqtts:// URL takes "
                          "?ca=CA.pem (the CA that signed the broker's certificate) and &cert=CLIENT.pem&key=CLIENT.key "
                          "(a client certificate, for a broker that requires one)")
    got: dict[str, str] = {}
    for k, values in query.items():
        if len(values) != 1 or not values[0]:
            raise ConfigError(f"broker URL {url!r}: give {k}= once, with a file path")
        path = Path(values[0]).expanduser()
        if not path.is_file():
            where = "" if path.is_absolute() else f" (looked for {path.absolute()}: a relative path is taken " \
                                                  "from the working directory)"
            what = "a folder" if path.is_dir() else "not a file"
            raise ConfigError(f"broker URL {url!r}: {k}={values[0]} is {what}{where}: give the path of the PEM file")
        got[k] = str(path)
    if ("cert" in got) != ("key" in got):
        raise ConfigError(f"broker URL {url!r}: a client certificate needs both cert= and key= (the PEM certificate "
                          "and its private key)")
    return BrokerTls(got.get("ca"), got.get("cert"), got.get("key"))


def _split(url: str):
    """``urlsplit`` of a broker URL with its scheme, path and query checked; and the URL for messages."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"broker URL {url!r} is empty: use e.g. mqtt://127.0.0.1:1883")
    text = url.strip()
    url = redact_broker_url(text)  # the errors quote it without its password
    if "://" not in text:
        text = "mqtt://" + text
    parts = urlsplit(text)
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"broker URL {url!r} has scheme {parts.scheme!r}: use mqtt://host:port, or mqtts://host:port for TLS "
            "(websockets are not supported)"
        )
    if _userinfo_span(text) and any(ch in text[slice(*_userinfo_span(text))] for ch in "/?#"):
        raise ConfigError(f"broker URL {url!r}: its user or password holds '/', '?' or '#': percent-encode them "
                          "(%2F, %3F, %23; '@' is %40, ':' in the user %3A)")
    if "#" in text.partition("?")[2] and parts.scheme in _TLS_SCHEMES:
        raise ConfigError(f"broker URL {url!r}: '#' in a file path starts a URL fragment: percent-encode it as %23")
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigError(f"broker URL {url!r} has a path: use mqtt://host:port")
    if parts.query and parts.scheme in _PLAIN_SCHEMES:
        raise ConfigError(f"broker URL {url!r} has a query, which only an mqtts:// (TLS) URL takes "
                          "(?ca=CA.pem&cert=CLIENT.pem&key=CLIENT.key): use mqtt://host:port, or mqtts://")
    return parts, url


def tls_url(host: str, port: int, tls: BrokerTls) -> str:
    """``mqtts://host:port?ca=...`` for these settings (paths percent-encoded)."""
    q = "&".join(f"{k}={quote(v, safe='/')}" for k, v in (("ca", tls.ca), ("cert", tls.cert), ("key", tls.key)) if v)
    return f"mqtts://{_url_host(host)}:{port}" + (f"?{q}" if q else "")


def _url_host(host: str) -> str:
    """``host`` as it goes in a URL: an IPv6 address in brackets."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def broker_credentials(url: str) -> tuple[str | None, str | None]:
    """``(user, password)`` from ``mqtt://USER:PASSWORD@host:port`` (percent-decoded), or Nones."""
    text = url.strip() if "://" in url else "mqtt://" + url.strip()
    parts = urlsplit(text)
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return user, password


def redact_broker_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    span = _userinfo_span(url)
    if span is None:
        return url
    start, end = span
    user, colon, _ = url[start:end].partition(":")
    return f"{url[:start]}{user}{':***' if colon else ''}{url[end:]}"


_QUERY_START = re.compile(r"\?[A-Za-z0-9_]*=")


def _userinfo_span(url: str) -> tuple[int, int] | None:
    """Where ``USER[:PASSWORD]`` sits in ``url`` (before its last '@' ahead of the TLS query), or None.

    Not urlsplit: a password typed with a raw '?', '/' or '#' must still be hidden in the error that
    refuses it, and a file path in the query may hold an '@' that is no password's end.
    """
    start = url.find("://")
    start = 0 if start < 0 else start + 3
    q = _QUERY_START.search(url, start)
    at = url.rfind("@", start, q.start() if q else len(url))
    return (start, at) if at >= 0 else None
