"""Shared by the bad-input tests of the command line: run it in-process, and a port nothing listens on."""

from __future__ import annotations

import socket

from typer.testing import CliRunner

from edgerun.cli import app


def run_cli(*args: str):
    """``edgerun ARGS`` in this process; fails the test on a traceback (any exception but SystemExit)."""
    r = CliRunner().invoke(app, list(args))
    # A traceback shows up as an exception other than SystemExit (typer.Exit ends as SystemExit).
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port
