"""Early exits on the device: run the front half segment by segment, stop when sure.

A bundle with exits (``manifest["exits"]``, written by ``edgerun.exporters.exits``) holds
one segment per exit point: ``exit<i>.erg`` (native engine) / ``exit<i>.onnx``. Segment
``i`` outputs the tensor the next segment needs and exit head ``i``'s output. After each
segment the criterion (C++: ``edgerun._core.exit_all_pass``) decides whether the device
answers here; the thresholds come from the named budget chosen at run time. The last
segment ends at the bundle's cut: its point tensor is what goes to the server, and its
head is the deepest local answer when the server is late or unreachable.

A batch exits as one: it leaves at an exit only when every sample in it passes.

Example:
    >>> ctl = ExitController(Bundle.load("bundles/digits"), engine="native", budget="balanced")  # doctest: +SKIP
    >>> step = ctl.run(x)                                           # doctest: +SKIP
    >>> step.exited, step.reason, step.cut                          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgerun.errors import BundleError, ConfigError, UnsupportedOpError
from edgerun.feeds import Inputs, as_feeds, n_samples, rows, with_passthrough

CRITERIA = ("max_prob", "entropy", "consistency")
OFF = "off"  # budget name: no confident exits (local answers only on deadline / outage)


def has_exits(manifest: dict) -> bool:
    entry = manifest.get("exits")
    return isinstance(entry, dict) and bool(entry.get("points"))


def scores(criterion: str, x: np.ndarray, prev: np.ndarray | None = None) -> np.ndarray:
    """Reference (numpy) of the C++ criteria: one score per row of ``x`` (batch, n)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if criterion == "max_prob":
        z = np.exp(x - x.max(1, keepdims=True))
        return (1.0 / z.sum(1)).astype(np.float32)
    if criterion == "entropy":
        z = np.exp(x - x.max(1, keepdims=True))
        p = z / z.sum(1, keepdims=True)
        return np.maximum(-(p * np.log(np.maximum(p, 1e-300))).sum(1), 0).astype(np.float32)
    if criterion == "consistency":
        if prev is None:
            raise ConfigError("the consistency criterion needs the previous exit's output")
        d = x - np.asarray(prev, dtype=np.float64).reshape(x.shape)
        return np.sqrt((d * d).mean(1)).astype(np.float32)
    raise ConfigError(f"unknown exit criterion {criterion!r}; use one of {CRITERIA}")


def _all_pass(criterion: str, head: np.ndarray, prev: np.ndarray | None, thr: float) -> tuple[bool, float]:
    try:
        from edgerun import _core
    except ImportError:  # pure-Python fallback, same rule
        s = scores(criterion, head, prev)
        ok = s >= thr if criterion == "max_prob" else s <= thr
        worst = s.min() if criterion == "max_prob" else s.max()
        return bool(ok.all()), float(worst)
    from edgerun.errors import from_core_error

    try:
        ok, worst = _core.exit_all_pass(criterion, np.ascontiguousarray(head, dtype=np.float32),
                                        None if prev is None else np.ascontiguousarray(prev, dtype=np.float32),
                                        float(thr))
    except _core.CoreError as exc:
        raise from_core_error(exc) from None
    return bool(ok), float(worst)


@dataclass
class Step:
    """What the segments produced for one batch.

    Attributes:
        exited: index of the exit that answered on confidence, or None.
        reason: why it exited ("confident: max_prob 0.97 >= 0.93"), or "" when it did not.
        heads: the outputs of the heads computed (one per segment run).
        cut: the cut tensors by name (only when every segment ran).
        compute_fraction: front compute spent, as a fraction of the front half.
    """

    exited: int | None
    reason: str
    heads: list[np.ndarray]
    cut: dict[str, np.ndarray] | None
    compute_fraction: float

    @property
    def deepest(self) -> int:
        return len(self.heads) - 1


class Segments:
    """The exit segments of a bundle on one engine kind.

    Raises:
        BundleError: the manifest's exits entry is malformed or a file is missing.
        UnsupportedOpError: ``engine="native"`` and the bundle has no native segments.
    """

    def __init__(self, bundle: Any, engine: str = "native", threads: int = 1, max_batch: int = 8) -> None:
        from edgerun.engine import make_engine

        entry = bundle.manifest.get("exits")
        if not has_exits(bundle.manifest):
            raise BundleError(f"{bundle} has no early exits; re-export it with `edgerun export ... --exits auto`")
        self.entry = entry
        self.points: list[dict] = entry["points"]
        self.criterion: str = entry.get("criterion", "max_prob")
        if self.criterion not in CRITERIA:
            raise BundleError(f"{bundle}: unknown exit criterion {self.criterion!r}; upgrade edgerun")
        self.engines = []
        for p in self.points:
            if engine == "native":
                if not p.get("erg"):
                    raise UnsupportedOpError(f"{bundle} has no native exit segments ({entry.get('native_reason', '')}): "
                                             "use engine='ort' (--engine ort)")
                self.engines.append(make_engine("native", erg_path=bundle.file(p["erg"]), threads=threads,
                                                max_batch=max_batch))
            else:
                self.engines.append(make_engine("ort", onnx_path=bundle.file(p["onnx"]), threads=threads))

    def run_one(self, i: int, feed: Any, inputs: Inputs | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Segment ``i`` on ``feed`` (the model's inputs for segment 0, else the previous point tensor):
        (point tensor, head output). ``inputs``: the model's inputs, for a segment that reads some of them
        (a bundle of a model with several inputs: its points name them, ``model_inputs``); default ``feed``
        for segment 0."""
        p = self.points[i]
        names = p.get("model_inputs")
        if names is None:  # one model input, read by segment 0 only (bundles of one-input models)
            outs = self.engines[i].run(feed if i == 0 else {p["input"]: feed})
        else:
            src = feed if i == 0 else inputs
            if src is None and names:
                raise ConfigError(f"exit segment {i} reads the model inputs {names}: pass them (inputs=...)")
            run = as_feeds(src, names) if names else {}
            if i > 0:
                run[p["input"]] = feed
            outs = self.engines[i].run(run)
        return outs[p["tensor"]], outs[p["head"]]

    def run_all(self, x: Inputs, batch: int = 8) -> list[np.ndarray]:
        """Every head's output on ``x`` (used at export to evaluate, and by benchmarks); a model with several
        inputs takes ``{name: array}``."""
        heads: list[list[np.ndarray]] = [[] for _ in self.points]
        for lo in range(0, n_samples(x), batch):
            part = rows(x, lo, lo + batch)
            cur: Any = part
            for i in range(len(self.points)):
                cur, h = self.run_one(i, cur, part)
                heads[i].append(h)
        return [np.concatenate(h) for h in heads]


class ExitController:
    """Runs the segments for one request and applies the chosen budget's thresholds.

    Args:
        bundle: a loaded Bundle with exits.
        engine: "native" or "ort".
        threads: engine threads.
        budget: a budget name from the bundle (``ExitController.budgets``), ``"off"`` for
            no confident exits, or None for the bundle's default budget.

    Raises:
        ConfigError: an unknown budget name (the message lists the bundle's budgets).
    """

    def __init__(self, bundle: Any, *, engine: str = "native", threads: int = 1, budget: str | None = None,
                 max_batch: int = 8) -> None:
        self.segments = Segments(bundle, engine, threads, max_batch)
        self.max_batch = int(max_batch)
        entry = self.segments.entry
        self.budgets: dict[str, dict] = entry.get("budgets", {})
        name = budget or entry.get("default_budget") or OFF
        if name != OFF and name not in self.budgets:
            raise ConfigError(f"unknown budget {name!r} for {bundle}; this bundle has: "
                              f"{', '.join(sorted(self.budgets)) or 'none'} (or 'off')")
        self.budget = name
        k = len(self.segments.points)
        self.thresholds: list[float | None] = [None] * k if name == OFF else list(self.budgets[name]["thresholds"])
        if len(self.thresholds) != k:
            raise BundleError(f"{bundle}: budget {name!r} has {len(self.thresholds)} thresholds for {k} exits; re-export")
        self.cut_names: list[str] = entry["cut_tensors"]

    @property
    def n_exits(self) -> int:
        return len(self.segments.points)

    def run(self, feeds: Any) -> Step:
        """Run segments until an exit is confident or the cut is reached."""
        crit, pts = self.segments.criterion, self.segments.points
        heads: list[np.ndarray] = []
        cur: Any = feeds
        for i in range(len(pts)):
            cur, head = self.segments.run_one(i, cur, feeds)
            heads.append(head)
            thr = self.thresholds[i]
            prev = heads[-2] if len(heads) > 1 else None
            if thr is None or (crit == "consistency" and prev is None):
                continue
            ok, worst = _all_pass(crit, head, prev, thr)
            if ok:
                op = ">=" if crit == "max_prob" else "<="
                return Step(i, f"confident: {crit} {worst:.3g} {op} {thr:.3g}", heads, None,
                            float(pts[i]["compute_fraction"]))
        # The model inputs passing through the cut go to the server beside the computed tensor, as they came.
        cut = with_passthrough({pts[-1]["tensor"]: cur}, feeds, [n for n in self.cut_names if n != pts[-1]["tensor"]])
        return Step(None, "", heads, cut, float(pts[-1]["compute_fraction"]))


__all__ = ["CRITERIA", "OFF", "ExitController", "Segments", "Step", "has_exits", "scores"]
