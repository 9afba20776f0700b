"""A Mosquitto run on a config file of the test's own (passwords, ACLs: what edgerun.broker.Mosquitto does not
write), on a free loopback port, stopped after the block."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgerun.broker import find_mosquitto, free_port, port_open
from edgerun.procs import die_with_parent


@contextmanager
def configured_mosquitto(tmp_path: Path, conf: str) -> Iterator[int]:
    """Mosquitto with ``conf`` (lines after its listener) on a free port; yields the port once it listens."""
    port = free_port()
    path = tmp_path / f"mosquitto-{port}.conf"
    path.write_text(f"listener {port} 127.0.0.1\n{conf}")
    proc = subprocess.Popen(die_with_parent([find_mosquitto(), "-c", str(path)]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if port_open("127.0.0.1", port):
                break
            threading.Event().wait(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def acl_mosquitto(tmp_path: Path, acl: str) -> Iterator[str]:
    """A Mosquitto whose anonymous clients get only what the ACL file text ``acl`` allows; yields its URL."""
    (tmp_path / "acl").write_text(acl)
    with configured_mosquitto(tmp_path, f"allow_anonymous true\nacl_file {tmp_path / 'acl'}\nuser root\n") as port:
        yield f"mqtt://127.0.0.1:{port}"
