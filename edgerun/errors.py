"""One error hierarchy for edgerun.

``EdgerunError`` is the root. Its subclasses split "your input is wrong, here is
what to do" (``UserError`` and its children) from "this is a bug in edgerun"
(``InternalError``). Every message says what went wrong *and* what to do next.
"""

from __future__ import annotations


class EdgerunError(Exception):
    """Base of every error edgerun raises on purpose."""


class UserError(EdgerunError):
    """The input (a file, an option, a frame, the environment) is wrong; the message says what to do."""


class ConfigError(UserError):
    """An option or config value is invalid."""


class ExportError(UserError):
    """A model cannot be exported as asked (unsupported graph, bad cut, ...)."""


class BundleError(UserError):
    """A bundle is missing, corrupted, of an unsupported version, or does not match."""


class UnsupportedOpError(UserError):
    """The native engine cannot run an op of this graph; ``--engine ort`` can."""


class FrameError(UserError):
    """A wire frame is malformed, truncated, too large, corrupted or for another bundle."""

    def __init__(self, message: str, code: str = "malformed") -> None:
        super().__init__(message)
        self.code = code


class TransportError(UserError):
    """The broker or the server cannot be reached, or a request timed out."""


class InternalError(EdgerunError):
    """A broken invariant inside edgerun: please report it with the message."""


def from_core_error(exc: Exception) -> EdgerunError:
    """Map an ``edgerun._core.CoreError(code, message)`` onto the hierarchy above."""
    code, message = (exc.args + (0, ""))[:2] if exc.args else (0, str(exc))
    group = int(code) >> 8
    if int(code) == 0x0203:
        return UnsupportedOpError(message)
    if group == 0x01:
        return ConfigError(message)
    if group == 0x02:
        return BundleError(message)
    if group == 0x03:
        return FrameError(message)
    if group == 0x04:
        return UserError(message)
    return InternalError(message)
