"""edgerun: split inference for the edge.

A model is cut in two: the front half runs on the device on a native C++ engine,
the back half on a server, and the two talk over MQTT 5.

Stages: ``edgerun.exporters.export`` (needs torch) -> bundle on disk ->
``edgerun.Device(bundle, broker=url).infer(x)`` on the device -> ``edgerun.serve(bundle, url)``
on the server. Importing ``edgerun`` never imports torch, and each name below loads its module
only when first used (a device does not load the server, a server not the native engine).
"""

from __future__ import annotations

__version__ = "0.1.0"

from edgerun.errors import (  # noqa: F401
    BundleError,
    ConfigError,
    EdgerunError,
    ExportError,
    FrameError,
    InternalError,
    TransportError,
    UnsupportedOpError,
    UserError,
)

# The public API, loaded on first use: name -> module that defines it.
_API = {
    "Bundle": "edgerun.bundle",
    "Device": "edgerun.device",
    "Result": "edgerun.result",
    "serve": "edgerun.server",
    "serve_many": "edgerun.multi_server",  # not edgerun.serve_many: a submodule of that name would shadow it
    "ServerStats": "edgerun.server",
    "VerifyReport": "edgerun.verify",  # the check itself: edgerun.verify.verify (module and function share the name)
    "Mosquitto": "edgerun.broker",
    "LlmDevice": "edgerun.llm_device",
    "Generation": "edgerun.llm_device",
    "ToolSelector": "edgerun.tools",
}

__all__ = sorted(_API) + ["BundleError", "ConfigError", "EdgerunError", "ExportError", "FrameError",
                          "InternalError", "TransportError", "UnsupportedOpError", "UserError"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'edgerun' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
