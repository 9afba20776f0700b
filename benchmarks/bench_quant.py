"""Quantized front halves on the native engine: accuracy, speed, weight bytes.

For digits-cnn (cuts block1, down) and EfficientNet-Lite0 (cuts blocks.3, blocks.5,
blocks.7): the front half at fp32 / int8 / int8-a32 (int8 weights, fp32 activations:
``--front-act fp32``) / int4 / auto (native engine) + the fp32 back
half (onnxruntime) vs the fp32 whole model on the held-out eval data; native int8 vs
native fp32 latency, and vs onnxruntime's fp32 front half and its own quantized front
half (``quantize_dynamic`` and QDQ ``quantize_static`` calibrated on the same calib
data), all at batch 1 and the same thread count. Writes ``quant.json`` and ``quant.md``.

"auto" uses a budget of activation arena + 40% of the fp32 front weights.

Each quantized mode is measured with the chosen weight roundings: "rtn" (round to
nearest) and "gptq" (data-aware GPTQ + bias correction, ``exporters/quant_rounding.py``),
both calibrated on ``zoo.calib_data`` (disjoint from ``eval_data``: digits = train split
vs test split; EfficientNet = corner crops vs centre crops of the photos). Besides top-1
agreement, the table gives the relative logit error ``||z - z_fp32|| / ||z_fp32||`` and
the mean ``KL(softmax z_fp32 || softmax z)`` over the eval set, which show the error even
where agreement is dominated by near-ties.

How it times: every front half of a cut (native engine at each precision x rounding,
ORT fp32, ORT dynamic, ORT QDQ) is built first, then all are timed INTERLEAVED in one
loop: each round calls every candidate once (batch 1, the same input), the order rotated
by one each round so no candidate always runs first, for ``--runs`` rounds after
``WARMUP_ROUNDS`` untimed ones. This is done twice: with an idle of ``--gap-ms``
(default ``edgerun.profiler.REQUEST_GAP_MS`` = 20 ms) slept before every timed call,
as served requests arrive (caches partly cold), and back to back (warm caches). Every
reported time is the median of that candidate's ``--runs`` samples; speed-ups are ratios
of medians from the same loop. Timing each precision at a different moment (as this
script once did) let machine-load drift show up as a speed-up (1.66x vs 1.05-1.20x).

Run:  python benchmarks/bench_quant.py --runs 30 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

from edgerun.engine import NativeEngine
from edgerun.exporters import zoo
from edgerun.exporters.cuts import resolve_cut
from edgerun.exporters.erg import write_erg
from edgerun.exporters.pipeline import trace_model
from edgerun.exporters.quantize_front import FrontPrecisionConfig, plan_front_precision
from edgerun.exporters.split import split
from edgerun.profiler import REQUEST_GAP_MS
from edgerun.profiles import cpu_name

CUTS = [("zoo:digits-cnn", "block1"), ("zoo:digits-cnn", "down"),
        ("zoo:efficientnet-lite0", "blocks.3"), ("zoo:efficientnet-lite0", "blocks.5"),
        ("zoo:efficientnet-lite0", "blocks.7")]
MODES = ("fp32", "int8", "int8-a32", "int4", "auto")  # int8-a32: int8 weights, fp32 activations
ROUNDINGS = ("rtn", "gptq")
AUTO_WEIGHT_FRACTION = 0.4
N_CALIB = 64  # the exporter's default calib_samples
WARMUP_ROUNDS = 5


def _session(model_or_path, threads: int) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads, o.log_severity_level = threads, 1, 3
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, o, providers=["CPUExecutionProvider"])


def interleaved_ms(fns: dict[str, Callable[[], object]], runs: int, gap_ms: float,
                   warmup: int = WARMUP_ROUNDS) -> dict[str, float]:
    """Median ms per candidate, all timed round-robin in one loop (see the module docstring).

    Args:
        fns: candidate name -> a call to time (batch 1).
        runs: timed rounds; every candidate gets exactly this many samples.
        gap_ms: idle slept before each timed call (0: back to back).
        warmup: untimed rounds first.

    Returns:
        ``{name: median ms}``.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    ts: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        for n in names[i % len(names):] + names[:i % len(names)]:
            if gap_ms > 0:
                time.sleep(gap_ms / 1e3)
            t0 = time.perf_counter()
            fns[n]()
            ts[n].append((time.perf_counter() - t0) * 1e3)
    return {n: statistics.median(v) for n, v in ts.items()}


def _ort_quantized(front_path: Path, calib: np.ndarray, tmp: Path) -> dict[str, Path]:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "front_pre.onnx"
    quant_pre_process(str(front_path), str(pre), skip_symbolic_shape=True)
    name = onnx.load(pre).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    out = {"ort_dynamic": tmp / "front_qd.onnx", "ort_static_qdq": tmp / "front_qs.onnx"}
    quantize_dynamic(str(pre), str(out["ort_dynamic"]), weight_type=QuantType.QInt8, per_channel=True)
    quantize_static(str(pre), str(out["ort_static_qdq"]), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _front_outputs(run, x: np.ndarray, chunk: int = 32) -> list[np.ndarray]:
    parts = [run(x[i:i + chunk]) for i in range(0, len(x), chunk)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def mean_kl(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over samples of KL(softmax(ref) || softmax(logits)), in nats."""
    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))


def bench_cut(spec: str, cut_name: str, traced, tmp: Path, runs: int, threads: int,
              roundings: tuple[str, ...] = ROUNDINGS, gap_ms: float = REQUEST_GAP_MS) -> dict:
    z = zoo.load(spec)
    x_eval, y_eval = z.eval_data()
    calib = z.calib_data(N_CALIB).astype(np.float32)
    cut = resolve_cut(traced.cuts, cut_name)
    front, back = split(traced.model, cut)
    front_path = tmp / "front.onnx"
    onnx.save(front, front_path)
    whole = _session(traced.model, threads)
    ref_logits = whole.run(None, {whole.get_inputs()[0].name: x_eval})[0].astype(np.float64)
    ref_top1 = np.argmax(ref_logits, axis=1)
    back_s = _session(back, threads)
    back_names = [i.name for i in back_s.get_inputs()]

    def logits(front_outs: list[np.ndarray]) -> np.ndarray:
        return back_s.run(None, dict(zip(back_names, front_outs)))[0].astype(np.float64)

    res = {"model": spec, "cut": cut_name, "tensor": cut.tensors[0], "n_eval": int(len(x_eval)),
           "n_calib": int(len(calib)),
           "whole_fp32_top1_acc": None if y_eval is None else float(np.mean(ref_top1 == y_eval)),
           "precisions": {}}
    x1 = x_eval[:1]
    timed: dict[str, Callable[[], object]] = {}  # timed together below, after all are built
    fp32_w = None
    for mode, rounding in [("fp32", "rtn")] + [(m, r) for m in MODES[1:] for r in roundings]:
        budget = None
        if mode == "auto":
            arena = NativeEngine(tmp / "fp32.erg", max_batch=1).arena_bytes
            budget = (arena + AUTO_WEIGHT_FRACTION * fp32_w) / 2**20
        t0 = time.perf_counter()
        wmode, act = ("int8", "fp32") if mode == "int8-a32" else (mode, "int8")
        plan = plan_front_precision(front, calib, FrontPrecisionConfig(wmode, 32, budget, rounding, act=act))
        plan_s = time.perf_counter() - t0
        path = tmp / ("fp32.erg" if mode == "fp32" else f"{mode}-{rounding}.erg")
        write_erg(front, path, precisions=plan.precisions, group_size=32, rounded=plan.rounded,
                  fp32_acts=plan.fp32_acts)
        eng = NativeEngine(path, max_batch=32, threads=threads)
        zl = logits(_front_outputs(lambda b: [v for v in eng.run(b).values()], x_eval))
        pred = np.argmax(zl, axis=1)
        eng1 = NativeEngine(path, max_batch=1, threads=threads)
        key = mode if mode == "fp32" else f"{mode}/{rounding}"
        timed[key] = (lambda e: lambda: e.run(x1))(eng1)
        if mode == "fp32":
            fp32_w = eng1.weight_bytes
        counts = {p: sum(v == p for v in plan.precisions.values()) for p in ("fp32", "int8", "int4")}
        res["precisions"][key] = {
            "mode": mode, "rounding": rounding if mode != "fp32" else "-",
            "top1_agreement_with_fp32_whole": float(np.mean(pred == ref_top1)),
            "top1_acc": None if y_eval is None else float(np.mean(pred == y_eval)),
            "logit_rel_err": float(np.linalg.norm(zl - ref_logits) / np.linalg.norm(ref_logits)),
            "mean_kl": mean_kl(ref_logits, zl),
            "weight_bytes": eng1.weight_bytes,
            "arena_bytes": eng1.arena_bytes, "calib_error": plan.error, "layers": counts,
            "plan_seconds": round(plan_s, 2),
            "budget_mb": budget}
        if mode == "auto":
            res.setdefault("auto_table", {})[rounding] = plan.table()
    front_sess = _session(front_path, threads)
    fname = front_sess.get_inputs()[0].name
    timed["ort_fp32"] = lambda: front_sess.run(None, {fname: x1})
    for key, qpath in _ort_quantized(front_path, calib, tmp).items():
        s = _session(qpath, threads)
        fo = _front_outputs(lambda b: s.run(None, {fname: b}), x_eval)
        timed[key] = (lambda q: lambda: q.run(None, {fname: x1}))(s)
        res[key] = {"top1_agreement_with_fp32_whole": float(np.mean(np.argmax(logits(fo), axis=1) == ref_top1)),
                    "file_bytes": qpath.stat().st_size}
    _add_times(res, interleaved_ms(timed, runs, gap_ms), interleaved_ms(timed, runs, 0.0))
    return res


def _add_times(res: dict, gap: dict[str, float], b2b: dict[str, float]) -> None:
    """Store the interleaved medians (``ms``: after the idle gap, ``ms_b2b``: back to back)
    and the ratios between candidates of the same loop."""
    for key, p in res["precisions"].items():
        p["native_ms"], p["native_ms_b2b"] = round(gap[key], 4), round(b2b[key], 4)
    res["ort_fp32_ms"], res["ort_fp32_ms_b2b"] = round(gap["ort_fp32"], 4), round(b2b["ort_fp32"], 4)
    for key in ("ort_dynamic", "ort_static_qdq"):
        res[key]["ms"], res[key]["ms_b2b"] = round(gap[key], 4), round(b2b[key], 4)
    p = res["precisions"]
    i8 = "int8/gptq" if "int8/gptq" in p else "int8/rtn"
    res["speedup_int8_over_fp32"] = round(gap["fp32"] / gap[i8], 3)
    res["speedup_int8_over_fp32_b2b"] = round(b2b["fp32"] / b2b[i8], 3)
    a32 = "int8-a32/gptq" if "int8-a32/gptq" in p else "int8-a32/rtn"
    res["speedup_int8a32_over_fp32"] = round(gap["fp32"] / gap[a32], 3)
    best = min(gap["ort_dynamic"], gap["ort_static_qdq"])
    res["ratio_native_int8_over_best_ort_quant"] = round(gap[i8] / best, 3)
    res["ratio_native_int8_over_ort_fp32"] = round(gap[i8] / gap["ort_fp32"], 3)


def _table(rows: list[dict]) -> str:
    out = ["| model | cut | prec | rounding | top-1 agree | logit rel err | mean KL | top-1 acc | "
           "native ms (gap) | native ms (b2b) | weight KiB | layers fp32/int8/int4 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for p in r["precisions"].values():
            acc = "" if p["top1_acc"] is None else f"{100 * p['top1_acc']:.2f}%"
            c = p["layers"]
            out.append(f"| {r['model'].split(':')[1]} | {r['cut']} | {p['mode']} | {p['rounding']} | "
                       f"{100 * p['top1_agreement_with_fp32_whole']:.2f}% | {100 * p['logit_rel_err']:.2f}% | "
                       f"{p['mean_kl']:.2e} | {acc} | {p['native_ms']:.3f} | {p['native_ms_b2b']:.3f} | "
                       f"{p['weight_bytes'] / 1024:.1f} | {c['fp32']}/{c['int8']}/{c['int4']} |")
    out += ["", "Times: medians of one interleaved loop per cut (gap = idle before each call, b2b = back to back).",
            "", "| model | cut | whole fp32 acc | int8/fp32 speed-up gap (b2b) | int8-a32/fp32 gap | "
            "ORT fp32 ms gap (b2b) | ORT dyn ms gap (agree) | ORT QDQ ms gap (agree) | "
            "native int8 / best ORT quant | native int8 / ORT fp32 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "" if r["whole_fp32_top1_acc"] is None else f"{100 * r['whole_fp32_top1_acc']:.2f}%"
        d, s = r["ort_dynamic"], r["ort_static_qdq"]
        out.append(f"| {r['model'].split(':')[1]} | {r['cut']} | {acc} | {r['speedup_int8_over_fp32']:.2f}x "
                   f"({r['speedup_int8_over_fp32_b2b']:.2f}x) | {r['speedup_int8a32_over_fp32']:.2f}x | "
                   f"{r['ort_fp32_ms']:.3f} ({r['ort_fp32_ms_b2b']:.3f}) | "
                   f"{d['ms']:.3f} ({100 * d['top1_agreement_with_fp32_whole']:.1f}%) | "
                   f"{s['ms']:.3f} ({100 * s['top1_agreement_with_fp32_whole']:.1f}%) | "
                   f"{r['ratio_native_int8_over_best_ort_quant']:.2f} | {r['ratio_native_int8_over_ort_fp32']:.2f} |")
    return "\n".join(out)


def _cuts(only: str | None, names: str | None, traced: dict) -> list[tuple[str, str]]:
    """(model, cut) pairs to run: CUTS, or the named cuts of every model that has them
    (models traced for that are kept in ``traced``)."""
    specs = [s for s in dict.fromkeys(spec for spec, _ in CUTS) if not only or only in s]
    if not names:
        return [(s, c) for s, c in CUTS if s in specs]
    pairs = []
    for spec in specs:
        labels = {c.label for c in traced.setdefault(spec, trace_model(spec)).cuts}
        pairs += [(spec, c) for c in names.split(",") if c in labels]
    if not pairs:
        raise SystemExit(f"bench_quant: no model among {specs} has a cut named in {names!r} (see "
                         "`edgerun export zoo:... --list-cuts`)")
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1,
                    help="engine and onnxruntime threads; above 1 the candidates' thread pools share this "
                         "process and slow each other (measured: native fp32 30 ms instead of 1.1): use "
                         "bench_threads.py, one process per configuration, for multi-thread figures")
    ap.add_argument("--only", default=None, help="only cuts of this model spec")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--roundings", default=",".join(ROUNDINGS), help="comma-separated: rtn,gptq")
    ap.add_argument("--gap-ms", type=float, default=REQUEST_GAP_MS,
                    help="idle before each timed call in the gap loop (a back-to-back loop also runs)")
    ap.add_argument("--cuts", default=None,
                    help="comma-separated cut names (e.g. blocks.5 or blocks.15): any cut of each model "
                         "that has it, the default ones or deeper")
    args = ap.parse_args()
    if args.threads > 1:
        print("bench_quant: at --threads > 1 the interleaved candidates' thread pools (the engine's and "
              "onnxruntime's) compete in this one process; the times are not each runtime's own. "
              "benchmarks/bench_threads.py runs each configuration in its own process.", file=sys.stderr)
    from edgerun import _core

    rows, traced = [], {}
    for spec, cut in _cuts(args.only, args.cuts, traced):
        traced.setdefault(spec, trace_model(spec))
        with tempfile.TemporaryDirectory() as d:
            rows.append(bench_cut(spec, cut, traced[spec], Path(d), args.runs, args.threads,
                                  tuple(args.roundings.split(",")), args.gap_ms))
        print(_table(rows[-1:]), flush=True)
    meta = {"machine": platform.machine(), "cpu": cpu_name(), "cpu_count": __import__("os").cpu_count(),
            "gemm_path": _core.gemm_path(), "qgemm_path": _core.qgemm_path(), "batch": 1,
            "threads": args.threads, "runs": args.runs, "gap_ms": args.gap_ms, "warmup_rounds": WARMUP_ROUNDS,
            "statistic": "median per candidate of one interleaved round-robin loop (gap, then back to back)",
            "auto_budget": f"arena + {AUTO_WEIGHT_FRACTION} x fp32 front weights", "group_size": 32,
            "n_calib": N_CALIB, "roundings": args.roundings}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quant.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = _table(rows)
    (args.out / "quant.md").write_text(f"# bench_quant\n\n{json.dumps(meta)}\n\n{table}\n\n" +
                                       "\n\n".join(f"## auto plan ({k} rounding): {r['model']} {r['cut']}\n```\n{t}\n```"
                                                   for r in rows for k, t in r["auto_table"].items()) + "\n")
    print(table)
    print(f"wrote {args.out / 'quant.json'}")


if __name__ == "__main__":
    main()
