"""A user's own data for a model file (``edgerun export model.py:make --data data.npz``).

Without it a model file is calibrated and measured on its example plus Gaussian noise, which says
little about its real inputs: quantization ranges, the codec's budget, early-exit heads and the
reported accuracy all came from noise. With ``--data`` they come from the user's samples, split once
(seeded) into calibration and held-out evaluation samples that never overlap.

The file (``np.savez``): ``inputs`` (one input) or ``inputs.<name>`` for each input of forward(),
samples on axis 0; optionally ``labels``: integer class ids ``[N]`` (metric: top-1 accuracy) or
float targets shaped like the model's output (metric: mean absolute error). Without labels the
metric is the split's agreement with the whole fp32 model on the held-out samples.

It offers the data interface of a zoo model (``eval_data``, ``calib_data``, ``metric``,
``input_name``), so every stage that measures on a zoo model's data measures on it the same way.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgerun.bundle import SAMPLES_KEY
from edgerun.errors import ConfigError
from edgerun.feeds import Inputs, n_samples, rows

MIN_SAMPLES = 8          # fewer cannot give both a calibration and an evaluation set
CALIB_SHARE = 0.5        # of the samples, at most MAX_CALIB, go to calibration; the rest are held out
MAX_CALIB = 256
SEED = 0


class UserData:
    """Calibration and held-out samples read from a ``--data`` file (see the module docstring)."""

    def __init__(self, path: str | Path, input_names: list[str], examples: list[np.ndarray]) -> None:
        self.path = Path(path)
        x, labels = _read(self.path, input_names)
        for name, ex in zip(input_names, examples):
            got = (x[name] if isinstance(x, dict) else x).shape[1:]
            if tuple(got) != tuple(ex.shape[1:]):
                raise ConfigError(f"--data {self.path}: input {name!r} has samples of shape {list(got)}, but the "
                                  f"model's example has {list(ex.shape[1:])}: save samples of the example's shape, "
                                  "batch on axis 0")
        n = n_samples(x)
        if n < MIN_SAMPLES:
            raise ConfigError(f"--data {self.path} holds {n} samples: give at least {MIN_SAMPLES} (half calibrate "
                              "the lossy steps, half measure them)")
        if labels is not None and len(labels) != n:
            raise ConfigError(f"--data {self.path}: {len(labels)} labels for {n} samples: give one label per sample")
        order = np.random.default_rng(SEED).permutation(n)
        n_calib = min(MAX_CALIB, int(n * CALIB_SHARE))
        self._calib = _take(x, order[:n_calib])
        self._eval = _take(x, order[n_calib:])
        self._eval_labels = None if labels is None else labels[order[n_calib:]]
        self.n_calib, self.n_eval = n_calib, n - n_calib
        self.input_name = input_names[0] if len(input_names) == 1 else None
        if labels is None:
            self.metric = "top1_agreement"
        elif labels.dtype.kind in "iu":
            self.metric = "top1"
        else:
            self.metric = "mae"
        self.name = self.path.name

    def eval_data(self, limit: int | None = None) -> tuple[Inputs, np.ndarray | None]:
        """The held-out samples (and their labels, or None), the first ``limit`` of them."""
        stop = self.n_eval if limit is None else min(limit, self.n_eval)
        labels = None if self._eval_labels is None else self._eval_labels[:stop]
        return rows(self._eval, 0, stop), labels

    def calib_data(self, n: int = 64) -> Inputs:
        """Up to ``n`` calibration samples, never among the held-out ones."""
        if n < 1:
            raise ConfigError(f"calibration needs n >= 1 samples, got {n}")
        return rows(self._calib, 0, min(n, self.n_calib))

    def describe(self) -> str:
        """What the report's ``eval_inputs`` says about the data."""
        return (f"{self.n_eval} held-out samples of {self.path.name} (--data); calibration used its {self.n_calib} "
                "others")


def _read(path: Path, names: list[str]) -> tuple[Inputs, np.ndarray | None]:
    hint = ("save it with np.savez(path, inputs=x[, labels=y]), or one inputs.<name> array per input of forward(): "
            f"{', '.join(f'inputs.{n}' for n in names)}")
    if not path.is_file():
        raise ConfigError(f"--data {path} is not a file; {hint}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = list(npz.files)
            arrays = {k: npz[k] for k in files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
        raise ConfigError(f"--data {path} cannot be read as an .npz ({type(exc).__name__}: {exc}); {hint}") from None
    if len(names) == 1 and SAMPLES_KEY in arrays:
        x: Inputs = _float_samples(arrays[SAMPLES_KEY], path, SAMPLES_KEY)
    else:
        missing = [n for n in names if f"{SAMPLES_KEY}.{n}" not in arrays]
        if missing:
            raise ConfigError(f"--data {path} has arrays {files}, not {[f'{SAMPLES_KEY}.{n}' for n in missing]}; "
                              f"{hint}")
        x = {n: _float_samples(arrays[f"{SAMPLES_KEY}.{n}"], path, f"{SAMPLES_KEY}.{n}") for n in names}
        if len({len(a) for a in x.values()}) != 1:
            raise ConfigError(f"--data {path}: its inputs hold different numbers of samples "
                              f"({ {n: len(a) for n, a in x.items()} }); {hint}")
        if len(names) == 1:
            x = x[names[0]]
    labels = arrays.get("labels")
    if labels is not None:
        if labels.dtype.kind not in "iuf" or labels.ndim == 0:
            raise ConfigError(f"--data {path}: labels must be integer class ids [N] or float targets [N, ...], got "
                              f"{labels.dtype} of shape {list(labels.shape)}")
        if labels.dtype.kind == "f" and not np.isfinite(labels).all():
            raise ConfigError(f"--data {path}: labels hold NaN or Inf; clean or drop those samples")
    return x, labels


def _float_samples(a: np.ndarray, path: Path, key: str) -> np.ndarray:
    if a.dtype.kind not in "fiub" or a.ndim == 0:
        raise ConfigError(f"--data {path}: {key} must be a numeric array with samples on axis 0, got {a.dtype} "
                          f"of shape {list(a.shape)}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        first = np.argwhere(~np.isfinite(a))[0].tolist()
        raise ConfigError(f"--data {path}: {key} sample {first[0]} holds NaN, Inf or a value beyond float32's range "
                          "(the lossy steps would be calibrated on it); clean or drop it")
    return a


def _take(x: Inputs, idx: np.ndarray) -> Inputs:
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x[idx])
    return {k: np.ascontiguousarray(v[idx]) for k, v in x.items()}
