"""A batch of model inputs: one array (a single-input model) or ``{input name: array}`` (several inputs).

Every input of a batch holds the same number of samples on axis 0. The exporter, ``verify``,
``edgerun run`` and the device slice, stack and feed such batches with these helpers, so a
single-input model keeps its plain array and a model with a camera image and a joint state
(two inputs) goes through the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np

from edgerun.errors import ConfigError

Inputs = Union[np.ndarray, Mapping[str, np.ndarray]]


def n_samples(x: Inputs) -> int:
    """Samples in the batch (axis 0 of each input)."""
    if isinstance(x, np.ndarray):
        return len(x)
    return len(next(iter(x.values()))) if x else 0


def rows(x: Inputs, start: int, stop: int) -> Inputs:
    """Samples ``start:stop`` of every input."""
    if isinstance(x, np.ndarray):
        return x[start:stop]
    return {k: v[start:stop] for k, v in x.items()}


def as_feeds(x: Inputs, names: Sequence[str]) -> dict[str, np.ndarray]:
    """``{name: array}`` for a session whose inputs are ``names`` (an array feeds the only one).

    Raises:
        ConfigError: an array for a session with several inputs, or a name missing from the dict.
    """
    if isinstance(x, np.ndarray):
        if len(names) != 1:
            raise ConfigError(f"this model takes {len(names)} inputs {list(names)}: pass them as a dict by name")
        return {names[0]: x}
    missing = [n for n in names if n not in x]
    if missing:
        raise ConfigError(f"missing inputs {missing}; the model takes {list(names)}")
    return {n: x[n] for n in names}


def float32(x: Inputs) -> Inputs:
    """Each input as a contiguous float32 array."""
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x, dtype=np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in x.items()}


def with_passthrough(outs: dict[str, np.ndarray], x: Inputs, names: Sequence[str], *,
                     copy: bool = False) -> dict[str, np.ndarray]:
    """``outs`` (a front half's outputs) with the model inputs ``names`` that pass through the cut added as they
    came (float32; ``copy``: fresh arrays, for a caller that writes into the crossing). Returns ``outs``."""
    for n in names:
        a = x[n] if isinstance(x, Mapping) else x
        outs[n] = np.array(a, dtype=np.float32) if copy else np.ascontiguousarray(a, dtype=np.float32)
    return outs


def concat(parts: Sequence[Inputs]) -> Inputs:
    """Batches stacked on axis 0 (all arrays, or all dicts with the same names)."""
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
