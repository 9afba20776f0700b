"""Launch a private Mosquitto broker on a free loopback port.

The demo, the tests and the benchmarks need a real MQTT 5 broker but must never
touch the system service: ``Mosquitto`` writes its own config file into a temp
directory, starts ``mosquitto -c <that file>`` as a child process and stops it
again (also at interpreter exit, so a failed test never leaks a broker).

Example:
    >>> from edgerun.broker import Mosquitto
    >>> with Mosquitto() as broker:          # doctest: +SKIP
    ...     print(broker.url)                 # mqtt://127.0.0.1:40123

Broker URLs (``mqtt://``, ``mqtts://`` with TLS) are read in ``edgerun.broker_url``; its names are
also importable from here.
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

# the URL functions live in broker_url; importable from here as before (tests, benchmarks, users)
from edgerun.broker_url import (DEFAULT_MQTT_PORT, DEFAULT_MQTTS_PORT, TLS_KEYS, BrokerTls,  # noqa: F401
                                broker_credentials, broker_tls, parse_broker_url, redact_broker_url, tls_url)
from edgerun.errors import ConfigError, UserError
from edgerun.procs import die_with_parent

_INSTALL_HINT = "install it: sudo apt-get install -y mosquitto"
FIXED_PORT_ATTEMPTS = 4   # Mosquitto(port=P) tries P this often, FIXED_PORT_PAUSE_S apart, while it is taken
FIXED_PORT_PAUSE_S = 0.5


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
        tls: listen with TLS only, on a throwaway CA and certificate (``edgerun.tls_dev``); ``url`` is
            then ``mqtts://127.0.0.1:PORT?ca=...`` (files in the broker's temp directory).
        require_client_cert: with ``tls``, refuse clients without a certificate of that CA (``url`` then
            carries the client's ``cert`` and ``key`` too; ``url_without_client_cert`` lacks them).
        certs_dir: with ``tls``, keep the certificates in this folder instead of the temp directory:
            made there on the first start, reused by every later one (a broker restarted on its port
            is then still trusted by the clients holding its URL), never deleted.

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
        tls: bool = False,
        require_client_cert: bool = False,
        certs_dir: str | Path | None = None,
    ) -> None:
        if require_client_cert and not tls:
            raise ConfigError("require_client_cert=True needs tls=True")
        if certs_dir is not None and not tls:
            raise ConfigError("certs_dir needs tls=True")
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
        self.tls, self.require_client_cert = bool(tls), bool(require_client_cert)
        self.certs_dir = Path(certs_dir).expanduser().absolute() if certs_dir is not None else None
        self.certs = None  # tls_dev.DevCerts once started with tls
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    # -- lifecycle ---------------------------------------------------------
    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT`` of the running broker (``mqtts://...?ca=...`` with TLS)."""
        if not self.tls:
            return f"mqtt://{self.host}:{self.port}"
        if self.certs is None:
            raise UserError("the TLS broker is not running (a stopped one deleted its throwaway certificates; "
                            "certs_dir= keeps them): call start() or use `with Mosquitto(tls=True) as b:`")
        client = (str(self.certs.client_cert), str(self.certs.client_key)) if self.require_client_cert else (None, None)
        return tls_url(self.host, self.port, BrokerTls(str(self.certs.ca), *client))

    @property
    def url_without_client_cert(self) -> str:
        """The TLS URL with the CA only (a client the broker refuses when it requires certificates)."""
        return tls_url(self.host, self.port, BrokerTls(str(self.certs.ca) if self.certs else None))

    @property
    def log_path(self) -> Path:
        """The broker's log file (inside its temp directory)."""
        if self._dir is None:
            raise UserError("the broker was never started: call start() or use `with Mosquitto() as b:`")
        return Path(self._dir.name) / "mosquitto.log"

    @property
    def returncode(self) -> int | None:
        """The broker process's exit status once it ended (None while it runs or before it started)."""
        return None if self._proc is None else self._proc.poll()

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
        if self._dir is None:  # else its process died: start again in it, on the same certificates
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
        if self.tls:
            from edgerun.tls_dev import dev_certs

            if self.certs is None:
                self.certs = dev_certs(self.certs_dir or root / "tls", self.host)
            lines += [f"cafile {self.certs.ca}", f"certfile {self.certs.server_cert}", f"keyfile {self.certs.server_key}",
                      f"require_certificate {'true' if self.require_client_cert else 'false'}"]
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
            self.certs = None
