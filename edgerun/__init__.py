"""edgerun: split inference for the edge.

A model is cut in two: the front half runs on the device on a native C++ engine,
the back half on a server, and the two talk over MQTT 5.

Stages: ``edgerun.exporters.export`` (needs torch) -> bundle on disk ->
``edgerun.Device(bundle).infer(x)`` on the device -> ``edgerun.serve(bundle, broker)``
on the server. Importing ``edgerun`` never imports torch.
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
