"""``export``: torch model -> ONNX -> cut -> halves -> native graph -> bundle.

Example:
    >>> from edgerun.exporters import export, ExportConfig     # doctest: +SKIP
    >>> bundle = export("zoo:digits-cnn", ExportConfig(cut="block1"), "bundles/digits")  # doctest: +SKIP
    >>> bundle.cut_label                                        # doctest: +SKIP
    'block1'
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgerun import __version__
from edgerun.bundle import Bundle, TensorSpec, write_manifest
from edgerun.errors import ConfigError, UnsupportedOpError
from edgerun.exporters import trace
from edgerun.exporters.cuts import Cut, find_cuts, resolve_cut, shapes_of
from edgerun.exporters.evaluate import evaluate_split
from edgerun.exporters.models import SourceModel, resolve_model
from edgerun.exporters.split import split

N_SAMPLES = 8


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
    """

    cut: str | int | None = None
    max_cut_tensors: int = 1
    evaluate: bool = True
    eval_limit: int | None = None
    require_native: bool = False

    def __post_init__(self) -> None:
        if self.max_cut_tensors < 1:
            raise ConfigError(f"max_cut_tensors must be >= 1 (got {self.max_cut_tensors}); use 1 for single-tensor cuts")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError(f"eval_limit must be >= 1 or None (got {self.eval_limit})")


@dataclass
class Traced:
    """A traced model and its cuts: what ``--list-cuts`` shows and ``export`` consumes."""

    source: SourceModel
    model: onnx.ModelProto
    cuts: list[Cut]


def trace_model(spec: str | SourceModel, *, max_cut_tensors: int = 1) -> Traced:
    """Resolve ``spec`` (see ``models.resolve_model``), trace it, and find its cuts."""
    src = resolve_model(spec) if isinstance(spec, str) else spec
    input_name = getattr(src.zoo, "input_name", None) or "input"
    model = trace.to_onnx(src.module, src.example, input_name=input_name, output_name="logits")
    return Traced(src, model, find_cuts(model, max_tensors=max_cut_tensors))


def export(spec: str | SourceModel | Traced, config: ExportConfig, out_dir: str | Path) -> Bundle:
    """Export a model as a split bundle.

    Args:
        spec: model spec (``zoo:NAME`` or ``file.py:fn``), a SourceModel, or a Traced model.
        config: the export options.
        out_dir: the bundle directory to write (replaced if it holds an old bundle).

    Returns:
        The written, verified bundle.

    Raises:
        ExportError / ConfigError: the model or the cut cannot be exported as asked.
        UnsupportedOpError: ``require_native`` and the native engine cannot run the front half.
    """
    traced = spec if isinstance(spec, Traced) else trace_model(spec, max_cut_tensors=config.max_cut_tensors)
    cut = resolve_cut(traced.cuts, config.cut)
    front, back = split(traced.model, cut)
    out = _fresh_dir(Path(out_dir))
    onnx.save(traced.model, out / "whole.onnx")
    onnx.save(front, out / "front.onnx")
    onnx.save(back, out / "back.onnx")
    native = _write_native(front, out / "front.erg", config.require_native)
    files = {
        "whole.onnx": {"role": "whole model (reference; all-on-server mode)"},
        "front.onnx": {"role": "front half, onnxruntime (--engine ort)"},
        "back.onnx": {"role": "back half, server"},
    }
    if native["ok"]:
        files["front.erg"] = {"role": "front half, native engine"}
    samples_in = _samples(traced.source, traced.model)
    np.savez(out / "samples.npz", inputs=samples_in)
    files["samples.npz"] = {"role": "sample inputs for `edgerun verify`"}
    report = _report(traced, cut, out, config)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    files["report.json"] = {"role": "export report (accuracy, bytes, costs)"}
    write_manifest(out, _manifest(traced, cut, native, files))
    return Bundle.load(out)


def _fresh_dir(out: Path) -> Path:
    if out.exists():
        if not (out / "manifest.json").exists() and any(out.iterdir()):
            raise ConfigError(f"{out} exists and is not a bundle; choose an empty or new --out directory")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def _write_native(front: onnx.ModelProto, path: Path, required: bool) -> dict:
    from edgerun.exporters.erg import write_erg

    try:
        info = write_erg(front, path)
    except UnsupportedOpError as exc:
        if required:
            raise
        return {"ok": False, "reason": str(exc)}
    return {"ok": True, "reason": "", "info": info}


def _samples(src: SourceModel, model: onnx.ModelProto) -> np.ndarray:
    if src.zoo is not None:
        x, _ = src.zoo.eval_data(limit=N_SAMPLES)
        return np.ascontiguousarray(x[:N_SAMPLES], dtype=np.float32)
    ex = src.example.detach().cpu().numpy().astype(np.float32)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((N_SAMPLES - 1, *ex.shape[1:])).astype(np.float32) * float(ex.std() or 1.0)
    return np.concatenate([ex[:1], ex[:1] + noise])


def _tensor_specs(model: onnx.ModelProto, names: list[str] | tuple[str, ...]) -> list[dict]:
    shapes = shapes_of(model)
    return [TensorSpec(n, (None, *shapes[n][1:]), "float32").to_json() for n in names]


def _report(traced: Traced, cut: Cut, out: Path, config: ExportConfig) -> dict:
    rep = {
        "cut": cut.label,
        "cut_index": cut.index,
        "front_precision": "fp32",
        "back_precision": "fp32",
        "codec": "none",
        "bytes_per_request_fp32": cut.crossing_bytes,
        "bytes_per_request": cut.crossing_bytes,
        "front_macs": cut.front_macs,
        "back_macs": cut.back_macs,
        "front_fraction": round(cut.front_fraction, 4),
    }
    if config.evaluate:
        rep.update(evaluate_split(traced.source, out, limit=config.eval_limit))
    return rep


def _manifest(traced: Traced, cut: Cut, native: dict, files: dict) -> dict:
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
        "precisions": {"front": "fp32", "back": "fp32"},
        "codec": {"id": "none"},
        "exits": [],
        "native": {"ok": native["ok"], "reason": native["reason"]},
        "predicted": {
            "front_macs": cut.front_macs,
            "back_macs": cut.back_macs,
            "crossing_bytes_fp32": cut.crossing_bytes,
        },
        "files": files,
    }
