"""Launch a private Mosquitto broker on a free loopback port.

The demo, the tests and the benchmarks need a real MQTT 5 broker but must never
touch the system service: ``Mosquitto`` writes its own config file into a temp
directory, starts ``mosquitto -c <that file>`` as a child process and stops it
again (also at interpreter exit, so a failed test never leaks a broker).

Example:
    >>> from edgerun.broker import Mosquitto
    >>> with Mosquitto() as broker:          # doctest: +SKIP
    ...     print(broker.url)                 # mqtt://127.0.0.1:40123
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edgerun.errors import ConfigError, UserError
from edgerun.procs import die_with_parent

DEFAULT_MQTT_PORT = 1883
_INSTALL_HINT = "install it: sudo apt-get install -y mosquitto"
_SCHEMES = ("mqtt", "tcp")
FIXED_PORT_ATTEMPTS = 4   # Mosquitto(port=P) tries P this often, FIXED_PORT_PAUSE_S apart, while it is taken
FIXED_PORT_PAUSE_S = 0.5


def parse_broker_url(url: str) -> tuple[str, int]:
    """Split a broker URL into ``(host, port)``.

    Accepts ``mqtt://host:port``, ``tcp://host:port``, ``host:port`` and ``host``
    (port 1883), each with an optional ``USER:PASSWORD@`` before the host (see
    ``broker_credentials``).

    Args:
        url: the broker address as a user typed it.

    Returns:
        ``(host, port)``.

    Raises:
        ConfigError: the URL has another scheme, no host, or a bad port.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"broker URL {url!r} is empty: use e.g. mqtt://127.0.0.1:1883")
    text = url.strip()
    url = redact_broker_url(text)  # the errors below quote it without its password
    if "://" not in text:
        text = "mqtt://" + text
    parts = urlsplit(text)
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"broker URL {url!r} has scheme {parts.scheme!r}: use mqtt://host:port "
            "(TLS and websockets are not supported yet)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"broker URL {url!r} has a path or query: use mqtt://host:port")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"broker URL {url!r} has a bad port: use a number in 1..65535") from None
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r} has no host: use e.g. mqtt://127.0.0.1:1883")
    if port == 0:
        raise ConfigError(f"broker URL {url!r} has port 0: use a number in 1..65535")
    return parts.hostname, port if port is not None else DEFAULT_MQTT_PORT


def broker_credentials(url: str) -> tuple[str | None, str | None]:
    """``(user, password)`` from ``mqtt://USER:PASSWORD@host:port`` (percent-decoded), or Nones."""
    text = url.strip() if "://" in url else "mqtt://" + url.strip()
    parts = urlsplit(text)
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return user, password


def redact_broker_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    if "@" not in url:
        return url
    head, _, rest = url.rpartition("@")
    scheme, sep, userinfo = head.rpartition("://")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}{':***' if ':' in userinfo else ''}@{rest}"


def find_mosquitto() -> str:
    """Path of the mosquitto binary (``/usr/sbin/mosquitto`` or on PATH).

    Raises:
        UserError: mosquitto is not installed.
    """
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("mosquitto")
    if found:
        return found
    raise UserError(f"the Mosquitto MQTT broker was not found: {_INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class Mosquitto:
    """A private Mosquitto broker on ``127.0.0.1:<free port>`` (context manager).

    Args:
        max_packet_size: largest MQTT packet the broker accepts, in bytes
            (0 = Mosquitto's default, 256 MiB).
        port: listen on this port instead of a free one.
        start_timeout_s: how long to wait for the port to accept connections.
        binary: path of the mosquitto executable (default: found on the system).

    Raises:
        UserError: mosquitto is missing, or did not start (the message holds the log tail).
    """

    def __init__(
        self,
        *,
        max_packet_size: int = 0,
        port: int | None = None,
        start_timeout_s: float = 10.0,
        binary: str | None = None,
    ) -> None:
        if max_packet_size < 0:
            raise ConfigError(f"max_packet_size={max_packet_size} is negative: use 0 (default) or a size in bytes")
        if start_timeout_s <= 0:
            raise ConfigError(f"start_timeout_s={start_timeout_s} must be > 0")
        self.max_packet_size = int(max_packet_size)
        self.host = "127.0.0.1"
        self.port = int(port) if port else 0
        self._fixed_port = port is not None
        self.start_timeout_s = float(start_timeout_s)
        self.binary = binary or find_mosquitto()
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    # -- lifecycle ---------------------------------------------------------
    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT`` of the running broker."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The broker's log file (inside its temp directory)."""
        if self._dir is None:
            raise UserError("the broker was never started: call start() or use `with Mosquitto() as b:`")
        return Path(self._dir.name) / "mosquitto.log"

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "Mosquitto":
        """Start the broker and wait until its port accepts connections.

        Returns:
            self, running.

        Raises:
            UserError: it did not start within ``start_timeout_s``.
        """
        if self.running:
            return self
        self._dir = tempfile.TemporaryDirectory(prefix="edgerun-mosquitto-")
        # A free port can be taken between our probe and mosquitto's bind: retry (a new port; a fixed
        # one, after a pause: a client reconnecting to it may hold it for a moment as its own source port).
        attempts = FIXED_PORT_ATTEMPTS if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = free_port(self.host)
            elif attempt:
                time.sleep(FIXED_PORT_PAUSE_S)
            if port_open(self.host, self.port):
                # Someone else listens there: waiting for "the port accepts" would lie.
                if attempt + 1 < attempts:
                    continue
                self._cleanup_dir()
                raise UserError(f"port {self.port} on {self.host} is already in use: pick another port")
            try:
                self._spawn()
                ready = self._wait_ready()
            except BaseException:  # Ctrl-C / SIGTERM while it starts: no `with` exit will stop it
                self._terminate()
                self._cleanup_dir()
                raise
            if ready:
                atexit.register(self.stop)
                return self
            self._terminate()
            if attempt + 1 < attempts and "Address already in use" in self.log_tail():
                continue
            break
        tail = self.log_tail()
        self._cleanup_dir()
        raise UserError(
            f"mosquitto did not start on {self.host}:{self.port} within {self.start_timeout_s:.0f} s; "
            f"its log ends with:\n{tail}\nCheck that the port is free and mosquitto works "
            f"(`{self.binary} -v`)."
        )

    def stop(self) -> None:
        """Stop the broker (terminate, then kill) and remove its temp directory."""
        try:
            atexit.unregister(self.stop)
        except Exception:  # pragma: no cover - interpreter shutting down
            pass
        self._terminate()
        self._cleanup_dir()

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the broker log ('' if none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, UserError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ---------------------------------------------------------
    def _write_config(self) -> Path:
        assert self._dir is not None
        root = Path(self._dir.name)
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            f"log_dest file {root / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Without it, Nagle + delayed ACK add ~40 ms per hop to small QoS 1 messages.
            "set_tcp_nodelay true",
        ]
        if self.max_packet_size:
            lines.append(f"max_packet_size {self.max_packet_size}")
        if os.geteuid() == 0:
            # Started by root, mosquitto switches to the `mosquitto` user, and a change of user
            # clears the parent-death signal that ends it with us (procs.die_with_parent): it
            # then outlived a `kill -9` of its command. It keeps its starter's identity instead,
            # as any other child process does (it listens on loopback only).
            lines.append("user root")
        conf = root / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def _spawn(self) -> None:
        conf = self._write_config()
        self._proc = subprocess.Popen(
            die_with_parent([self.binary, "-c", str(conf)]),  # gone with us, even after kill -9
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal goes to us, we stop it
        )

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                return False
            if port_open(self.host, self.port):
                return True
            time.sleep(0.02)
        return False

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _cleanup_dir(self) -> None:
        if self._dir is not None and not self.running:
            self._dir.cleanup()
            self._dir = None
