"""Host-side stages of edgerun: trace -> cuts -> split -> native graph -> bundle.

Needs torch (``pip install edgerun[export]``); installed as ``edgerun.exporters``.

Example:
    >>> from edgerun.exporters import export, ExportConfig        # doctest: +SKIP
    >>> bundle = export("zoo:digits-cnn", ExportConfig(), "bundles/digits")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["export", "ExportConfig", "trace_model"]


def __getattr__(name: str) -> Any:
    # Lazy: `import edgerun.exporters.zoo` must not pay for the whole exporter.
    if name in __all__:
        from edgerun.exporters import pipeline as _export_mod

        return getattr(_export_mod, name)
    raise AttributeError(name)
