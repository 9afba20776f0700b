"""Per-layer weight precision of the front half, chosen by measured sensitivity.

The sensitivity of a layer at a precision is the error of the whole front half
when only that layer is quantized: ``||y_q - y|| / ||y||`` over all front outputs
on the calibration batch, run through the native engine itself (so it measures
exactly the kernels that will run on the device: weight quantization AND the
int8 GEMM's dynamic activation quantization).

Weights are rounded with ``cfg.rounding``: "gptq" (default; data-aware GPTQ + bias
correction on the calibration batch, ``quant_rounding``: sensitivities round each layer
alone, the final plan rounds its layers sequentially) or "rtn" (round to nearest).

Example:
    >>> cfg = FrontPrecisionConfig(mode="auto", max_device_mem_mb=1.5)      # doctest: +SKIP
    >>> plan = plan_front_precision(front, calib_x, cfg)                     # doctest: +SKIP
    >>> print(plan.table())                                                  # doctest: +SKIP
    >>> write_erg(front, "front.erg", precisions=plan.precisions, group_size=cfg.group_size,
    ...           rounded=plan.rounded)                                      # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgerun.errors import ConfigError, ExportError
from edgerun.feeds import float32, n_samples
from edgerun.exporters.erg import weight_layers, write_erg
from edgerun.exporters.erg_quant import PRECISIONS, check_group_size, weight_bytes
from edgerun.exporters.quant_rounding import METHODS as ROUNDINGS
from edgerun.exporters.quant_rounding import FrontRounder, RoundingConfig

MODES = ("fp32", "int8", "int4", "auto")
ACTS = ("int8", "fp32")


@dataclass(frozen=True)
class FrontPrecisionConfig:
    """How to choose front-half weight precisions.

    Args:
        mode: "fp32" | "int8" | "int4" (int4 except depthwise layers, which stay int8:
            their 9-value rows pad badly into int4 groups and they hold few bytes) |
            "auto" (see ``plan_front_precision``).
        group_size: int4 group size along K (even, 2..4096).
        max_device_mem_mb: for "auto", and required by it: budget for weights + the
            activation arena (MiB, batch 1).
        rounding: "gptq" (data-aware rounding + bias correction on the calibration
            batch) or "rtn" (round to nearest, no data).
        act: activations of the int8 Conv layers: "int8" (the engine's int8 GEMM with
            per-pixel 8-bit activations: faster) or "fp32" (weights dequantized per run,
            fp32 compute: no activation quantization error, as fast as fp32; the weights
            stay int8 in the file and in memory). Rounding fits what will run.

    Raises:
        ConfigError: an unknown mode or rounding, a bad group size, a non-positive budget,
            a budget without "auto" or "auto" without a budget.
    """

    mode: str = "fp32"
    group_size: int = 32
    max_device_mem_mb: float | None = None
    rounding: str = "gptq"
    act: str = "int8"

    def __post_init__(self) -> None:
        if self.act not in ACTS:
            raise ConfigError(f"unknown activation precision {self.act!r}; use one of {', '.join(ACTS)}")
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"unknown rounding {self.rounding!r}; use one of {', '.join(ROUNDINGS)}")
        if self.mode not in MODES:
            raise ConfigError(f"unknown precision mode {self.mode!r}; use one of {', '.join(MODES)}")
        check_group_size(self.group_size)
        if self.max_device_mem_mb is not None and not self.max_device_mem_mb > 0:
            raise ConfigError(f"max_device_mem_mb must be > 0, got {self.max_device_mem_mb!r}")
        if self.max_device_mem_mb is not None and self.mode != "auto":
            raise ConfigError("max_device_mem_mb only applies to mode='auto'")
        if self.mode == "auto" and self.max_device_mem_mb is None:
            # Without a budget the choice had nothing to trade: every layer stayed fp32, silently.
            raise ConfigError(
                "front precision 'auto' picks each layer's precision to fit a device-memory budget: "
                "give one (--max-device-mem-mb N, MiB for weights + activations), or choose "
                "--front-precision int8 (fastest) or fp32")


@dataclass(frozen=True)
class PrecisionPlan:
    """The chosen precision per layer, with its cost and measured errors."""

    precisions: dict[str, str]
    layer_bytes: dict[str, int]                 # stored bytes per layer at its precision
    sensitivity: dict[str, dict[str, float]]    # layer -> {precision: error alone}
    weight_bytes: int                           # all front weights (other tensors too)
    arena_bytes: int                            # activation arena at batch 1
    error: float                                # measured error with the whole plan
    budget_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    rounding: str = "rtn"
    rounded: dict = field(default_factory=dict)  # layer -> RoundedLayer: pass to write_erg
    fp32_acts: list[str] = field(default_factory=list)  # int8 Convs on fp32 activations: pass to write_erg

    @property
    def device_bytes(self) -> int:
        return self.weight_bytes + self.arena_bytes

    @property
    def rtn_fallback(self) -> list[str]:
        """The layers GPTQ was asked for but rounded to nearest: their input statistics would
        exceed ``quant_stats.MAX_H_BYTES``."""
        if self.rounding != "gptq":
            return []
        return [n for n, r in self.rounded.items() if r.method == "rtn"]

    def rounding_report(self) -> dict:
        """How the quantized layers were rounded, for report.json (``front_rounding``):
        ``{"method": "gptq" | "rtn", "gptq": <layers rounded by GPTQ>, "rtn_fallback": [layer names]}``."""
        return {"method": self.rounding, "gptq": sum(r.method == "gptq" for r in self.rounded.values()),
                "rtn_fallback": self.rtn_fallback}

    def table(self) -> str:
        """A printable per-layer table."""
        rows = [f"{'layer':40s} {'prec':5s} {'bytes':>9s} {'err int8':>9s} {'err int4':>9s}"]
        for name, prec in self.precisions.items():
            s = self.sensitivity.get(name, {})
            rows.append(f"{name[-40:]:40s} {prec:5s} {self.layer_bytes[name]:9d} "
                        f"{s.get('int8', float('nan')):9.2e} {s.get('int4', float('nan')):9.2e}")
        budget = "none" if self.budget_bytes is None else f"{self.budget_bytes / 2**20:.3f} MiB"
        rows.append(f"weights {self.weight_bytes / 2**20:.3f} MiB + arena {self.arena_bytes / 2**20:.3f} "
                    f"MiB = {self.device_bytes / 2**20:.3f} MiB (budget {budget}); "
                    f"measured error {self.error:.3e} ({self.rounding} rounding)")
        if self.fp32_acts:
            rows.append(f"activations: fp32 on {len(self.fp32_acts)} int8 Conv layer(s) "
                        "(weights dequantized per run; no int8 GEMM)")
        if self.rtn_fallback:
            rows.append(f"rounding: {len(self.rtn_fallback)} layer(s) rounded to nearest, not GPTQ (statistics "
                        f"too large): {', '.join(self.rtn_fallback)}")
        return "\n".join(rows + self.notes)


class _Runner:
    """Writes the front half at given precisions and runs it on the calibration batch."""

    def __init__(self, front: onnx.ModelProto, calib_x: np.ndarray | dict[str, np.ndarray], group_size: int,
                 fp32_act: bool = False) -> None:
        from edgerun.engine import NativeEngine

        self._engine_cls = NativeEngine
        self.front, self.x, self.gs = front, float32(calib_x), group_size
        self.fp32_act, self.layers = fp32_act, weight_layers(front)
        self._dir = tempfile.TemporaryDirectory(prefix="edgerun-quant-")
        self.path = Path(self._dir.name) / "front.erg"
        self.ref, info, self.arena = self._run({})
        self.fixed_bytes = info["weight_bytes"]  # fp32 weights; layer bytes are swapped in below

    def _run(self, precisions: dict[str, str], rounded: dict | None = None):
        info = write_erg(self.front, self.path, precisions=precisions, group_size=self.gs,
                         rounded=rounded, fp32_acts=self.fp32_acts(precisions))
        eng = self._engine_cls(self.path, max_batch=n_samples(self.x), threads=1)
        outs = eng.run(self.x)
        y = np.concatenate([outs[n].reshape(-1) for n in eng.output_names]).astype(np.float64)
        arena = self._engine_cls(self.path, max_batch=1, threads=1).arena_bytes
        return y, info, arena

    def fp32_acts(self, precisions: dict[str, str]) -> list[str]:
        """The int8 Conv layers that run on fp32 activations under this runner's setting."""
        return [l["name"] for l in self.layers if self.fp32_act and l["op"] == "Conv"
                and not l["depthwise"] and precisions.get(l["name"]) == "int8"]

    def error(self, precisions: dict[str, str], rounded: dict | None = None) -> float:
        y, _, _ = self._run(precisions, rounded)
        return float(np.linalg.norm(y - self.ref) / max(np.linalg.norm(self.ref), 1e-30))

    def close(self) -> None:
        self._dir.cleanup()


def _cheapest(layer: dict, gs: int) -> str:
    return min(("int8", "int4"), key=lambda p: weight_bytes(p, layer["rows"], layer["k"], gs))


def _auto(layers: list[dict], sens: dict, fixed: int, arena: int, budget: int, gs: int) -> dict:
    """Greedy: from all-fp32, apply the move (fp32->int8, fp32->int4 or int8->int4) with the
    least added measured error per byte saved, until weights + arena fit the budget."""
    prec = {l["name"]: "fp32" for l in layers}
    by = {l["name"]: l for l in layers}

    def nbytes(name: str, p: str) -> int:
        return weight_bytes(p, by[name]["rows"], by[name]["k"], gs)

    def total() -> int:
        return fixed + arena + sum(nbytes(n, p) for n, p in prec.items())

    floor = fixed + arena + sum(nbytes(n, _cheapest(by[n], gs)) for n in prec)
    if floor > budget:
        raise ExportError(
            f"the front half cannot fit {budget / 2**20:.4g} MiB: the smallest reachable is "
            f"{floor / 2**20:.4g} MiB (weights at int8/int4 + activation arena); raise "
            f"--max-device-mem-mb to at least {floor / 2**20:.4g}, or choose a cut with fewer layers or smaller "
            "activations before it")
    while total() > budget:
        best = None
        for n, p in prec.items():
            for q in ("int8", "int4"):
                if PRECISIONS.index(q) <= PRECISIONS.index(p):
                    continue
                saved = nbytes(n, p) - nbytes(n, q)
                if saved <= 0:
                    continue
                cost = (sens[n][q] - (sens[n][p] if p != "fp32" else 0.0)) / saved
                if best is None or cost < best[0]:
                    best = (cost, n, q)
        _, n, q = best  # a move exists: floor <= budget < total
        prec[n] = q
    return prec


def plan_front_precision(front: onnx.ModelProto, calib_x: np.ndarray | dict[str, np.ndarray],
                         cfg: FrontPrecisionConfig) -> PrecisionPlan:
    """Choose the weight precision of each Conv / Gemm layer of the front half.

    Modes "fp32" / "int8" / "int4" set every layer (int4 keeps depthwise layers at
    int8). Mode "auto" starts from all-fp32 and, while weights + activation arena
    exceed ``cfg.max_device_mem_mb``, moves the layer whose next step down (fp32 ->
    int8 / int4, int8 -> int4) adds the least measured error per byte saved; errors are
    each layer's sensitivity alone (assumed additive), and the final plan's error is
    measured again as a whole.

    Args:
        front: the front half as ONNX.
        calib_x: a calibration batch (float32, batch first), e.g. 16-64 real inputs.
        cfg: mode, int4 group size and the device-memory budget.

    Returns:
        A ``PrecisionPlan``; pass ``plan.precisions`` and ``plan.rounded`` to ``write_erg``.

    Raises:
        ConfigError: a mode other than fp32 on a front half with no Conv / Gemm layer.
        ExportError: the budget cannot be met even with every layer at its smallest.
        UnsupportedOpError: the native engine cannot run the front half.
    """
    layers = weight_layers(front)
    if cfg.mode != "fp32" and not layers:
        # Nothing to quantize: the rounding then ran onnxruntime with no outputs requested and
        # died in a traceback ("At least one output should be requested").
        raise ConfigError(
            f"--front-precision {cfg.mode}: the front half up to this cut has no Conv or Gemm layer to "
            "quantize; export it as fp32 (--front-precision fp32) or choose a later cut "
            "(`edgerun export MODEL --list-cuts`)")
    gs = cfg.group_size
    run = _Runner(front, calib_x, gs, fp32_act=cfg.act == "fp32")
    try:
        rounder = None
        if cfg.mode != "fp32" and cfg.rounding != "rtn":
            # fp32 activations: nothing quantizes a layer's input at run time, so the
            # rounding must not emulate it (fitting to an error that is not there).
            no_act_quant = {"act_quant_min_k": None} if cfg.act == "fp32" else {}
            rounder = FrontRounder(front, calib_x, gs, RoundingConfig(method=cfg.rounding, **no_act_quant))

        def alone(name: str, p: str) -> dict:
            return {} if rounder is None else {name: rounder.alone(name, p)}

        sens = {l["name"]: {"fp32": 0.0} for l in layers}
        if cfg.mode != "fp32":
            for l in layers:
                for p in ("int8", "int4"):
                    sens[l["name"]][p] = run.error({l["name"]: p}, alone(l["name"], p))
        fixed = run.fixed_bytes - sum(weight_bytes("fp32", l["rows"], l["k"]) for l in layers)
        budget = None
        if cfg.mode == "auto":
            budget = int(cfg.max_device_mem_mb * 2**20)  # required by the config
            prec = _auto(layers, sens, fixed, run.arena, budget, gs)
        elif cfg.mode == "int4":
            prec = {l["name"]: "int8" if l["depthwise"] else "int4" for l in layers}
        else:
            prec = {l["name"]: cfg.mode for l in layers}
        lb = {l["name"]: weight_bytes(prec[l["name"]], l["rows"], l["k"], gs) for l in layers}
        quantized = any(p != "fp32" for p in prec.values())
        rounded = rounder.sequential(prec) if rounder is not None and quantized else {}
        err = run.error(prec, rounded) if quantized else 0.0
        return PrecisionPlan(prec, lb, sens, fixed + sum(lb.values()), run.arena, err, budget,
                             rounding="rtn" if rounder is None else cfg.rounding, rounded=rounded,
                             fp32_acts=run.fp32_acts(prec))
    finally:
        run.close()


__all__ = ["FrontPrecisionConfig", "PrecisionPlan", "plan_front_precision", "MODES"]
