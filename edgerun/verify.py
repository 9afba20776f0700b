"""``edgerun verify``: check a bundle before deploying it.

Runs the front half on the native engine and on onnxruntime, and the split
(front then back) against the whole model, on the bundle's sample inputs.
An fp32 front must match onnxruntime to float rounding. A quantized front
(int8 / int4 weights, 8-bit activations) differs from onnxruntime's fp32 front
by its quantization error, by design: its relative L2 error on the samples must
stay within ``QUANT_REL_FACTOR`` x the error the exporter measured on the
calibration batch or the samples, the larger (manifest ``precisions.front_calib_rel_err`` /
``front_samples_rel_err``), plus
``QUANT_REL_SLACK``; a wrong kernel is far beyond that (errors of order 1).
Likewise the split against the whole fp32 model: to float rounding with an fp32
back half, within the same factor x the back half's measured error
(``precisions.back_calib_rel_err``) + slack with an fp16 / int8 one.
Needs no torch and no broker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgerun.bundle import Bundle
from edgerun.errors import BundleError, ConfigError
from edgerun.feeds import Inputs, as_feeds, float32, n_samples, with_passthrough

# Named tolerances: |a - b| <= ATOL + RTOL * max|reference| over the whole output.
# The native engine sums in a different order than onnxruntime (its own GEMM
# blocking), so fp32 rounding differs by a few ulps per accumulation.
NATIVE_VS_ORT_ATOL = 1e-4
NATIVE_VS_ORT_RTOL = 1e-4
# Split vs whole runs the same onnxruntime kernels; only graph-level fusions
# across the cut may change.
SPLIT_VS_WHOLE_ATOL = 1e-5
SPLIT_VS_WHOLE_RTOL = 1e-5
# Quantized fronts: the bundle's samples scatter around the calibration batch's error (measured:
# samples / calibration 1.19 digits int8, 1.06 EfficientNet blocks.7 int8, 1.09 its int4); a wrong
# kernel gives errors of order 1. Bundles without the recorded error get the slack only.
QUANT_REL_FACTOR = 2.0
QUANT_REL_SLACK = 0.02
# The codec: each row's dense part meets the budget (relative MSE) and the split-off large values
# travel exactly, so the whole tensor's relative MSE is at most the budget; 2x covers rows whose
# widest bit width cannot reach it. A broken encoder or decoder gives errors of order 1.
CODEC_MSE_FACTOR = 2.0
CODEC_MSE_SLACK = 1e-6


@dataclass
class VerifyReport:
    ok: bool
    native_vs_ort_max_abs: float | None
    native_vs_ort_limit: float | None
    split_vs_whole_max_abs: float
    split_vs_whole_limit: float | None                  # fp32 back half: the checked figure
    native_split_vs_whole_max_abs: float | None
    top1_agreement: float | None  # None for one value per sample (a top-1 over it is always 1.0)
    samples: int
    native: str
    messages: list[str]
    quantized: bool = False
    native_vs_ort_rel_l2: float | None = None        # quantized fronts: the checked figure
    native_vs_ort_rel_l2_limit: float | None = None
    split_vs_whole_rel_l2: float | None = None       # fp16 / int8 back half: the checked figure
    split_vs_whole_rel_l2_limit: float | None = None
    codec_rel_mse: float | None = None               # bundles with a codec: its round trip on the samples
    codec_rel_mse_limit: float | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _limit(ref: np.ndarray, atol: float, rtol: float) -> float:
    finite = np.abs(ref[np.isfinite(ref)])
    return atol + rtol * float(np.max(finite)) if finite.size else atol


def max_abs_diff(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| over the values finite in both; inf where only one is finite or their NaN / Inf differ.

    A model that gives NaN on some inputs (log of a ReLU) failed verify with "differs by nan > nan:
    re-export the bundle" although the split gave the whole model's NaN exactly; re-exporting changed nothing.
    """
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    fg, fr = np.isfinite(got), np.isfinite(ref)
    same = (np.isnan(got) & np.isnan(ref)) | (~fg & (got == ref))  # NaN and NaN, +Inf and +Inf, -Inf and -Inf
    if np.any((~fg | ~fr) & ~same):
        return float("inf")
    both = fg & fr
    return float(np.max(np.abs(got[both] - ref[both]))) if both.any() else 0.0


def verify(bundle: Bundle | str, *, threads: int = 1, engine: str = "native") -> VerifyReport:
    """Compare native vs onnxruntime and split vs whole on the bundle's samples.

    Args:
        bundle: a Bundle or a path to one.
        threads: threads for both engines (same count, fair comparison).
        engine: the device engine the bundle will be deployed with: ``native`` (checked
            against onnxruntime) or ``ort`` (the onnxruntime front half; the native check
            is skipped, so a front half the native engine cannot run can still pass).

    Returns:
        A VerifyReport; ``ok`` is False when a difference exceeds its tolerance
        or (``engine="native"``) the native engine cannot run the front half.

    Raises:
        BundleError: the bundle cannot be loaded.
        ConfigError: an unknown ``engine``.
    """
    from edgerun.engine import check_io, make_engine

    if engine not in ("native", "ort"):
        raise ConfigError(f"engine {engine!r}: use 'native' or 'ort'")

    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    b.require("samples.npz", "front.onnx", "back.onnx", "whole.onnx", *(["front.erg"] if engine == "native" else []),
              why="`edgerun verify` (the split against the whole model)")
    x = _checked_samples(b)
    msgs: list[str] = []
    ort_front = make_engine("ort", onnx_path=b.file("front.onnx"), threads=threads)
    back = make_engine("ort", onnx_path=b.file("back.onnx"), threads=threads)
    whole = make_engine("ort", onnx_path=b.file("whole.onnx"), threads=threads)
    ins, cut, outs = [s.name for s in b.inputs], [s.name for s in b.cut], [s.name for s in b.outputs]
    passed = b.passthrough
    computed = [t for t in cut if t not in passed]
    check_io(b.file("front.onnx"), ort_front.input_names, ort_front.output_names, ins, computed, some_inputs=True)
    for name, eng, want in (("back.onnx", back, (cut, outs)), ("whole.onnx", whole, (ins, outs))):
        check_io(b.file(name), eng.input_names, eng.output_names, *want)
    feeds = as_feeds(x, ins)
    refs = whole.run(feeds)
    ref = refs[outs[0]]  # top-1 agreement is the first output's; the differences cover every output
    mid_ort = with_passthrough(ort_front.run(feeds), feeds, passed)
    splits = back.run(mid_ort)
    split_out = splits[outs[0]]
    # each output against its own scale; the one nearest its limit is reported
    pairs = [(max_abs_diff(splits[o], refs[o]), _limit(refs[o], SPLIT_VS_WHOLE_ATOL, SPLIT_VS_WHOLE_RTOL)) for o in outs]
    split_err, worst_lim = max(pairs, key=lambda p: p[0] / p[1] if p[1] > 0 else float("inf"))
    prec = b.manifest.get("precisions", {})
    split_rel = split_rel_lim = None
    if prec.get("back", "fp32") == "fp32":
        split_lim = worst_lim
        ok = split_err <= split_lim
        if not ok:
            msgs.append(f"split vs whole differs by {split_err:.3g} > {split_lim:.3g}: re-export the bundle")
    else:  # an fp16 / int8 back half differs from the fp32 whole model by its own rounding
        split_lim = None
        split_rel = rel_l2([splits[o] for o in outs], [refs[o] for o in outs])
        # the larger of the export's two measurements: on the calibration crossings, and on the samples
        # (absent in older bundles); static int8 ranges clip what the calibration batch did not reach
        measured = max(float(prec.get("back_calib_rel_err") or 0.0), float(prec.get("back_samples_rel_err") or 0.0))
        split_rel_lim = QUANT_REL_FACTOR * measured + QUANT_REL_SLACK
        ok = split_rel <= split_rel_lim
        if not ok:
            msgs.append(f"the split with the {prec['back']} back half differs from the whole fp32 model by a relative "
                        f"L2 error of {split_rel:.3g} > {split_rel_lim:.3g} ({QUANT_REL_FACTOR:g} x the {measured:.3g} the "
                        "exporter measured + slack): re-export the bundle; if it persists, report this bug")
    nat_err = nat_lim = nat_split = rel = rel_lim = None
    quantized = False
    native_state = "skipped"
    if engine == "native" and b.native_ok:  # (--engine ort deploys front.onnx, checked above)
        native = make_engine("native", erg_path=b.file("front.erg"), threads=threads, max_batch=n_samples(x))
        check_io(b.file("front.erg"), native.input_names, native.output_names, ins, computed, some_inputs=True)
        mid_nat = with_passthrough(native.run(feeds), feeds, passed)
        nat_err, nat_lim = 0.0, 0.0
        for t in b.cut:
            nat_err = max(nat_err, max_abs_diff(mid_nat[t.name], mid_ort[t.name]))
            nat_lim = max(nat_lim, _limit(mid_ort[t.name], NATIVE_VS_ORT_ATOL, NATIVE_VS_ORT_RTOL))
        nat_outs = back.run(mid_nat)
        nat_split = max(max_abs_diff(nat_outs[o], refs[o]) for o in outs)
        quantized = prec.get("front", "fp32") != "fp32"
        if quantized:
            rel = rel_l2([mid_nat[t.name] for t in b.cut], [mid_ort[t.name] for t in b.cut])
            measured = max(float(prec.get("front_calib_rel_err") or 0.0), float(prec.get("front_samples_rel_err") or 0.0))
            rel_lim = QUANT_REL_FACTOR * measured + QUANT_REL_SLACK
            bad = rel > rel_lim
            if bad:
                msgs.append(f"the quantized native front differs from onnxruntime's fp32 front by a relative L2 "
                            f"error of {rel:.3g} > {rel_lim:.3g} ({QUANT_REL_FACTOR:g} x the {measured:.3g} "
                            "the exporter measured + slack): re-export the bundle; if it persists, report this bug")
        else:
            bad = nat_err > nat_lim
            if bad:
                msgs.append(f"native engine differs from onnxruntime by {nat_err:.3g} > {nat_lim:.3g}: report this bug")
        native_state = "mismatch" if bad else "ok"
        ok = ok and not bad
    elif engine == "native":
        ok = False
        native_state = "unsupported"
        msgs.append(f"the native engine cannot run this front half ({b.native_reason}); "
                    "`edgerun verify --engine ort` checks the bundle for that deployment")
    one_value = ref.ndim == 1 or ref.shape[-1] == 1  # a regression output: a top-1 over it says nothing
    agree = None if one_value else float(np.mean(split_out.argmax(-1) == ref.argmax(-1)))
    codec_mse = codec_lim = None
    entry = b.manifest.get("codec") or {}
    if entry.get("id", "none") != "none":  # the deployed path: the device's encoder, the server's decoder
        from edgerun import crossing

        src = mid_nat if engine == "native" and b.native_ok else mid_ort
        cut_arrays = [np.ascontiguousarray(src[t.name], dtype=np.float32) for t in b.cut]
        decoded = crossing.unpack(crossing.Packer(entry).pack(dict(zip(cut, cut_arrays))))
        codec_mse = rel_l2(decoded, cut_arrays) ** 2
        codec_lim = CODEC_MSE_FACTOR * float(entry.get("budget") or 0.0) + CODEC_MSE_SLACK
        if codec_mse > codec_lim:
            ok = False
            msgs.append(f"the {entry['id']} codec's round trip has a relative MSE of {codec_mse:.3g} > {codec_lim:.3g} "
                        f"({CODEC_MSE_FACTOR:g} x its budget {entry.get('budget')} + slack): the encoder or decoder "
                        "here is broken; report this bug")
    return VerifyReport(ok, nat_err, None if quantized else nat_lim, split_err, split_lim, nat_split, agree,
                        n_samples(x), native_state, msgs, quantized, rel, rel_lim, split_rel, split_rel_lim,
                        codec_mse, codec_lim)


def _checked_samples(b: Bundle) -> Inputs:
    """The bundle's samples as float32, each input's shape checked against the manifest (every check of
    ``verify`` would pass on inputs that ``run`` then refuses)."""
    x = float32(b.samples())
    got = x if isinstance(x, dict) else {b.inputs[0].name: x}
    names = [s.name for s in b.inputs]
    if set(got) != set(names):
        raise BundleError(f"bundle {b.path}: samples.npz holds inputs {sorted(got)}, but the manifest's inputs are "
                          f"{names}: re-export the bundle")
    for spec in b.inputs:
        if not spec.matches(tuple(got[spec.name].shape)):
            raise BundleError(f"bundle {b.path}: samples.npz holds inputs of shape {list(got[spec.name].shape)}, but "
                              f"the manifest's input {spec.name!r} has shape {list(spec.shape)}: re-export the bundle")
    if len({len(a) for a in got.values()}) != 1:
        raise BundleError(f"bundle {b.path}: samples.npz holds different numbers of samples per input: re-export the "
                          "bundle")
    return x


def rel_l2(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """||got - ref|| / ||ref|| over all the tensors together (the exporter measures the back half with it too).

    Over the values finite in both (a model may give NaN on some inputs); inf where one side's NaN / Inf is
    not the other's (see ``max_abs_diff``).
    """
    num = den = 0.0
    for g, r in zip(got, ref):
        g, r = np.asarray(g, dtype=np.float64), np.asarray(r, dtype=np.float64)
        if max_abs_diff(g, r) == float("inf"):
            return float("inf")
        both = np.isfinite(g) & np.isfinite(r)
        num += float(np.sum((g[both] - r[both]) ** 2))
        den += float(np.sum(r[both] ** 2))
    return float(np.sqrt(num / max(den, 1e-30)))
