"""``export``: torch model -> ONNX -> cut -> halves -> native graph -> bundle.

Example:
    >>> from edgerun.exporters import export, ExportConfig     # doctest: +SKIP
    >>> bundle = export("zoo:digits-cnn", ExportConfig(cut="block1"), "bundles/digits")  # doctest: +SKIP
    >>> bundle.cut_label                                        # doctest: +SKIP
    'block1'
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from edgerun import __version__
from edgerun.bundle import Bundle, TensorSpec, save_samples, write_manifest
from edgerun.errors import ConfigError, ExportError
from edgerun.exporters import trace
from edgerun.exporters.cuts import Cut, cut_at_an_end, find_cuts, resolve_cut, shapes_of
from edgerun.exporters.evaluate import TASKS, calibration_activations, evaluate_split, is_regression
from edgerun.exporters.models import SourceModel, resolve_model
from edgerun.exporters.out_dir import building, check_out_dir
from edgerun.exporters.quantize_back import BACK_PRECISIONS, quantize_back
from edgerun.exporters.quantize_front import ACTS as FRONT_ACTS
from edgerun.exporters.quantize_front import MODES as FRONT_PRECISIONS
from edgerun.exporters.split import passthrough, split
from edgerun.exporters.user_data import UserData
from edgerun.feeds import Inputs, concat, float32, rows

N_SAMPLES = 8
CODECS = ("none", "tsq")


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how.

    Args:
        cut: cut index, label or crossing tensor name; None = the default cut.
        max_cut_tensors: most tensors allowed to cross the cut.
        evaluate: measure the split against the whole model on the model's held-out data.
        eval_limit: cap on evaluation samples (None = all).
        require_native: fail when the native engine cannot run the front half
            (default False: the bundle is written and the device must use ``--engine ort``).
        front_precision: ``fp32``, ``int8``, ``int4`` or ``auto`` (per layer, by measured
            sensitivity, under ``max_device_mem_mb``).
        group_size: int4 group size along the reduction axis.
        max_device_mem_mb: device memory budget (weights + activation arena) for ``auto``.
        front_act: activations of the front's int8 Conv layers: ``int8`` (int8 GEMM, per-pixel
            8-bit activations: faster) or ``fp32`` (int8 weights dequantized per run: more
            accurate, fp32 speed); see ``quantize_front.FrontPrecisionConfig``.
        back_precision: ``fp32``, ``fp16`` or ``int8`` (onnxruntime's own tools).
        codec: activation codec on the wire: ``none`` or ``tsq``.
        codec_budget: tsq distortion budget (relative MSE of the dense part); None = chosen on
            calibration data (see ``stages.calibrate_codec``).
        calib_samples: calibration inputs for quantization and the codec.
        exits: early exits: None / "none", "auto" (2 intermediate + the deepest at the cut)
            or a number of exits (see ``exporters.exits``).
        budgets: named exit budgets (``exits.Budget``); None = fast / balanced / accurate.
        data: a model file's own samples (``.npz``, see ``exporters.user_data``): calibration and
            evaluation on them instead of on its example plus noise; exits become possible.
        task: how the first output is scored: ``classify`` (top-1; exits by max probability),
            ``regress`` (mean abs error; exits by action consistency) or ``auto`` (the zoo's or the
            labels' metric, else regress for one value per sample: ``evaluate.is_regression``).
    """

    cut: str | int | None = None
    max_cut_tensors: int = 1
    evaluate: bool = True
    eval_limit: int | None = None
    require_native: bool = False
    front_precision: str = "fp32"
    group_size: int = 32
    max_device_mem_mb: float | None = None
    front_act: str = "int8"
    back_precision: str = "fp32"
    codec: str = "none"
    codec_budget: float | None = None
    calib_samples: int = 64
    exits: str | int | None = None
    budgets: tuple | None = None
    data: str | Path | None = None
    task: str = "auto"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r}: use one of {TASKS}")
        if self.front_precision not in FRONT_PRECISIONS:
            raise ConfigError(f"front_precision {self.front_precision!r}: use one of {FRONT_PRECISIONS}")
        if self.front_act not in FRONT_ACTS:
            raise ConfigError(f"front_act {self.front_act!r}: use one of {FRONT_ACTS}")
        if self.back_precision not in BACK_PRECISIONS:
            raise ConfigError(f"back_precision {self.back_precision!r}: use one of {BACK_PRECISIONS}")
        if self.codec not in CODECS:
            raise ConfigError(f"codec {self.codec!r}: use one of {CODECS}")
        if self.codec_budget is not None and not 0 < self.codec_budget < 1:
            raise ConfigError(f"codec_budget is a relative MSE in (0, 1), got {self.codec_budget}; "
                              "try 1e-3, or leave it unset to choose it on calibration data")
        if self.calib_samples < 1:
            raise ConfigError(f"calib_samples must be >= 1, got {self.calib_samples}")
        if self.max_cut_tensors < 1:
            raise ConfigError(f"max_cut_tensors must be >= 1 (got {self.max_cut_tensors}); use 1 for single-tensor cuts")
        if self.exits is not None:
            from edgerun.exporters.exits import parse_exits

            parse_exits(self.exits)  # raises ConfigError on a bad value
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError(f"eval_limit must be >= 1 or None (got {self.eval_limit})")
        from edgerun.exporters.erg_quant import check_group_size

        try:  # else the int4 writer refused it after the trace and calibration: minutes lost
            check_group_size(self.group_size)
        except ConfigError:
            raise ConfigError(f"--group-size {self.group_size}: an int4 group is an even number of weights "
                              "in 2..4096 (default 32; a size that does not divide a layer's inputs is "
                              "padded)") from None
        if self.codec_budget is not None and self.codec == "none":
            raise ConfigError(f"codec_budget={self.codec_budget} is set but codec is 'none'; "
                              "add --codec tsq, or drop --codec-budget")


@dataclass
class Traced:
    """A traced model and its cuts: what ``--list-cuts`` shows and ``export`` consumes."""

    source: SourceModel
    model: onnx.ModelProto
    cuts: list[Cut]


def trace_model(spec: str | SourceModel, *, max_cut_tensors: int = 1, data: str | Path | None = None,
                task: str = "auto") -> Traced:
    """Resolve ``spec`` (see ``models.resolve_model``), trace it, and find its cuts.

    ``data``: a model file's own samples (``exporters.user_data``), checked against its example here.
    ``task``: how its first output is scored (``ExportConfig.task``), checked against the output here.
    """
    src = resolve_model(spec) if isinstance(spec, str) else spec
    if data is not None:
        src = with_user_data(src, data)
    model = trace.to_onnx(src.module, src.example, input_name=src.input_names[0], output_name="logits")
    src = with_task(src, task, model)
    _check_labels(src, model)
    return Traced(src, model, find_cuts(model, max_tensors=max_cut_tensors))


def export(spec: str | SourceModel | Traced, config: ExportConfig, out_dir: str | Path) -> Bundle:
    """Export a model as a split bundle.

    Args:
        spec: model spec (``zoo:NAME`` or ``file.py:fn``), a SourceModel, or a Traced model.
        config: the export options.
        out_dir: the bundle directory to write (replaced if it holds an old bundle and nothing else:
            ``out_dir.check_out_dir``).

    Returns:
        The written, verified bundle.

    Raises:
        ExportError / ConfigError: the model or the cut cannot be exported as asked.
        UnsupportedOpError: ``require_native`` and the native engine cannot run the front half.
    """
    final = check_out_dir(out_dir)  # before tracing: a bad --out fails in a second, not minutes
    if isinstance(spec, Traced):
        traced = spec
        if config.data is not None and not isinstance(traced.source.zoo, UserData):
            traced = Traced(with_user_data(traced.source, config.data), traced.model, traced.cuts)
    else:
        traced = trace_model(spec, max_cut_tensors=config.max_cut_tensors, data=config.data)
    user = traced.source.zoo
    if isinstance(user, UserData) and not user.exits and config.exits not in (None, "none", "0", 0):
        # --exits: more of the user's samples train the heads (and are no longer held out)
        traced = Traced(with_user_data(traced.source, user.path, exits=True, notes=False), traced.model, traced.cuts)
    if config.task != "auto":
        traced = Traced(with_task(traced.source, config.task, traced.model), traced.model, traced.cuts)
    # the labels as the data and task now read them (a new UserData for --exits reads its labels afresh)
    _check_labels(traced.source, traced.model)
    cut = _resolve_cut(traced, config)
    with building(final) as out, _synthetic_input_failures(traced.source):
        _write_bundle(traced, cut, out, config)
        Bundle.load(out)  # a bundle that would not load must not replace the one at --out
    return Bundle.load(final)


def with_user_data(src: SourceModel, data: str | Path, *, exits: bool = False, notes: bool = True) -> SourceModel:
    """``src`` measured on the samples of ``data`` (``--data``); ``exits``: some of them train exit heads.

    Raises:
        ConfigError: ``src`` is a zoo model (it comes with its own data), or the file does not fit it.
    """
    if src.zoo is not None and not isinstance(src.zoo, UserData):
        raise ConfigError(f"--data is for a model file; zoo:{src.model_id} comes with its own data: drop --data")
    ex = src.example_inputs()
    examples = [ex] if isinstance(ex, np.ndarray) else [ex[n] for n in src.input_names]
    user = UserData(data, src.input_names, examples, exits=exits)
    for note in user.range_notes(src.input_names, examples) if notes else ():
        print(note, file=sys.stderr)
    return replace(src, zoo=user)


def with_task(src: SourceModel, task: str, model: onnx.ModelProto) -> SourceModel:
    """``src`` scored as ``task`` (``--task classify`` / ``regress``).

    Raises:
        ConfigError: ``classify`` for a first output of one value per sample (no top-1 to take), or a task
            that contradicts the zoo model's own metric.
    """
    if task == "auto":
        return src
    if task not in TASKS:
        raise ConfigError(f"--task {task!r}: use one of {TASKS}")
    metric = getattr(src.zoo, "metric", None)
    if isinstance(src.zoo, UserData):
        if metric == "mae" and task == "classify":  # float targets (integer ids for one value stay open)
            raise ConfigError(f"--task classify: the labels of {src.zoo.name} are targets, not class ids: drop "
                              "--task, or save integer class ids [N]")
    elif metric is not None and (metric in ("action_mae", "mae")) != (task == "regress"):
        raise ConfigError(f"--task {task}: zoo:{src.model_id} is scored by {metric}; drop --task")
    out = model.graph.output[0]
    dims = out.type.tensor_type.shape.dim
    if task == "classify" and (len(dims) <= 1 or (dims[-1].HasField("dim_value") and dims[-1].dim_value == 1)):
        raise ConfigError(f"--task classify: the model's first output {out.name!r} has one value per sample, so "
                          "there is no top-1 to take: use --task regress (or return one score per class)")
    return replace(src, task=task)


def _check_labels(src: SourceModel, model: onnx.ModelProto) -> None:
    """A model file's --data labels that cannot be scored against its first output fail now, not after the
    whole export (the evaluation at its end scores them)."""
    if isinstance(src.zoo, UserData):
        src.zoo.check_labels(_first_output_shape(model), src.task)


@contextmanager
def _synthetic_input_failures(src: SourceModel) -> Iterator[None]:
    """A file model is calibrated and measured on its example plus noise (``evaluate.synthetic_inputs``);
    onnxruntime failing on those inputs (a float-coded token id out of the vocabulary, an index out of
    range) ended the export with onnxruntime's traceback. Say what the inputs were and what to do."""
    try:
        yield
    except Exception as exc:
        if src.zoo is not None or not type(exc).__module__.startswith("onnxruntime"):
            raise
        first = " ".join(str(exc).split())[:300]
        raise ExportError(f"onnxruntime failed running the traced model on synthetic inputs (the example plus Gaussian "
                          f"noise of its spread: a model file brings no data): {first}. A model that takes only "
                          "inputs in a fixed range or set (token or class ids, indices, masks) cannot be exported "
                          "from a file; if yours takes any float input of the example's shape, report this bug") from exc


def _resolve_cut(traced: Traced, config: ExportConfig) -> Cut:
    """``resolve_cut``, and when the cut named exists with more crossing tensors than allowed, say so
    (`--cut c1` read off `--list-cuts --max-cut-tensors 2` was only "no valid cut named 'c1'")."""
    inputs = [i.name for i in traced.model.graph.input]
    try:
        return resolve_cut(traced.cuts, config.cut, inputs=inputs)
    except ExportError as exc:
        if config.cut is None or str(config.cut).isdigit() or not traced.cuts:  # (an index: another cut)
            raise
        at_an_end = cut_at_an_end(traced.model, traced.cuts, config.cut)  # at the output / input: no split
        if at_an_end is not None:
            raise ExportError(at_an_end) from None
        if config.cut in inputs:
            raise
        try:
            wider = resolve_cut(find_cuts(traced.model, max_tensors=8), config.cut, inputs=inputs)
        except ExportError:
            raise exc from None
        computed = [t for t in wider.tensors if t not in inputs]  # inputs passing through do not count
        passed = [t for t in wider.tensors if t in inputs]
        besides = f" besides the inputs passing through ({', '.join(passed)})" if passed else ""
        raise ExportError(f"cut {wider.label!r} crosses {len(computed)} tensors ({', '.join(computed)}){besides}, "
                          f"more than --max-cut-tensors {config.max_cut_tensors} allows: add --max-cut-tensors "
                          f"{len(computed)}, or choose a single-tensor cut (`--list-cuts`)") from None


def _write_bundle(traced: Traced, cut: Cut, out: Path, cfg: ExportConfig) -> None:
    from edgerun.exporters import stages

    front, back = split(traced.model, cut)
    onnx.save(traced.model, out / "whole.onnx")
    onnx.save(front, out / "front.onnx")
    save_samples(out / "samples.npz", _samples(traced.source))
    passed = passthrough(traced.model, cut.tensors)
    calib_x, calib_acts = calibration_activations(traced.source, out / "front.onnx", cfg.calib_samples, passed)
    native = stages.write_front(front, out / "front.erg", calib_x, cfg)
    if native["ok"] and native["precision"] != "fp32":
        native["samples_error"] = stages.front_samples_error(out, [o.name for o in front.graph.output])
    onnx.save(back, out / "back.onnx")  # fp32 first: the codec's budget is chosen against it
    codec = stages.calibrate_codec(calib_acts, cfg, out / "back.onnx")
    back_q = quantize_back(back, cfg.back_precision, calib_acts)
    back_err = 0.0 if back_q is back else stages.back_calib_error(out / "back.onnx", back_q, calib_acts)
    if not np.isfinite(back_err):
        raise ExportError(f"the {cfg.back_precision} back half gives NaN or Inf where the fp32 one does not, on the "
                          "calibration inputs (its activations there hold NaN / Inf, which its conversion cannot "
                          "scale): export with --back-precision fp32, or keep the model's values finite")
    # static int8 ranges clip inputs beyond the calibration batch's: measured on the samples too
    back_errs = (back_err, 0.0 if back_q is back else stages.back_samples_error(out, back_q, passed))
    onnx.save(back_q, out / "back.onnx")
    files = {
        "whole.onnx": {"role": "whole model, fp32 (reference; all-on-server mode)"},
        "front.onnx": {"role": "front half, fp32, onnxruntime (--engine ort)"},
        "back.onnx": {"role": f"back half, {cfg.back_precision}, server"},
        "samples.npz": {"role": "sample inputs for `edgerun verify`"},
        "report.json": {"role": "export report (accuracy, bytes, costs)"},
    }
    if native["ok"]:
        files["front.erg"] = {"role": f"front half, {native['precision']}, native engine"}
    exits = _build_exits(traced, cut, out, cfg, native["ok"], files)
    report = _report(traced, cut, out, cfg, native, codec, calib_acts, back_errs)
    manifest = _manifest(traced, cut, native, codec, cfg, files, back_errs)
    if exits is not None:
        manifest["exits"], report["exits"] = exits
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    write_manifest(out, manifest)


def _build_exits(traced: Traced, cut: Cut, out: Path, cfg: ExportConfig, native: bool, files: dict):
    """Early-exit segments and budgets (``exporters.exits``); adds their files to ``files``."""
    from edgerun.exporters.exits import build_exits, parse_exits

    n = parse_exits(cfg.exits)
    if n is None:
        return None
    ex_files, entry, rep = build_exits(traced, cut, out, n, cfg.budgets, native=native)
    files.update(ex_files)
    rep["asked"] = n  # more than fit before the cut gives the ones that fit (the summary says so)
    return entry, rep


def _samples(src: SourceModel) -> Inputs:
    """The bundle's sample inputs: held-out data for a zoo model (or a model file given --data); for a model file its example's
    first sample, then synthetic draws (``evaluate.synthetic_inputs``)."""
    if src.zoo is not None:
        x, _ = src.zoo.eval_data(limit=N_SAMPLES)
        return float32(rows(x, 0, N_SAMPLES))
    from edgerun.exporters.evaluate import SEED_SAMPLES, synthetic_inputs

    return concat([rows(src.example_inputs(), 0, 1), synthetic_inputs(src, N_SAMPLES - 1, seed=SEED_SAMPLES)])


def _first_output_shape(model: onnx.ModelProto) -> list:
    """The model's first output's shape without the batch."""
    return list(shapes_of(model)[model.graph.output[0].name][1:])


def _tensor_specs(model: onnx.ModelProto, names: list[str] | tuple[str, ...]) -> list[dict]:
    shapes = shapes_of(model)
    return [TensorSpec(n, (None, *shapes[n][1:]), "float32").to_json() for n in names]


def _report(traced: Traced, cut: Cut, out: Path, cfg: ExportConfig, native: dict, codec: dict,
            calib_acts: dict[str, np.ndarray], back_errs: tuple[float, float]) -> dict:
    from edgerun.exporters import stages

    rep = {
        "cut": cut.label,
        "cut_index": cut.index,
        "front_precision": native.get("layers") if native["precision"] == "mixed" else native["precision"],
        "front_precision_mode": cfg.front_precision,
        "front_act": cfg.front_act,  # the int8 Conv layers' activations (manifest: which layers)
        "front_rounding": native.get("rounding"),  # GPTQ'd layers, and those rounded to nearest instead
        "front_weight_bytes": native.get("weight_bytes"),
        "front_arena_bytes": native.get("arena_bytes"),  # activations at batch 1 (native engine)
        # the kernels' scratch at batch 1 and 1 thread (im2col rows, fused strips): device memory too,
        # not counted by --max-device-mem-mb (weights + arena), which the planner predicts
        "front_scratch_bytes": native.get("scratch_bytes"),
        "back_precision": cfg.back_precision,
        "back_calib_rel_err": back_errs[0],  # fp16 / int8 back vs fp32 on the calibration crossings
        "back_samples_rel_err": back_errs[1],  # the same on samples.npz (what verify checks)
        "codec": cfg.codec,
        "bytes_per_request_fp32": cut.crossing_bytes,
        "bytes_per_request": cut.crossing_bytes,
        "front_macs": cut.front_macs,
        "back_macs": cut.back_macs,
        "front_fraction": round(cut.front_fraction, 4),
        # how the first output is scored (`edgerun run` prints a top-1 only for "classify"), --no-eval too
        # with the batch, as is_regression takes it: [10] alone read as a one-value [batch] output (a regression)
        "task": "regress" if is_regression(traced.source, [1, *_first_output_shape(traced.model)]) else "classify",
    }
    if cfg.evaluate:
        roundtrip = stages.codec_roundtrip(codec) if codec["id"] != "none" else None
        rep.update(evaluate_split(traced.source, out, native=native["ok"],
                                  codec=roundtrip, limit=cfg.eval_limit))
        if roundtrip is not None:
            rep["bytes_per_request"] = int(round(rep["codec_bytes_mean"]))
    elif codec["id"] != "none":  # not evaluated: the codec's bytes on the calibration crossings
        rep["bytes_per_request"] = int(round(stages.roundtrip_batch(stages.codec_roundtrip(codec), calib_acts)[1]))
        rep["bytes_per_request_on"] = "calibration data (--no-eval)"
    return rep


def _manifest(traced: Traced, cut: Cut, native: dict, codec: dict, cfg: ExportConfig, files: dict,
              back_errs: tuple[float, float]) -> dict:
    model = traced.model
    return {
        "model_id": traced.source.model_id,
        "created_by": f"edgerun {__version__}",
        "inputs": _tensor_specs(model, [i.name for i in model.graph.input]),
        "outputs": _tensor_specs(model, [o.name for o in model.graph.output]),
        "split": {
            "label": cut.label,
            "index": cut.index,
            "after_node": cut.after_node,
            "tensors": _tensor_specs(model, cut.tensors),
        },
        "precisions": {
            "front": native["precision"],
            "front_layers": native.get("layers", {}),
            "front_fp32_acts": native.get("fp32_acts", []),
            "front_calib_rel_err": native.get("calib_error", 0.0),
            # the same error on samples.npz, which `edgerun verify` runs: fitted on calibration inputs,
            # a quantized front can be several times worse on others (file models: 6x seen)
            "front_samples_rel_err": native.get("samples_error", 0.0),
            "group_size": cfg.group_size,
            "back": cfg.back_precision,
            "back_calib_rel_err": back_errs[0],  # fp16 / int8 back vs fp32 on the calibration crossings
            "back_samples_rel_err": back_errs[1],  # the same on samples.npz; verify bounds by the larger
        },
        "codec": codec,
        "exits": {},
        "native": {"ok": native["ok"], "reason": native["reason"]},
        "predicted": {
            "front_macs": cut.front_macs,
            "back_macs": cut.back_macs,
            "crossing_bytes_fp32": cut.crossing_bytes,
        },
        "files": files,
    }
