"""Measure what a bundle will deploy against the fp32 whole model, on real held-out data.

The split is run as the device and server will run it: the front half on the
native engine when the bundle has one (else onnxruntime), the crossing tensors
through the activation codec when one is set, the back half at its precision
on onnxruntime. Every lossy step is therefore in the reported figure.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgerun.exporters.models import SourceModel
from edgerun.feeds import Inputs, as_feeds, float32, n_samples, rows, with_passthrough
from edgerun.verify import max_abs_diff

EVAL_BATCH = 32

# (crossing tensors) -> (crossing tensors after encode + decode), plus timings in µs
CodecRoundTrip = Callable[[dict[str, np.ndarray]], tuple[dict[str, np.ndarray], float, float, int]]


def session(path: Path | bytes, threads: int = 2):
    """An onnxruntime CPU session of a model file (or its serialized bytes)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 4  # a failed run raises with the same text: an ERROR log line only doubled it
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts, providers=["CPUExecutionProvider"])


def run_whole(whole_path: Path, x: Inputs) -> dict[str, np.ndarray]:
    """Every output of the whole model on ``x``, by name, in the model's order (metrics take the first)."""
    s = session(whole_path)
    names = [i.name for i in s.get_inputs()]
    chunks = [s.run(None, as_feeds(rows(x, i, i + EVAL_BATCH), names)) for i in range(0, n_samples(x), EVAL_BATCH)]
    return {o.name: np.concatenate([c[k] for c in chunks]) for k, o in enumerate(s.get_outputs())}


def front_runner(bundle_dir: Path, native: bool, model_inputs: list[str],
                 crossing: list[str]) -> Callable[[Inputs], dict[str, np.ndarray]]:
    """The device's front half: native engine when available, else onnxruntime. Gives every crossing
    tensor, model inputs that pass through the cut (``crossing`` names them) included."""
    from edgerun.engine import make_engine

    if native:
        eng = make_engine("native", erg_path=bundle_dir / "front.erg", threads=1, max_batch=EVAL_BATCH)
    else:
        eng = make_engine("ort", onnx_path=bundle_dir / "front.onnx", threads=1)
    passed = [t for t in crossing if t in model_inputs]

    def run(x: Inputs) -> dict[str, np.ndarray]:
        feeds = as_feeds(x, model_inputs)
        # copies: the codec round trip writes into the crossing
        return with_passthrough(eng.run({n: feeds[n] for n in eng.input_names}), feeds, passed, copy=True)

    return run


def run_split(
    bundle_dir: Path, x: Inputs, model_inputs: list[str], *, native: bool, codec: CodecRoundTrip | None = None
) -> tuple[list[np.ndarray], dict]:
    """back(codec(front(x))) as deployed; returns every output and codec stats."""
    back = session(bundle_dir / "back.onnx")
    front = front_runner(bundle_dir, native, model_inputs, [i.name for i in back.get_inputs()])
    outs, enc_us, dec_us, nbytes = [], [], [], []
    for i in range(0, n_samples(x), EVAL_BATCH):
        mid = front(rows(x, i, i + EVAL_BATCH))
        if codec is not None:
            for j in range(len(next(iter(mid.values())))):
                one = {k: v[j : j + 1] for k, v in mid.items()}
                dec, e_us, d_us, b = codec(one)
                for k in mid:
                    mid[k][j : j + 1] = dec[k]
                enc_us.append(e_us), dec_us.append(d_us), nbytes.append(b)
        outs.append(back.run(None, {inp.name: mid[inp.name] for inp in back.get_inputs()}))
    stats = {}
    if codec is not None:
        stats = {
            "encode_us": float(np.median(enc_us)),
            "decode_us": float(np.median(dec_us)),
            "codec_bytes_mean": float(np.mean(nbytes)),
        }
    return [np.concatenate([c[k] for c in outs]) for k in range(len(outs[0]))], stats


def evaluate_split(
    src: SourceModel, bundle_dir: Path, *, native: bool, codec: CodecRoundTrip | None = None,
    limit: int | None = None,
) -> dict:
    """The deployed split vs the fp32 whole model on the model's held-out data.

    Returns:
        ``metric`` (name), ``metric_whole_fp32``, ``metric_split`` (accuracy on labels, or
        top-1 agreement with the whole fp32 model where labels are missing),
        ``split_vs_whole_max_abs``, ``top1_agreement``, ``n_eval``, ``eval_engine``, and the
        codec's figures. For a regression model (zoo metric ``action_mae``; a file model with one value per
        sample: ``mae``) the metrics are the mean absolute error vs the labels (vs the whole model without
        labels) and ``action_mae_vs_whole`` / ``mae_vs_whole`` replaces ``top1_agreement``; plus the
        codec's ``encode_us`` / ``decode_us`` / ``codec_bytes_mean`` when a codec is set.
    """
    if src.zoo is not None:
        x, y = src.zoo.eval_data(limit=limit)
    else:
        x = synthetic_inputs(src, min(limit or SYNTHETIC_EVAL_N, SYNTHETIC_EVAL_N), seed=SEED_EVAL)
        y = None
    x = float32(x)
    t0 = time.perf_counter()
    wholes = run_whole(bundle_dir / "whole.onnx", x)
    splits, stats = run_split(bundle_dir, x, src.input_names, native=native, codec=codec)
    first = next(iter(wholes))
    whole, parts = wholes[first], splits[0]  # the metric is the first output's (a policy's action, not its value)
    regression = is_regression(src, whole.shape)
    agree = float(np.mean(whole.argmax(-1) == parts.argmax(-1)))
    rep = {
        "n_eval": n_samples(x),
        "eval_engine": "native" if native else "ort",
        "split_vs_whole_max_abs": max(max_abs_diff(p, w) for p, w in zip(splits, wholes.values())),
        "eval_seconds": round(time.perf_counter() - t0, 2),
        **stats,
    }
    bad = int(np.sum(~np.isfinite(whole.reshape(len(whole), -1)).all(axis=1)))
    if bad:  # the split gives the same; the summary warns (the max above compares the finite values)
        rep["whole_nonfinite"] = bad
    if len(wholes) > 1:  # the metric names one output; the max above covers them all
        rep["metric_output"] = first
    # each output's own error: a second output's cost is in no metric, and without labels a continuous output
    # several values wide is scored by top-1 agreement, which says little about it
    rep["per_output"] = {name: output_error(p, w) for (name, w), p in zip(wholes.items(), splits)}
    if src.zoo is None:
        rep["eval_inputs"] = ("synthetic inputs: the example plus noise, not real data (none comes with this "
                              "model: give --data); calibration used other draws")
    elif hasattr(src.zoo, "describe"):  # a model file's --data
        rep["eval_inputs"] = src.zoo.describe()
    if regression:  # continuous values: argmax means nothing; mean abs error vs the labels and the whole
        name = "action_mae" if getattr(src.zoo, "metric", None) == "action_mae" else "mae"
        rep.update(metric=name, **{f"{name}_vs_whole": float(np.mean(np.abs(parts - whole)))})
        if y is not None:  # (a model file's labels were checked against this output when it was traced)
            y = np.asarray(y, dtype=np.float32).reshape(whole.shape)
            rep.update(metric_whole_fp32=float(np.mean(np.abs(whole - y))), metric_split=float(np.mean(np.abs(parts - y))))
        else:  # no labels: the whole model is the reference
            rep.update(metric_whole_fp32=0.0, metric_split=rep[f"{name}_vs_whole"])
        return rep
    rep["top1_agreement"] = agree
    if y is not None:
        rep.update(
            metric="top1",
            metric_whole_fp32=float(np.mean(whole.argmax(-1) == y)),
            metric_split=float(np.mean(parts.argmax(-1) == y)),
        )
    else:
        rep.update(metric="top1_agreement", metric_whole_fp32=1.0, metric_split=agree)
    return rep


def output_error(split: np.ndarray, whole: np.ndarray) -> dict:
    """One output's deployed error against the whole fp32 model (a model with several outputs: the metric
    names the first; a quantized front or a codec may cost the others more). Values finite in both count.

    Returns:
        ``max_abs`` and ``mean_abs`` (|split - whole|), ``rel_mean_abs`` (mean_abs over the whole model's
        mean |value|), and ``top1_agreement`` for an output with several values per sample.
    """
    s, w = np.asarray(split, np.float64), np.asarray(whole, np.float64)
    ok = np.isfinite(s) & np.isfinite(w)
    diff = np.abs(s[ok] - w[ok])
    scale = float(np.mean(np.abs(w[ok]))) if ok.any() else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    out = {"max_abs": max_abs_diff(split, whole), "mean_abs": mean_abs,
           "rel_mean_abs": mean_abs / scale if scale > 0 else 0.0}
    if not one_value_per_sample(whole):
        out["top1_agreement"] = float(np.mean(whole.argmax(-1) == split.argmax(-1)))  # as the metric's
    return out


TASKS = ("auto", "classify", "regress")


def is_regression(src: SourceModel, first_output_shape: tuple | list) -> bool:
    """Is the model's first output scored as continuous values (mean abs error; exits by action consistency)
    rather than class scores (top-1; exits by max probability)? One rule for the evaluation, the exits and
    the planner: ``--task`` when given; else the zoo's or the ``--data`` labels' metric; else one value per
    sample (``[batch]`` or ``[..., 1]``: a top-1 over it is always 1.0 and its softmax always confident)."""
    if src.task != "auto":
        return src.task == "regress"
    metric = getattr(src.zoo, "metric", None)
    if metric in ("action_mae", "mae"):
        return True
    return len(first_output_shape) <= 1 or first_output_shape[-1] == 1


def one_value_per_sample(out: np.ndarray) -> bool:
    """A regression output ([batch] or [..., 1]): top-1 agreement on it is 1.0 whatever the split does
    (a file model's report read "top1_agreement: whole 1.0000, split 1.0000" for an int4 front)."""
    return out.ndim == 1 or out.shape[-1] == 1


SYNTHETIC_EVAL_N = 64  # evaluation inputs of a model without data (file.py:fn)
SEED_SAMPLES, SEED_CALIB, SEED_EVAL = 0, 1, 2  # three different draws: samples.npz, calibration, evaluation


def synthetic_inputs(src: SourceModel, n: int, seed: int) -> Inputs:
    """``n`` inputs for a model that comes without data: its example plus Gaussian noise of its spread
    (each input its own spread; a dict by input name for a model with several inputs).

    Calibration, evaluation and the bundle's ``samples.npz`` are different draws (``SEED_*``): they
    were all the same 8 inputs, so GPTQ was fitted to the inputs it was then measured on, and the
    export printed a front-half error 14x (int4) to 29x (int8) below the error on new inputs.
    """
    rng = np.random.default_rng(seed)
    ex = src.example_inputs()

    def draw(e: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal((n, *e.shape[1:])).astype(np.float32) * float(e.std() or 1.0)
        return np.ascontiguousarray(e[:1] + noise, dtype=np.float32)

    return draw(ex) if isinstance(ex, np.ndarray) else {k: draw(v) for k, v in ex.items()}


def calibration_activations(src: SourceModel, front_path: Path, n: int = 64,
                            passthrough: list[str] | tuple[str, ...] = ()) -> tuple[Inputs, dict[str, np.ndarray]]:
    """Calibration inputs (training split / disjoint photo crops) and the fp32 activations at the cut
    (the model inputs named by ``passthrough`` included: they cross as they came)."""
    if src.zoo is not None:
        x = float32(src.zoo.calib_data(n))
    else:
        x = synthetic_inputs(src, n, seed=SEED_CALIB)
    s = session(front_path)
    feeds = as_feeds(x, src.input_names)
    ins = [i.name for i in s.get_inputs()]
    names = [o.name for o in s.get_outputs()]
    chunks = [s.run(None, {k: feeds[k][i : i + EVAL_BATCH] for k in ins}) for i in range(0, n_samples(x), EVAL_BATCH)]
    return x, with_passthrough({nm: np.concatenate([c[k] for c in chunks]) for k, nm in enumerate(names)}, feeds,
                               passthrough)
