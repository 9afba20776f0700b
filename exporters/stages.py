"""The lossy stages of export, each calibrated on real data: front precision and the wire codec.

``pipeline.export`` calls these; each returns what goes in the manifest.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from edgerun.errors import ConfigError, UnsupportedOpError

if TYPE_CHECKING:
    from edgerun.exporters.pipeline import ExportConfig


def write_front(front: onnx.ModelProto, path: Path, calib_x: np.ndarray | dict[str, np.ndarray],
                cfg: ExportConfig) -> dict:
    """Choose the front half's precision per layer and write it for the native engine.

    ``cfg.max_device_mem_mb`` is what ``auto`` fits; with a fixed precision (e.g. the one a
    plan chose) the written front is checked against it.

    Returns:
        ``{"ok", "reason", "precision", "layers", "fp32_acts", "calib_error", "weight_bytes",
        "arena_bytes", "scratch_bytes", "rounding"}`` (``calib_error``: the quantized front's relative
        L2 error on the calibration batch, 0 for fp32; ``arena_bytes``: the activation arena at batch 1;
        ``rounding``: ``PrecisionPlan.rounding_report()``, None for fp32);
        ``ok`` is False (with the engine's reason) when the native engine cannot run this
        front half, unless ``cfg.require_native``, which raises instead.

    Raises:
        ConfigError: weights + arena exceed ``cfg.max_device_mem_mb``; or a budget, or a precision
            other than fp32, is given for a front half the native engine cannot run (its memory
            cannot be measured; onnxruntime would run it at fp32).
    """
    from edgerun.exporters.erg import write_erg

    layers: dict[str, str] = {}
    fp32_acts: list[str] = []
    rounding = None  # a quantized front: how its layers were rounded (PrecisionPlan.rounding_report)
    calib_error = 0.0
    precision = cfg.front_precision
    try:
        if precision == "fp32":
            info = write_erg(front, path)
        else:
            from edgerun.exporters.quantize_front import FrontPrecisionConfig, plan_front_precision

            plan = plan_front_precision(
                front, _front_inputs(front, calib_x),
                FrontPrecisionConfig(precision, cfg.group_size, cfg.max_device_mem_mb if precision == "auto" else None,
                                     act=cfg.front_act),
            )
            layers = dict(plan.precisions)
            print(plan.table(), file=sys.stderr)  # the exporter prints the per-layer choice
            fp32_acts, calib_error = list(plan.fp32_acts), float(plan.error)
            rounding = plan.rounding_report()
            info = write_erg(front, path, precisions=layers, group_size=cfg.group_size, rounded=plan.rounded,
                             fp32_acts=fp32_acts)
            kinds = set(layers.values())
            precision = kinds.pop() if len(kinds) == 1 else "mixed"
    except UnsupportedOpError as exc:
        if cfg.require_native:
            raise
        if cfg.max_device_mem_mb is not None:
            raise ConfigError(f"--max-device-mem-mb is checked on the native engine, which cannot run this "
                              f"front half ({exc}); choose another cut, or drop the budget") from exc
        if cfg.front_precision != "fp32":  # onnxruntime would run it at fp32: not what was asked
            raise ConfigError(f"--front-precision {cfg.front_precision} runs on the native engine, which cannot run "
                              f"this front half ({exc}); choose a cut before that node (`edgerun export MODEL "
                              "--list-cuts`), or --front-precision fp32 to run it on onnxruntime") from exc
        return {"ok": False, "reason": str(exc), "precision": "fp32", "layers": {}, "weight_bytes": None}
    weight_bytes = int(info.get("weight_bytes", 0))
    arena_bytes, scratch_bytes = _arena_bytes(path)
    _check_device_memory(weight_bytes, arena_bytes, precision, cfg.max_device_mem_mb)
    return {"ok": True, "reason": "", "precision": precision, "layers": layers, "fp32_acts": fp32_acts,
            "calib_error": calib_error, "weight_bytes": weight_bytes, "arena_bytes": arena_bytes,
            "scratch_bytes": scratch_bytes, "rounding": rounding}


def _front_inputs(front: onnx.ModelProto, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
    """The calibration batch of the inputs the front half reads (a model's other inputs may pass through
    the cut to the back half)."""
    if isinstance(x, np.ndarray):
        return x
    return {i.name: x[i.name] for i in front.graph.input}


def _arena_bytes(path: Path) -> tuple[int, int]:
    """The native front's activation arena at batch 1 (what ``auto`` and the budget count with the
    weights) and its kernels' scratch (im2col rows, fused-chain strips: reported beside them)."""
    from edgerun.engine import NativeEngine

    eng = NativeEngine(path, max_batch=1, threads=1)
    return int(eng.arena_bytes), int(eng.scratch_bytes)


def _check_device_memory(weight_bytes: int, arena_bytes: int, precision: str, budget_mb: float | None) -> None:
    """Raise when the written front half (weights + arena) exceeds the device-memory budget."""
    if budget_mb is None or weight_bytes + arena_bytes <= budget_mb * 2**20:
        return
    need = (weight_bytes + arena_bytes) / 2**20
    raise ConfigError(
        f"the {precision} front half needs {need:.3f} MiB (weights {weight_bytes / 2**20:.3f} + activation "
        f"arena {arena_bytes / 2**20:.3f}), over --max-device-mem-mb {budget_mb:g}: use --front-precision "
        "auto (it picks each layer's precision to fit), a lower precision, or an earlier cut")


# Budgets tried by the automatic choice, smallest (most accurate) first.
AUTO_BUDGETS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 6e-2, 1e-1, 2e-1)
# Row layouts the automatic choice tries (edgerun.codec.LAYOUTS); the default one first.
AUTO_LAYOUTS = ("channel", "position")
# The automatic choice keeps the codec's ``split_loss`` against the uncoded split at most this:
# top-1 agreement >= 99.5 % on the calibration data and, for classifiers, a flip rate that the
# codec's measured noise predicts on unseen inputs (``predicted_flip_rate``) <= 0.5 %.
AUTO_MAX_LOSS = 0.005
AUTO_MIN_AGREEMENT = 1.0 - AUTO_MAX_LOSS  # the same rule as two figures (budget_rule, bench_codec)
AUTO_MAX_FLIP_RATE = AUTO_MAX_LOSS


def calibrate_codec(acts: dict[str, np.ndarray], cfg: ExportConfig, back_path: Path | None = None) -> dict:
    """Calibrate the wire codec on the fp32 cut activations; the manifest's ``codec`` entry.

    With ``cfg.codec_budget`` None the budget and the row layout are chosen on calibration
    data (``choose_codec``, which the planner calls too). A given budget uses the ``channel``
    layout.
    """
    if cfg.codec == "none":
        return {"id": cfg.codec}
    if cfg.codec_budget is None:
        from edgerun.exporters.evaluate import session

        return choose_codec(acts, session(back_path))
    return {"id": cfg.codec, "budget": cfg.codec_budget, "layout": "channel", "budget_rule": "given",
            **codec_params(acts, cfg.codec_budget, "channel")}


def front_samples_error(bundle_dir: Path, cut_tensors: list[str] | tuple[str, ...]) -> float:
    """Relative L2 error of the written native front against onnxruntime's fp32 front on the bundle's
    ``samples.npz`` (the inputs `edgerun verify` checks it on), over the front's outputs ``cut_tensors``."""
    from edgerun.bundle import load_samples
    from edgerun.engine import make_engine
    from edgerun.feeds import float32, n_samples
    from edgerun.verify import rel_l2

    x = float32(load_samples(bundle_dir / "samples.npz"))
    nat = make_engine("native", erg_path=bundle_dir / "front.erg", max_batch=n_samples(x)).run(x)
    ref = make_engine("ort", onnx_path=bundle_dir / "front.onnx").run(x)
    return rel_l2([nat[t] for t in cut_tensors], [ref[t] for t in cut_tensors])


def back_calib_error(fp32_back: Path, back: onnx.ModelProto, acts: dict[str, np.ndarray]) -> float:
    """Relative L2 error of the back half as written (fp16 / int8) against its fp32 self.

    Measured on the calibration crossings, all outputs together: ``||out - ref|| / ||ref||``.
    ``edgerun verify`` bounds the split-vs-whole difference of a quantized back half by it
    (manifest ``precisions.back_calib_rel_err``), as it bounds a quantized front by its own.
    """
    from edgerun.exporters.evaluate import session
    from edgerun.verify import rel_l2

    ref_s, got_s = session(fp32_back), session(back.SerializeToString())
    feeds = {i.name: acts[i.name] for i in ref_s.get_inputs()}
    return rel_l2(got_s.run(None, feeds), ref_s.run(None, feeds))


def back_samples_error(bundle_dir: Path, back: onnx.ModelProto, passthrough: list[str]) -> float:
    """The quantized back half's relative L2 error against the fp32 one (``bundle_dir / "back.onnx"``, still
    fp32 when this runs) on the crossings of the bundle's ``samples.npz``: the inputs `edgerun verify` checks
    it on. Static int8 ranges come from the calibration batch, and a sample beyond them is clipped (a
    model input passing through the cut: 0.0097 on calibration, 0.22 on the samples seen)."""
    from edgerun.bundle import load_samples
    from edgerun.engine import make_engine
    from edgerun.exporters.evaluate import session
    from edgerun.feeds import float32, with_passthrough
    from edgerun.verify import rel_l2

    x = float32(load_samples(bundle_dir / "samples.npz"))
    front = make_engine("ort", onnx_path=bundle_dir / "front.onnx")
    mid = with_passthrough(front.run(x), x, passthrough)
    ref_s, got_s = session(bundle_dir / "back.onnx"), session(back.SerializeToString())
    feeds = {i.name: mid[i.name] for i in ref_s.get_inputs()}
    return rel_l2(got_s.run(None, feeds), ref_s.run(None, feeds))


def codec_params(acts: dict[str, np.ndarray], budget: float, layout: str = "channel") -> dict:
    """``{"params": {tensor: hex of its tsq params}}`` calibrated on ``acts`` at ``budget``."""
    from edgerun import codec as tsq

    return {"params": {name: tsq.calibrate(a, budget=budget, layout=layout).to_bytes().hex()
                       for name, a in acts.items()}}


def choose_codec(acts: dict[str, np.ndarray], back) -> dict:
    """The tsq entry (``id``, ``budget``, ``layout``, ``budget_rule``, ``params``) chosen on ``acts``.

    For each layout (``AUTO_LAYOUTS``) budgets are tried from the smallest up, and the largest
    one before the back half's ``split_loss`` against the uncoded split exceeds
    ``AUTO_MAX_LOSS`` is that layout's candidate (scanning stops at the first failure: a lucky
    pass at a larger budget on few samples does not transfer); the candidate with the fewest
    calibration bytes per request is kept. When not even the smallest budget passes, the most
    accurate point (the default layout at the smallest budget).

    Args:
        acts: the cut's activations on the calibration inputs, ``{tensor: [n, ...]}``.
        back: an onnxruntime session of the fp32 back half.
    """
    names = [i.name for i in back.get_inputs()]
    ref = back.run(None, {n: acts[n] for n in names})[0]
    from edgerun.exporters.evaluate import one_value_per_sample

    regression = one_value_per_sample(ref)  # no top-1 to agree on
    best: tuple[float, str, float, dict] | None = None  # (calibration bytes per request, layout, budget, params)
    for layout in AUTO_LAYOUTS:
        chosen = None
        for budget in AUTO_BUDGETS:
            params = codec_params(acts, budget, layout)
            coded, nbytes = roundtrip_batch(codec_roundtrip(params), acts)
            out = back.run(None, {n: coded[n] for n in names})[0]
            if split_loss(ref, out, regression) > AUTO_MAX_LOSS:
                break
            chosen = (nbytes, layout, budget, params)
        if chosen is not None and (best is None or chosen[0] < best[0]):
            best = chosen
    if best is None:
        best = (0.0, AUTO_LAYOUTS[0], AUTO_BUDGETS[0], codec_params(acts, AUTO_BUDGETS[0], AUTO_LAYOUTS[0]))
    _, layout, budget, params = best
    return {"id": "tsq", "budget": budget, "layout": layout,
            "budget_rule": f"auto: per layout of {list(AUTO_LAYOUTS)}, the largest of {list(AUTO_BUDGETS)} with "
                           f"calibration agreement >= {AUTO_MIN_AGREEMENT} and predicted top-1 flip rate <= "
                           f"{AUTO_MAX_FLIP_RATE}; the layout with fewer bytes",
            **params}


def split_loss(ref: np.ndarray, out: np.ndarray, regression: bool) -> float:
    """How much a lossy split (``out``) loses against its reference outputs (``ref``), as a fraction.

    Classifiers: the share of samples whose top-1 changed or, when larger, the flip rate that
    the logit changes predict on unseen inputs (``predicted_flip_rate``; a few dozen calibration
    samples rarely hold the near-ties that flip first). Regression (``regression``): the mean
    absolute change relative to the reference's spread. The exporter's codec choice and the
    planner's loss of a candidate both use this rule.
    """
    if regression:
        return float(np.mean(np.abs(out - ref)) / (np.std(ref) or 1.0))
    loss = float(np.mean(out.argmax(-1) != ref.argmax(-1)))  # counted, so 1/200 is exactly 0.005
    if out.ndim == 2:  # [n, classes]
        loss = max(loss, predicted_flip_rate(ref, out))
    return loss


def predicted_flip_rate(ref: np.ndarray, out: np.ndarray) -> float:
    """The top-1 flip rate that a perturbation of the logits predicts on unseen inputs.

    A sample flips when the perturbation moves its top-1 minus runner-up gap by more than the
    gap. A small calibration set rarely holds the near-ties that flip first (EfficientNet-Lite0's
    eval crops have gaps down to 0.002; with 64 calibration crops tsq at blocks.7 flipped none of
    them at a budget that flipped 3.6 % of the eval crops), so every sample's gap change is paired
    with every sample's gap: the fraction of (gap, change) pairs where the change exceeds the gap
    estimates P(flip) for a perturbation independent of the gap. Measured against the eval flips
    of tsq's budgets at blocks.3 / blocks.7: 0.3-5.3 % predicted for 0-4.4 % seen.

    Args:
        ref: unperturbed logits ``[n, classes]``; out: the same samples' perturbed logits.
    """
    rows = np.arange(len(ref))
    order = np.argsort(ref, axis=1)
    top, second = order[:, -1], order[:, -2]
    gap = ref[rows, top] - ref[rows, second]
    change = np.abs((out[rows, top] - out[rows, second]) - gap)
    # for each change, how many gaps are strictly below it; averaged over all n * n pairs
    below = np.searchsorted(np.sort(gap), change, side="left")
    return float(below.sum() / (len(gap) * len(gap)))


def codec_roundtrip(entry: dict):
    """A function crossing -> (crossing after encode+decode, encode µs, decode µs, bytes).

    Encodes with the C++ encoder the device uses and decodes with the server's decoder.
    """
    from edgerun import codec as tsq
    from edgerun.crossing import decoder

    decode = decoder()
    params = {name: tsq.TSQParams.from_bytes(bytes.fromhex(h)) for name, h in entry["params"].items()}

    def roundtrip(mid: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float, int]:
        out, enc, dec, nbytes = {}, 0.0, 0.0, 0
        for name, x in mid.items():
            t0 = time.perf_counter()
            payload = tsq.encode_native(np.ascontiguousarray(x), params[name])
            t1 = time.perf_counter()
            out[name] = decode(payload, x.shape, params[name])
            t2 = time.perf_counter()
            enc += (t1 - t0) * 1e6
            dec += (t2 - t1) * 1e6
            nbytes += len(payload) + len(params[name].to_bytes())
        return out, enc, dec, nbytes

    return roundtrip


def roundtrip_batch(roundtrip, acts: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """Send every sample of ``acts`` through ``roundtrip`` as one request each.

    Returns:
        The decoded batch and the mean bytes per request.
    """
    n = len(next(iter(acts.values())))
    rows, total = [], 0
    for j in range(n):
        decoded, _, _, nbytes = roundtrip({k: v[j : j + 1] for k, v in acts.items()})
        rows.append(decoded)
        total += nbytes
    return {k: np.concatenate([r[k] for r in rows]) for k in acts}, total / n
