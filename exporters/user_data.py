"""A user's own data for a model file (``edgerun export model.py:make --data data.npz``).

Without it a model file is calibrated and measured on its example plus Gaussian noise, which says
little about its real inputs: quantization ranges, the codec's budget, early-exit heads and the
reported accuracy all came from noise. With ``--data`` they come from the user's samples, split once
(seeded) into calibration and held-out evaluation samples that never overlap.

The file (``np.savez``): ``inputs`` (one input) or ``inputs.<name>`` for each input of forward(),
samples on axis 0; optionally ``labels``: integer class ids ``[N]`` (or ``[N, 1]``; or one per position,
``[N, T]`` for scores ``[N, T, C]``, classes on the last axis; metric: top-1 accuracy) or targets shaped
like the model's output (float, or integer counts; metric: mean absolute error); one-hot labels are
refused (save ``y.argmax(1)``). Without labels the metric is the split's agreement with the whole fp32
model on the held-out samples. A model with one input may also be given an ``.npy`` of its inputs
(``np.save``), as for ``edgerun run --input``.

With early exits (``--exits``) the heads need more than the calibration samples to learn from: up to
EXIT_TRAIN_MAX more samples, at most half of those that would be held out, train them (``exit_data``)
and are not held out; the held-out samples are the rest, still never seen by any step.

Only the arrays named above are read, and each sample is converted to float32 once, into its own
split: a large file of uint8 images costs its own size plus its float32 size, not several copies.

It offers the data interface of a zoo model (``eval_data``, ``calib_data``, ``metric``,
``input_name``), so every stage that measures on a zoo model's data measures on it the same way.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgerun.bundle import SAMPLES_KEY
from edgerun.errors import ConfigError
from edgerun.feeds import Inputs, concat, rows

MIN_SAMPLES = 8          # fewer cannot give both a calibration and an evaluation set
CALIB_SHARE = 0.5        # of the samples, at most MAX_CALIB, go to calibration; the rest are held out
MAX_CALIB = 256
EXIT_TRAIN_MAX = 3840    # with --exits: samples beyond the calibration ones that train the heads (4096 in all)
SEED = 0
_CHUNK = 1024        # samples converted to float32 at a time: the split's float32 copy is the only full-size one


class UserData:
    """Calibration and held-out samples read from a ``--data`` file (see the module docstring)."""

    def __init__(self, path: str | Path, input_names: list[str], examples: list[np.ndarray], *,
                 exits: bool = False) -> None:
        self.path = Path(path)
        x, labels = _read(self.path, input_names)
        for name, ex in zip(input_names, examples):
            got = x[name].shape[1:]
            if tuple(got) != tuple(ex.shape[1:]):
                raise ConfigError(f"--data {self.path}: input {name!r} has samples of shape {list(got)}, but the "
                                  f"model's example has {list(ex.shape[1:])}: save samples of the example's shape, "
                                  "batch on axis 0")
        n = len(next(iter(x.values())))
        if n < MIN_SAMPLES:
            raise ConfigError(f"--data {self.path} holds {n} samples: give at least {MIN_SAMPLES} (half calibrate "
                              "the lossy steps, half measure them)")
        if labels is not None and len(labels) != n:
            raise ConfigError(f"--data {self.path}: {len(labels)} labels for {n} samples: give one label per sample")
        order = np.random.default_rng(SEED).permutation(n)
        n_calib = min(MAX_CALIB, int(n * CALIB_SHARE))
        n_exit = min(EXIT_TRAIN_MAX, (n - n_calib) // 2) if exits else 0
        self.exits = exits
        self._calib = _take(x, order[:n_calib])
        self._exit_train = _take(x, order[n_calib:n_calib + n_exit])
        held = order[n_calib + n_exit:]
        self._eval = _take(x, held)
        self._eval_labels = None if labels is None else labels[held]
        self.n_calib, self.n_exit_train, self.n_eval = n_calib, n_exit, len(held)
        self.input_name = input_names[0] if len(input_names) == 1 else None
        if labels is None:
            self.metric = "top1_agreement"
        elif labels.dtype.kind in "iu" and labels.ndim == 1:
            self.metric = "top1"
        else:  # float targets, or integer targets shaped like a regression output (counts)
            self.metric = "mae"
        self.name = self.path.name

    def range_notes(self, names: list[str], examples: list[np.ndarray]) -> list[str]:
        """A line per input whose samples' largest magnitude is 20x off its example's (uint8 images 0..255 for a
        model whose example is 0..1, say): the model would be calibrated and measured on inputs it never
        sees. A note, not an error: the example may be a stand-in."""
        notes = []
        for name, ex in zip(names, examples):
            got = self._calib if isinstance(self._calib, np.ndarray) else self._calib[name]
            d, e = float(np.max(np.abs(got))) if got.size else 0.0, float(np.max(np.abs(ex))) if ex.size else 0.0
            if e > 0 and d > 0 and (d > 20 * e or e > 20 * d):
                notes.append(f"note: --data {self.path.name}: input {name!r} reaches |{d:.4g}|, its example |{e:.4g}|: "
                             "is the data preprocessed as the model expects (scale, normalisation)?")
        return notes

    def check_labels(self, output_shape: tuple[int, ...], task: str = "auto") -> None:
        """Refuse labels that cannot be scored against the first output (shape without the batch), as the
        evaluation at the end of the export would, but before it: a mismatch cost a whole export first.

        Raises:
            ConfigError: the labels' per-sample shape fits neither a classifier's class ids nor targets.
        """
        y = self._eval_labels
        if y is None:
            return
        per_sample = tuple(y.shape[1:])
        if (y.dtype.kind in "iu" and per_sample and task != "regress" and len(output_shape) >= 2
                and per_sample == tuple(output_shape[:-1]) and output_shape[-1] != 1):
            self.metric = "top1"  # class ids per position ([N, T] for scores [N, T, C]): no other reading fits
        # --task regress scores the output against the labels as targets (class ids [N] against [N, 3]: the
        # evaluation's reshape raised a ValueError traceback at the end of the export)
        regression = task == "regress" or self.metric == "mae" or len(output_shape) == 0 or output_shape[-1] == 1
        if regression and int(np.prod(per_sample, dtype=np.int64)) != int(np.prod(output_shape, dtype=np.int64)):
            ids = per_sample in ((), (1,)) and (y.dtype.kind in "iu" or np.array_equal(y, np.round(y)))
            classes_first = (y.dtype.kind in "iu" and len(output_shape) >= 2 and task != "regress"
                             and per_sample == tuple(output_shape[1:]))
            if classes_first:  # a segmentation's [N, C, H, W] against per-pixel ids [N, H, W]
                order = ", ".join(map(str, [0, *range(2, len(output_shape) + 1), 1]))
                todo = (f"they look like class ids per position, with the output's class scores on axis 1; edgerun "
                        f"reads the scores on the last axis: return out.permute({order}) from forward() (shape "
                        f"{_dims((*output_shape[1:], output_shape[0]))})")
            elif task == "regress" and self.metric == "top1":
                todo = "--task regress scores them as targets: drop --task to score class ids by top-1"
            elif ids and y.dtype.kind == "f":
                todo = "they look like class ids saved as floats: save them as integers, labels=y.astype(np.int64)"
            else:
                todo = "give targets shaped like it, or integer class ids [N] for a classifier"
            raise ConfigError(f"--data {self.path}: labels of shape {_dims(per_sample)} do not fit the model's output "
                              f"{_dims(output_shape)} (its first output): {todo}")
        if not regression and per_sample != tuple(output_shape[:-1]):
            raise ConfigError(f"--data {self.path}: labels of shape {list(y.shape)} do not fit the model's output "
                              f"{_dims(output_shape)} (its first output): give one integer class "
                              f"id per sample (shape {_dims(output_shape[:-1])})")
        if not regression and isinstance(output_shape[-1], int):
            self._check_class_ids(int(output_shape[-1]))

    def _check_class_ids(self, classes: int) -> None:
        """Class ids outside the output's scores (1-based labels 1..C, ids of another label set) were scored as
        always wrong: "top1: whole 0.2000" for a model right on most samples, without a word."""
        y = self._eval_labels
        lo, hi = int(y.min()), int(y.max())
        if lo >= 0 and hi < classes:
            return
        hint = ("1-based? save labels=y - 1" if lo >= 1 and hi == classes else
                "give the index of each sample's class among the output's scores")
        raise ConfigError(f"--data {self.path}: labels hold class ids {lo}..{hi}, but the model's first output scores "
                          f"{classes} classes (ids 0..{classes - 1}): {hint}")

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

    def exit_data(self) -> dict:
        """Early exits' data (``exporters.exits.exit_data``): the calibration samples and, made with ``exits``,
        the samples set aside to train the heads; the held-out samples and labels to report on."""
        train = concat([self._calib, self._exit_train]) if self.n_exit_train else self._calib
        x_test, y_test = self.eval_data()
        return {"x_train": train, "x_test": x_test, "y_test": y_test}

    def describe(self) -> str:
        """What the report's ``eval_inputs`` says about the data."""
        if self.n_exit_train:
            return (f"{self.n_eval} held-out samples of {self.path.name} (--data); of the others, calibration used "
                    f"{self.n_calib}, the exit heads {self.n_calib + self.n_exit_train} (those {self.n_calib} and {self.n_exit_train} more)")
        return (f"{self.n_eval} held-out samples of {self.path.name} (--data); calibration used its {self.n_calib} "
                "others")


def _read(path: Path, names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The input arrays by name (as stored: converted to float32 later, per split) and the labels."""
    hint = ("save it with np.savez(path, inputs=x[, labels=y]), or one inputs.<name> array per input of forward(): "
            f"{', '.join(f'inputs.{n}' for n in names)}")
    if not path.is_file():
        raise ConfigError(f"--data {path} is not a file; {hint}")
    try:
        got = np.load(path, allow_pickle=False, mmap_mode="r")
        if isinstance(got, np.ndarray):  # an .npy: the inputs of a one-input model, no labels
            if len(names) > 1:
                raise ConfigError(f"--data {path} holds one array, and the model takes {len(names)} inputs; {hint}")
            return {names[0]: _numeric(got, path, SAMPLES_KEY)}, None
        with got as npz:
            files = list(npz.files)
            if len(names) == 1 and SAMPLES_KEY in files:
                keys = {names[0]: SAMPLES_KEY}
            else:
                keys = {n: f"{SAMPLES_KEY}.{n}" for n in names}
                missing = [k for k in keys.values() if k not in files]
                if missing:
                    raise ConfigError(f"--data {path} has arrays {files}, not {missing}; {hint}")
            x = {n: _numeric(npz[k], path, k) for n, k in keys.items()}  # only these arrays are read
            labels = npz["labels"] if "labels" in files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
        raise ConfigError(f"--data {path} cannot be read as an .npz ({type(exc).__name__}: {exc}); {hint}") from None
    if len({len(a) for a in x.values()}) != 1:
        raise ConfigError(f"--data {path}: its inputs hold different numbers of samples "
                          f"({ {n: len(a) for n, a in x.items()} }); {hint}")
    return x, None if labels is None else _labels(labels, path)


def _dims(shape: tuple) -> str:
    """A per-sample shape with the batch named: [N], [N, 3] (was "[N, ]" for one value per sample)."""
    return "[" + ", ".join(["N", *map(str, shape)]) + "]"


def _labels(labels: np.ndarray, path: Path) -> np.ndarray:
    if labels.dtype.kind not in "iuf" or labels.ndim == 0:
        raise ConfigError(f"--data {path}: labels must be integer class ids [N] or targets [N, ...] shaped like the "
                          f"model's output, got {labels.dtype} of shape {list(labels.shape)}")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise ConfigError(f"--data {path}: labels hold NaN or Inf; clean or drop those samples")
    if (labels.ndim == 2 and labels.shape[1] > 1 and np.isin(labels, (0, 1)).all()
            and (labels.sum(axis=1) == 1).all()):
        # a classifier scored by the mean absolute error of its logits against 0 / 1 (float), or refused with
        # "labels of shape [N, C] do not fit the model's output [N, C]" (integer)
        raise ConfigError(f"--data {path}: labels of shape {list(labels.shape)} look one-hot (one 1 per row): save "
                          "the class ids instead, labels=y.argmax(1)")
    if labels.dtype.kind in "iu" and labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]  # class ids saved as a column
    return labels


def _numeric(a: np.ndarray, path: Path, key: str) -> np.ndarray:
    if a.dtype.kind not in "fiub" or a.ndim == 0:
        raise ConfigError(f"--data {path}: {key} must be a numeric array with samples on axis 0, got {a.dtype} "
                          f"of shape {list(a.shape)}")
    for j in range(0, len(a) if a.dtype.kind == "f" else 0, _CHUNK):  # as float32, a chunk at a time
        bad = ~np.isfinite(a[j:j + _CHUNK].astype(np.float32))
        if bad.any():
            raise ConfigError(f"--data {path}: {key} sample {j + int(np.argwhere(bad)[0][0])} holds NaN, Inf or a "
                              "value beyond float32's range (the lossy steps would be calibrated on it); clean or "
                              "drop it")
    return a


def _take(x: dict[str, np.ndarray], idx: np.ndarray) -> Inputs:
    """Samples ``idx`` of each input as float32 (checked finite by ``_numeric``), converted a chunk at a time."""
    out = {}
    for key, a in x.items():
        part = np.empty((len(idx), *a.shape[1:]), dtype=np.float32)
        for j in range(0, len(idx), _CHUNK):
            part[j:j + _CHUNK] = a[idx[j:j + _CHUNK]]
        out[key] = part
    return out if len(out) > 1 else next(iter(out.values()))
