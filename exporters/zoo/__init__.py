"""The model zoo: real models with real data, loadable offline by name.

Each model lives in its own file in this package and registers a builder with
``@register("name")``; adding a model is adding a file (modules here are discovered
on first use, nothing else to edit).

Example:
    >>> from edgerun.exporters import zoo
    >>> m = zoo.load("zoo:digits-cnn")          # trains once (~10 s), then cached
    >>> x, y = m.eval_data(limit=8)
    >>> m.module(torch.from_numpy(x)).argmax(1)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from edgerun.errors import ConfigError

ZOO_PREFIX = "zoo:"
METRICS = ("top1", "top1_agreement", "action_mae")  # action_mae: regression (control policies)


@dataclass
class ZooModel:
    """A ready-to-run zoo model and the data to evaluate and calibrate it.

    Attributes:
        name: registry name, e.g. ``"digits-cnn"``.
        module: the torch model, eval mode, weights loaded.
        example: a batch-1 float32 input, preprocessed (for tracing).
        metric: ``"top1"`` (labelled data) or ``"top1_agreement"`` (agreement with
            the fp32 whole model, where no labels exist).
        input_name: name to give the graph input, e.g. ``"image"``.
        class_names: one name per output class, when known.
    """

    name: str
    module: torch.nn.Module
    example: torch.Tensor
    metric: str
    input_name: str
    _eval: Callable[[int | None], tuple[np.ndarray, np.ndarray | None]] = field(repr=False)
    _calib: Callable[[int], np.ndarray] = field(repr=False)
    class_names: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"zoo model {self.name}: metric {self.metric!r} is not one of {METRICS}")

    def eval_data(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Held-out inputs (float32 NCHW, preprocessed) and int64 labels, or None labels.

        Args:
            limit: at most this many samples; None for all.

        Raises:
            ConfigError: negative ``limit``.
        """
        if limit is not None and limit < 0:
            raise ConfigError(f"limit must be >= 0 or None, got {limit}")
        return self._eval(limit)

    def calib_data(self, n: int = 64) -> np.ndarray:
        """Up to ``n`` calibration inputs, never taken from the eval data.

        Raises:
            ConfigError: ``n`` < 1.
        """
        if n < 1:
            raise ConfigError(f"calibration needs n >= 1 samples, got {n}")
        return self._calib(n)


_REGISTRY: dict[str, Callable[[], ZooModel]] = {}
_discovered = False


def register(name: str) -> Callable[[Callable[[], ZooModel]], Callable[[], ZooModel]]:
    """Decorator: register a zero-argument builder returning a ``ZooModel`` under ``name``."""

    def deco(fn: Callable[[], ZooModel]) -> Callable[[], ZooModel]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ConfigError(f"zoo model {name!r} is registered twice; rename one")
        _REGISTRY[name] = fn
        return fn

    return deco


def _discover() -> None:
    # Import every module of this package once so their @register calls run.
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    _discovered = True


def names() -> list[str]:
    """The registered zoo model names, sorted."""
    _discover()
    return sorted(_REGISTRY)


def check_name(name: str) -> str:
    """The registry key of ``name`` (``"zoo:"`` optional); ConfigError listing the known ones if unknown."""
    key = name[len(ZOO_PREFIX):] if name.startswith(ZOO_PREFIX) else name
    _discover()
    if key not in _REGISTRY:
        raise ConfigError(
            f"unknown zoo model {name!r}; known: {', '.join(sorted(_REGISTRY))} "
            f"(optionally prefixed with {ZOO_PREFIX!r})"
        )
    return key


def load(name: str) -> ZooModel:
    """Build a zoo model by name (``"digits-cnn"`` or ``"zoo:digits-cnn"``).

    Args:
        name: a name from ``names()``, optionally prefixed with ``"zoo:"``.

    Returns:
        The ``ZooModel``, module in eval mode with weights loaded.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
        UserError: the model's weights or data cannot be found or fetched.
    """
    model = _REGISTRY[check_name(name)]()
    model.module.eval()
    return model


__all__ = ["ZooModel", "check_name", "load", "names", "register", "ZOO_PREFIX"]
