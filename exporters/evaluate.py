"""Measure a split against the whole model on real held-out data (onnxruntime on both)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgerun.exporters.models import SourceModel

EVAL_BATCH = 32


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_split(front_path: Path, back_path: Path, x: np.ndarray) -> np.ndarray:
    """back(front(x)) on onnxruntime, batched."""
    front, back = _session(front_path), _session(back_path)
    outs = []
    for i in range(0, len(x), EVAL_BATCH):
        mid = front.run(None, {front.get_inputs()[0].name: x[i : i + EVAL_BATCH]})
        feeds = {inp.name: mid[k] for k, inp in enumerate(back.get_inputs())}
        outs.append(back.run(None, feeds)[0])
    return np.concatenate(outs)


def run_whole(whole_path: Path, x: np.ndarray) -> np.ndarray:
    s = _session(whole_path)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + EVAL_BATCH]})[0] for i in range(0, len(x), EVAL_BATCH)])


def evaluate_split(src: SourceModel, bundle_dir: Path, *, limit: int | None = None) -> dict:
    """Split vs whole on the model's held-out data.

    Returns:
        ``metric`` (name), ``metric_whole_fp32``, ``metric_split`` (accuracy on labels, or
        top-1 agreement with the whole fp32 model where labels are missing),
        ``split_vs_whole_max_abs``, ``top1_agreement``, ``n_eval``.
    """
    if src.zoo is not None:
        x, y = src.zoo.eval_data(limit=limit)
    else:
        x = np.load(bundle_dir / "samples.npz")["inputs"]
        y = None
    x = np.ascontiguousarray(x, dtype=np.float32)
    whole = run_whole(bundle_dir / "whole.onnx", x)
    parts = run_split(bundle_dir / "front.onnx", bundle_dir / "back.onnx", x)
    agree = float(np.mean(whole.argmax(-1) == parts.argmax(-1)))
    rep = {
        "n_eval": int(len(x)),
        "split_vs_whole_max_abs": float(np.max(np.abs(whole - parts))),
        "top1_agreement": agree,
    }
    if y is not None:
        rep.update(
            metric="top1",
            metric_whole_fp32=float(np.mean(whole.argmax(-1) == y)),
            metric_split=float(np.mean(parts.argmax(-1) == y)),
        )
    else:
        rep.update(metric="top1_agreement", metric_whole_fp32=1.0, metric_split=agree)
    return rep
