"""Front-half engines on the device: the native C++ engine and onnxruntime.

Both have the same interface (``input_names``, ``output_names``, ``run``), so the
device can switch with ``--engine native|ort``. This module never imports torch.

Example:
    >>> eng = make_engine("native", erg_path="front.erg", threads=1)   # doctest: +SKIP
    >>> outs = eng.run(x)              # {output_name: np.ndarray}      # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping

import numpy as np

from edgerun.errors import ConfigError, InternalError, from_core_error

ENGINE_KINDS = ("native", "ort")


def _core():
    try:
        from edgerun import _core
    except ImportError as exc:
        raise InternalError(
            "the compiled edgerun core (edgerun._core) is missing or broken "
            f"({exc}); reinstall edgerun with `pip install .`") from exc
    return _core


def _as_feeds(feeds: np.ndarray | Mapping[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    if isinstance(feeds, np.ndarray):
        if len(names) != 1:
            raise ConfigError(f"this graph has {len(names)} inputs {names}; pass a dict name -> array")
        return [feeds]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise ConfigError(f"missing inputs {missing}; the graph needs {names}")
    return [feeds[n] for n in names]


class NativeEngine:
    """The native engine over a ``.erg`` file (see ``edgerun.exporters.erg``): fp32
    activations, fp32 / int8 / int4 Conv and Gemm weights (per layer, from the file).

    Args:
        erg_path: the engine graph file.
        max_batch: largest batch ``run`` accepts; the activation arena is sized for it.
        threads: worker threads (1 = the calling thread only).

    Raises:
        BundleError: the file is missing, corrupted or of an unsupported version.
        UnsupportedOpError: the file holds an op this runtime does not implement.
        ConfigError: ``max_batch`` or ``threads`` out of range.
    """

    kind = "native"

    def __init__(self, erg_path: str | os.PathLike, *, max_batch: int = 8, threads: int = 1) -> None:
        core = _core()
        try:
            self._engine = core.Engine(os.fspath(erg_path), int(max_batch), int(threads))
            self.input_names: list[str] = [t["name"] for t in self._engine.inputs]
            self.output_names: list[str] = [t["name"] for t in self._engine.outputs]
        except core.CoreError as exc:
            raise from_core_error(exc) from None
        except UnicodeDecodeError:
            raise _not_utf8(erg_path) from None
        self._erg_path = os.fspath(erg_path)
        self._core_error = core.CoreError
        # One run at a time: a run holds the engine's arena (and its worker pool) without the GIL,
        # and two Python threads calling one engine got each other's activations (wrong answers,
        # no error). Uncontended, the lock costs well under a microsecond per run.
        self._lock = threading.Lock()
        self.input_shapes: list[tuple[int, ...]] = [tuple(t["shape"]) for t in self._engine.inputs]
        self.arena_bytes: int = self._engine.arena_bytes
        self.weight_bytes: int = self._engine.weight_bytes
        self.scratch_bytes: int = self._engine.scratch_bytes
        self.max_batch: int = self._engine.max_batch
        self.threads: int = self._engine.threads

    def run(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the front half.

        Args:
            feeds: one float32 array (single-input graphs) or ``{input_name: array}``;
                the first dim is the batch.

        Returns:
            ``{output_name: array}`` (fresh arrays, safe to keep).

        Raises:
            ConfigError: batch above ``max_batch`` or a wrong input shape.
        """
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in _as_feeds(feeds, self.input_names)]
        if any(a.ndim == 0 for a in arrays):
            raise ConfigError("inputs must have a batch dim; got a scalar")
        try:
            with self._lock:
                outs = self._engine.run(arrays, int(arrays[0].shape[0]))
        except self._core_error as exc:
            raise from_core_error(exc) from None
        return dict(zip(self.output_names, outs))

    def profile_layers(self, feeds: np.ndarray | Mapping[str, np.ndarray], runs: int = 50,
                       warmup: int = 5) -> list[dict]:
        """Time every step of the graph over ``runs`` runs of ``feeds``.

        The engine reads a steady clock around each step while profiling (off
        otherwise, so ``run`` pays nothing for it).

        Args:
            feeds: as for ``run``.
            runs: timed runs; the per-step figure is the mean over them.
            warmup: untimed runs first (caches, page faults).

        Returns:
            One dict per step in run order: ``node``, ``op`` (ONNX op), ``kernel``
            (what ran: ``conv-s8`` int8 GEMM, ``conv-w8`` fp32 on int8 weights, ``conv-dw``
            depthwise, ``conv-1x1``, ...),
            ``us`` (mean microseconds per run).

        Raises:
            ConfigError: ``runs`` < 1, or the errors of ``run``.
        """
        if runs < 1:
            raise ConfigError(f"runs must be >= 1, got {runs}")
        for _ in range(warmup):
            self.run(feeds)
        self._engine.set_profiling(True)
        try:
            for _ in range(runs):
                self.run(feeds)
            with self._lock:
                steps, n = self._engine.step_times()
        except UnicodeDecodeError:
            raise _not_utf8(self._erg_path) from None
        finally:
            self._engine.set_profiling(False)
        return [{"node": node, "op": op, "kernel": kernel, "us": ns / n / 1e3} for node, op, kernel, ns in steps]


def _not_utf8(erg_path: str | os.PathLike) -> Exception:
    from edgerun.errors import BundleError

    return BundleError(f"{os.fspath(erg_path)!r} holds a layer or tensor name that is not UTF-8 text: the file "
                       "is damaged or not written by edgerun; re-export the bundle")


def ort_session(onnx_path: str | os.PathLike, threads: int = 1, remedy: str = "re-export the bundle") -> Any:
    """An onnxruntime CPU session: ``threads`` intra-op threads, one inter-op thread, quiet logs.

    Raises:
        BundleError: onnxruntime cannot load the file (the message ends with ``remedy``).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(os.fspath(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        from edgerun.errors import BundleError

        raise BundleError(f"onnxruntime cannot load {os.fspath(onnx_path)!r}: {exc}; {remedy}") from exc


class OrtEngine:
    """The same interface over onnxruntime (CPU execution provider).

    Args:
        onnx_path: the front half as ONNX.
        threads: ``intra_op_num_threads`` (inter-op is 1), to compare with the native engine.

    Raises:
        BundleError: onnxruntime cannot load the file.
    """

    kind = "ort"

    def __init__(self, onnx_path: str | os.PathLike, *, threads: int = 1) -> None:
        # The native engine's range, checked before the session: onnxruntime started every one of
        # `--threads 100000` (verify / run --engine ort hung) and takes 0 as "all cores".
        if not 1 <= threads <= 256:
            raise ConfigError(f"threads must be in 1..256, got {threads!r}")
        self._sess = ort_session(onnx_path, threads)
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        self.threads = int(threads)

    def run(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the front half; same contract as ``NativeEngine.run``."""
        arrays = _as_feeds(feeds, self.input_names)
        try:
            outs = self._sess.run(None, {n: np.asarray(a, dtype=np.float32)
                                         for n, a in zip(self.input_names, arrays)})
        except Exception as exc:  # onnxruntime's errors (shape, type) are the caller's input
            raise ConfigError(f"onnxruntime rejected the input: {exc}") from exc
        return dict(zip(self.output_names, outs))


def check_io(path: str | os.PathLike, input_names: list[str], output_names: list[str],
             inputs: list[str], outputs: list[str], *, some_inputs: bool = False) -> None:
    """Refuse a model file whose inputs are not ``inputs`` or whose outputs lack ``outputs``.

    ``some_inputs``: the file may take only some of ``inputs`` (a front half that leaves a model input
    to pass through the cut does not take it).

    A bundle file from another export, sealed again (a copy tool, a hand edit), failed later as a
    KeyError naming a tensor, or as "missing inputs" without naming the file.

    Raises:
        BundleError: the names differ; the message names the file and both sides.
    """
    ins_ok = (input_names and set(input_names) <= set(inputs)) if some_inputs else set(input_names) == set(inputs)
    if not ins_ok or not set(outputs) <= set(output_names):
        from edgerun.errors import BundleError

        raise BundleError(f"{os.fspath(path)!r} takes {list(input_names)} and gives {list(output_names)}, but the "
                          f"bundle's manifest says {list(inputs)} -> {list(outputs)}: the file is from another "
                          "export; re-export the bundle")


def make_engine(kind: str, *, erg_path=None, onnx_path=None, threads: int = 1,
                max_batch: int = 8) -> NativeEngine | OrtEngine:
    """Build the front-half engine named by ``kind`` ("native" or "ort").

    Raises:
        ConfigError: an unknown kind, or the file that kind needs is not given.
    """
    if kind not in ENGINE_KINDS:
        raise ConfigError(f"unknown engine kind {kind!r}; use one of {', '.join(ENGINE_KINDS)}")
    if kind == "native":
        if erg_path is None:
            raise ConfigError("engine 'native' needs erg_path (the .erg front half)")
        return NativeEngine(erg_path, max_batch=max_batch, threads=threads)
    if onnx_path is None:
        raise ConfigError("engine 'ort' needs onnx_path (the front half as ONNX)")
    return OrtEngine(onnx_path, threads=threads)


__all__ = ["ENGINE_KINDS", "NativeEngine", "OrtEngine", "check_io", "make_engine", "ort_session"]
