"""The split planner: where to cut, at which front precision, with which codec.

Neurosurgeon-style: every candidate (cut x front precision x codec, plus "all on the
server" and "all on the device") gets a predicted cost from the profiles:

* device ms: the device profile's measured time for this model/cut/precision when it
  has one, else its linear latency model over the front half's MACs and nodes;
* wire bytes: crossing tensor bytes (scaled by the codec) + a per-message overhead
  (MQTT publish header, topics, properties, wire frame header), both ways;
* network ms: link RTT + bytes / bandwidth each way + jitter, + the transport's software
  overhead (broker hop, frame encode/decode);
* server ms: the server profile (measured or modelled) on the back half;
* device memory: front weights at the precision + a peak-activation estimate;
* metric loss: measured on calibration data (fp32 without codec is exact: 0); for classifiers
  at least the flip rate the candidate's logit changes predict (``stages.predicted_flip_rate``).

Candidates are checked against the budgets (ASC-LLM-style joint choice) and ranked:
feasible first, then by total ms. ``plan(...).choice()`` is the Python API for export.

Example:
    >>> from edgerun.exporters.planner import plan, Budgets
    >>> p = plan("zoo:digits-cnn", "rpi4", "cpu-server", "wifi", Budgets(max_latency_ms=20))  # doctest: +SKIP
    >>> p.choice()                                                                         # doctest: +SKIP
    ('input', 'fp32', 'none')
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgerun.errors import ConfigError
from edgerun.profiles import (WHOLE, DeviceProfile, LinkProfile, ServerProfile, load_device, load_link, load_server,
                              stale_profile_note)

# Bytes each MQTT message carries besides the tensors: fixed header + topic (~70 B) +
# response topic (~70 B) + correlation data + wire frame header. Measured with
# `edgerun bench` (bytes through the link emulator per request minus tensor bytes): see devices/README.md.
MESSAGE_OVERHEAD_BYTES = 260
# Software cost of one request on the MQTT path beyond the link model (publish, broker hop,
# server decode/encode, reply decode, the emulator's own overshoot). Set from
# benchmarks/results/planner_validation.json: digits over wifi (compute ~0) measured
# 2-3.5 ms above a 1.0 ms constant on every split candidate.
TRANSPORT_OVERHEAD_MS = 2.5
_PRECISION_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
ALL_ON_SERVER, ALL_ON_DEVICE = "input", "output"


# The accuracy budget when none is given: without one the fastest candidate won whatever its
# loss (EfficientNet-Lite0 on this-machine/cpu-server/wifi: int4 + tsq at blocks.0, 70.6 % of
# the calibration crops answered differently from the fp32 model).
DEFAULT_MAX_ACCURACY_DROP = 0.01


@dataclass(frozen=True)
class Budgets:
    """Limits a plan must meet; None = no limit.

    Args:
        max_latency_ms: predicted end-to-end ms per request.
        max_device_mem_mb: front weights + activations on the device, MiB.
        max_accuracy_drop: metric loss vs the fp32 whole model (fraction, 0.01 = 1 point;
            default ``DEFAULT_MAX_ACCURACY_DROP``).
    """

    max_latency_ms: float | None = None
    max_device_mem_mb: float | None = None
    max_accuracy_drop: float | None = DEFAULT_MAX_ACCURACY_DROP

    def __post_init__(self) -> None:
        for name in ("max_latency_ms", "max_device_mem_mb", "max_accuracy_drop"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ConfigError(f"budget {name}={v} must be >= 0 (or left unset)")


@dataclass(frozen=True)
class Candidate:
    """One evaluated plan. ``cut`` is a cut label, ``"input"`` (all on server) or ``"output"`` (all on device)."""

    cut: str
    cut_index: int
    front_precision: str
    codec: str
    device_ms: float
    wire_bytes: int
    network_ms: float
    server_ms: float
    total_ms: float
    device_mem_bytes: int
    metric_loss: float | None  # None: lossy and not measured (slower than the chosen plan)
    feasible: bool
    violations: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["violations"] = list(self.violations)
        for k in ("device_ms", "network_ms", "server_ms", "total_ms"):
            d[k] = round(d[k], 4)
        return d


@dataclass
class Plan:
    """Ranked candidates (feasible first, then fastest), the chosen one, and why."""

    model: str
    device: str
    server: str
    link: str
    budgets: Budgets
    candidates: list[Candidate]
    chosen: Candidate | None
    reason: str
    notes: tuple[str, ...] = ()  # warnings about the inputs (e.g. a profile measured on another CPU)

    def choice(self) -> tuple[str, str, str]:
        """``(cut, front_precision, codec)`` of the chosen plan.

        Raises:
            ConfigError: no candidate meets the budgets (the message says which and by how much).
        """
        if self.chosen is None:
            raise ConfigError(self.reason)
        return self.chosen.cut, self.chosen.front_precision, self.chosen.codec

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "server": self.server, "link": self.link,
                "budgets": asdict(self.budgets), "candidates": [c.to_json() for c in self.candidates],
                "chosen": self.chosen.to_json() if self.chosen else None, "reason": self.reason,
                "notes": list(self.notes)}


# ----------------------------------------------------------------------------- registries
def available_precisions() -> list[str]:
    """Front precisions the native engine runs (``exporters/erg.py``)."""
    return ["fp32", "int8", "int4"]


def available_codecs() -> list[str]:
    """Codec settings the device/server pair runs (``edgerun/crossing.py``)."""
    return ["none", "tsq"]


def _lossless(precision: str, codec: str) -> bool:
    return precision == "fp32" and codec == "none"  # the fp32 halves run the same ops: exact


# ----------------------------------------------------------------------------- costs
@dataclass
class _Ctx:
    traced: Any
    calib: np.ndarray | None
    device: DeviceProfile
    server: ServerProfile
    link: LinkProfile
    budgets: Budgets
    transport_ms: float
    outputs_bytes: int = 0
    meter: Any = None  # planner_loss.LossMeter when calibration data exists


def _init_bytes(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(i.dims)) * 4 for i in model.graph.initializer)


def _peak_activation_bytes(model: onnx.ModelProto) -> int:
    """Largest (inputs + output) of one node at batch 1: a lower bound of the activation arena."""
    from edgerun.exporters.cuts import shapes_of

    shapes = shapes_of(model)
    inits = {i.name for i in model.graph.initializer}
    peak = 0
    for n in model.graph.node:
        live = [t for t in list(n.input) + list(n.output) if t and t not in inits and t in shapes]
        peak = max(peak, sum(int(np.prod(shapes[t])) * 4 for t in live))
    return peak


def _nodes(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type != "Constant")


def _io_bytes(model: onnx.ModelProto, outputs: bool) -> int:
    from edgerun.exporters.cuts import shapes_of

    shapes = shapes_of(model)
    vis = model.graph.output if outputs else model.graph.input
    return sum(int(np.prod(shapes[v.name])) * 4 for v in vis)


def _candidate(ctx: _Ctx, seg: dict, precision: str, codec: str, loss: float | None = None) -> Candidate:
    """Predicted costs of one candidate; ``loss`` is 0 for lossless ones, else measured (or None)."""
    if _lossless(precision, codec):
        loss = 0.0
    mid = ctx.traced.source.model_id
    scale = _PRECISION_BYTES[precision] / 4.0
    dev_ms, dev_src = (0.0, "none") if seg["index"] == -1 else ctx.device.predict_ms(
        mid, seg["index"], precision, seg["front_macs"], seg["front_nodes"])
    srv_ms, srv_src = (0.0, "none") if seg["index"] == WHOLE else ctx.server.predict_ms(
        mid, seg["index"], "fp32", seg["back_macs"], seg["back_nodes"])
    if seg["index"] == WHOLE:
        up = down = 0
        net_ms = 0.0
    else:
        crossing = seg["crossing_bytes"]
        if codec != "none" and ctx.meter is not None and seg["index"] >= 0:
            crossing = int(round(ctx.meter.codec_bytes(seg["index"])))  # measured on calibration data
        up = crossing + MESSAGE_OVERHEAD_BYTES
        down = ctx.outputs_bytes + MESSAGE_OVERHEAD_BYTES
        net_ms = ctx.link.network_ms(up, down) + ctx.transport_ms
    mem = int(seg["front_weight_bytes"] * scale) + seg["front_act_bytes"]
    total = dev_ms + net_ms + srv_ms
    viol = _violations(ctx.budgets, total, mem, loss)
    return Candidate(seg["label"], seg["index"], precision, codec, dev_ms, int(up + down), net_ms, srv_ms, total,
                     mem, loss, not viol, tuple(viol), {"device_ms": dev_src, "server_ms": srv_src})


def _violations(b: Budgets, total: float, mem: int, loss: float | None) -> list[str]:
    v = []
    if b.max_latency_ms is not None and total > b.max_latency_ms:
        v.append("max_latency_ms")
    if b.max_device_mem_mb is not None and mem > b.max_device_mem_mb * 2**20:
        v.append("max_device_mem_mb")
    if b.max_accuracy_drop is not None and loss is not None and loss > b.max_accuracy_drop:
        v.append("max_accuracy_drop")
    return v


def _segments(traced: Any) -> list[dict]:
    """Per candidate split: MACs, nodes, weights and activations on each side."""
    from edgerun.exporters.split import split

    model = traced.model
    total = traced.cuts[0].front_macs + traced.cuts[0].back_macs if traced.cuts else 0
    n_all, w_all, act_all = _nodes(model), _init_bytes(model), _peak_activation_bytes(model)
    segs = [{"label": ALL_ON_SERVER, "index": -1, "front_macs": 0, "back_macs": total, "front_nodes": 0,
             "back_nodes": n_all, "crossing_bytes": _io_bytes(model, outputs=False),
             "front_weight_bytes": 0, "front_act_bytes": _io_bytes(model, outputs=False)}]
    for cut in traced.cuts:
        front, back = split(model, cut)
        segs.append({"label": cut.label, "index": cut.index, "front_macs": cut.front_macs,
                     "back_macs": cut.back_macs, "front_nodes": _nodes(front), "back_nodes": _nodes(back),
                     "crossing_bytes": cut.crossing_bytes, "front_weight_bytes": _init_bytes(front),
                     "front_act_bytes": _peak_activation_bytes(front)})
    segs.append({"label": ALL_ON_DEVICE, "index": WHOLE, "front_macs": total, "back_macs": 0, "front_nodes": n_all,
                 "back_nodes": 0, "crossing_bytes": 0, "front_weight_bytes": w_all, "front_act_bytes": act_all})
    return segs


# ----------------------------------------------------------------------------- plan
def plan(model: Any, device: str | DeviceProfile, server: str | ServerProfile, link: str | LinkProfile,
         budgets: Budgets | None = None, *, calib_n: int = 32,
         transport_overhead_ms: float = TRANSPORT_OVERHEAD_MS, splits_only: bool = False) -> Plan:
    """Evaluate every candidate and choose the fastest one that meets the budgets.

    Args:
        model: ``zoo:NAME`` / ``file.py:fn`` spec, or a ``Traced`` from ``pipeline.trace_model``.
        device, server, link: profile names (``devices/<name>.toml``), paths, or loaded profiles.
        budgets: the limits (default: none).
        calib_n: calibration samples used to measure the metric loss of lossy candidates.
        transport_overhead_ms: per-request software cost of the MQTT path beyond the link.
        splits_only: leave out "all on the server" / "all on the device" (what export needs).

    Returns:
        A Plan; ``plan.chosen`` is None when no candidate is feasible (``plan.reason`` says
        which budget cannot be met and by how much).

    Raises:
        ConfigError: a profile is missing or malformed, or a budget is negative.
    """
    from edgerun.exporters.pipeline import Traced, trace_model

    budgets = budgets or Budgets()
    dev = device if isinstance(device, DeviceProfile) else load_device(device)
    if budgets.max_device_mem_mb is None or budgets.max_device_mem_mb > dev.memory_mb:
        # the device's own memory bounds the front half (it was read and never used: a plan put a
        # 27 MiB model on an 8 MiB device)
        budgets = dataclasses.replace(budgets, max_device_mem_mb=dev.memory_mb)
    srv = server if isinstance(server, ServerProfile) else load_server(server)
    lnk = link if isinstance(link, LinkProfile) else load_link(link)
    traced = model if isinstance(model, Traced) else trace_model(model)
    calib = traced.source.zoo.calib_data(calib_n) if traced.source.zoo is not None else None
    several = len(traced.model.graph.input) > 1
    if several:  # the loss meter feeds one input (a model file's --data of several inputs has one array each)
        calib = None
    meter = None
    if calib is not None:
        from edgerun.exporters.planner_loss import LossMeter

        meter = LossMeter(traced, calib)
    # a precision the device profile has no compute figures for cannot be predicted: not planned
    precisions = [p for p in (available_precisions() if meter is not None else ["fp32"]) if p in dev.compute]
    codecs = available_codecs() if meter is not None else ["none"]
    ctx = _Ctx(traced, calib, dev, srv, lnk, budgets, float(transport_overhead_ms),
               _io_bytes(traced.model, outputs=True), meter)
    cands = []
    for seg in _segments(traced):
        if splits_only and seg["index"] in (-1, WHOLE):
            continue
        for prec in (["fp32"] if seg["index"] == -1 else precisions):
            for codec in (["none"] if seg["index"] in (-1, WHOLE) else codecs):
                cands.append(_candidate(ctx, seg, prec, codec))
    cands = _choose(ctx, cands)
    chosen = cands[0] if cands and cands[0].feasible else None
    reason = _reason(chosen, cands, budgets)
    stale = stale_profile_note(dev) if Path(dev.path).stem == "this-machine" else ""
    notes = (stale,) if stale else ()
    if several and traced.source.zoo is not None:
        notes += ("a model with several inputs: only fp32 without a codec is planned (the loss of int8 / int4 "
                  "fronts and of the tsq codec is measured on one-input models only); export with --front-precision "
                  "/ --codec and read the measured loss in report.json",)
    return Plan(traced.source.model_id, dev.name, srv.name, lnk.name, budgets, cands, chosen, reason, notes)


def _choose(ctx: _Ctx, cands: list[Candidate]) -> list[Candidate]:
    """Rank candidates; measure the metric loss of lossy ones lazily, fastest first.

    A lossy candidate is measured only while no faster candidate is feasible, so the
    planner pays only for the measurements that can change its choice.
    """
    by_time = sorted(cands, key=lambda c: (c.total_ms, c.device_mem_bytes))
    done: list[Candidate] = []
    found = False
    for c in by_time:
        lossy = c.metric_loss is None
        # every lossy candidate with a device half is measured (the whole model quantized too: it
        # was never measured, so "all on the device, int8" could never be chosen)
        if not found and lossy and not c.violations and ctx.meter is not None and c.cut_index >= 0:
            loss, _ = ctx.meter.measure(c.cut_index, c.front_precision, c.codec)
            viol = _violations(ctx.budgets, c.total_ms, c.device_mem_bytes, loss)
            c = Candidate(**{**c.__dict__, "metric_loss": loss, "feasible": not viol, "violations": tuple(viol)})
        elif lossy:  # never measured: a faster candidate is already feasible (or no calibration data)
            why = "loss_not_measured:slower_than_a_feasible_plan" if found else "loss_not_measured"
            c = Candidate(**{**c.__dict__, "feasible": False, "violations": c.violations + (why,)})
        found = found or c.feasible
        done.append(c)
    return sorted(done, key=lambda c: (not c.feasible, c.total_ms, c.device_mem_bytes))


def _reason(chosen: Candidate | None, cands: list[Candidate], b: Budgets) -> str:
    if chosen is not None:
        return (f"fastest feasible of {len(cands)} candidates: cut {chosen.cut}, {chosen.front_precision}, "
                f"codec {chosen.codec}, {chosen.total_ms:.2f} ms predicted")
    if not cands:
        return "no candidate could be evaluated"
    msgs = []
    checks = (("max_latency_ms", b.max_latency_ms, min(c.total_ms for c in cands), "ms"),
              ("max_device_mem_mb", b.max_device_mem_mb, min(c.device_mem_bytes for c in cands) / 2**20, "MiB"),
              ("max_accuracy_drop", b.max_accuracy_drop,
               min((c.metric_loss for c in cands if c.metric_loss is not None), default=0.0), ""))
    for name, limit, best, unit in checks:
        if limit is not None and best > limit:
            msgs.append(f"{name}={limit:g} cannot be met: the best candidate needs {best:.3g}{unit} "
                        f"({best - limit:.3g}{unit} over)")
    if not msgs:
        msgs.append("each budget can be met alone but no candidate meets all of them together; "
                    "relax one (see the candidates' `violations`)")
    return "no feasible plan: " + "; ".join(msgs)


__all__ = ["ALL_ON_DEVICE", "ALL_ON_SERVER", "Budgets", "DEFAULT_MAX_ACCURACY_DROP", "Candidate", "Plan", "available_codecs",
           "available_precisions", "plan"]
