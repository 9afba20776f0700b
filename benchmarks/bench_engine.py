"""Native engine vs onnxruntime on the same fp32 front halves, at the same thread count.

Front halves: digits-cnn after its first residual block and before pooling;
EfficientNet-Lite0 after MBConv block 3 and block 7, and the whole EfficientNet-Lite0
(the "plain on-device" peer: every layer on the device). Both engines are timed
in alternating blocks of 10 runs in one loop (medians; the first runs of each
block let the other engine's spinning threads settle). Prints a table and writes
``engine.json`` (+ ``engine.png``) under ``--out``. With ``--cold`` every timed call
of either engine follows a 64 MiB write (``engine_cold.json``): the latency a control
loop sees when its other work has evicted the caches between two inferences.

Run:  python benchmarks/bench_engine.py --runs 50 [--cold] --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.utils

from edgerun.engine import NativeEngine, OrtEngine
from edgerun.exporters import erg
from edgerun.exporters.pipeline import trace_model
from edgerun.profiles import cpu_name

# (model spec, cut label, module scope whose last tensor is the cut, or an op whose input is)
CUTS = [
    ("zoo:digits-cnn", "after block1", "block1", None),
    ("zoo:digits-cnn", "before pool", None, "MaxPool"),
    ("zoo:efficientnet-lite0", "after block 3", "blocks.3", None),
    ("zoo:efficientnet-lite0", "after block 7", "blocks.7", None),
    ("zoo:efficientnet-lite0", "whole model", None, None),
]


def _scopes(node: onnx.NodeProto) -> str:
    return " ".join(p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes")


def cut_tensor(model: onnx.ModelProto, scope: str | None, before_op: str | None) -> str:
    """The tensor ending module ``scope`` (last node in it), the input of the first ``before_op``,
    or (neither given) the model's output: the whole model."""
    if scope is None and before_op is None:
        return model.graph.output[0].name
    if before_op is not None:
        return next(n.input[0] for n in model.graph.node if n.op_type == before_op)
    hits = [n for n in model.graph.node if f"'{scope}'" in _scopes(n)]
    if not hits:
        raise SystemExit(f"no node in scope {scope!r}; the zoo model changed")
    return hits[-1].output[0]


class CacheEvictor:
    """Dirties a buffer larger than the last-level cache: what a control loop's other work does
    to the caches between two inferences (the next call finds its weights, arena and input in
    DRAM)."""

    def __init__(self, mib: int = 64) -> None:
        self.buf = np.zeros(mib << 18, np.float32)

    def __call__(self) -> None:
        self.buf[::16] += 1.0  # one write per 64-byte line


def interleaved_ms(fns: list, x: np.ndarray, runs: int, warmup: int, block: int = 10,
                   settle: int = 3, pause_s: float = 0.3, before=None) -> list[float]:
    """Median ms of each fn, timed in alternating blocks (a x block, b x block, a ...) so both
    see the same machine state: a drift in clock or load hits them alike. Each block starts
    after ``pause_s`` idle and its first ``settle`` runs are not counted: with threads > 1,
    onnxruntime's pool keeps spinning for a while after a run (the native engine's workers 100 µs), and a
    single a, b, a, b alternation measured that spin, not the engine (native 2 threads: 1.8 ms
    alone, 5.5 ms right after onnxruntime). On a 2-core AMD EPYC the settle runs were not
    enough: onnxruntime's spinning worker held the second core through a whole native block
    (EfficientNet blocks.3, native 2 threads: 5.5 ms alone, 8.7 ms for 20 runs after
    onnxruntime, 5.5 ms again after 0.5 s idle). ``before`` (e.g. a CacheEvictor) runs before
    every call, untimed."""
    for _ in range(warmup):
        for fn in fns:
            fn(x)
    times: list[list[float]] = [[] for _ in fns]
    while len(times[0]) < runs:
        for fn, ts in zip(fns, times):
            time.sleep(pause_s)
            for i in range(settle + block):
                if before is not None:
                    before()
                t0 = time.perf_counter()
                fn(x)
                if i >= settle:
                    ts.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(ts) for ts in times]


def bench_cut(traced, label: str, tensor: str, tmp: Path, threads_list, runs: int, warmup: int,
              before=None) -> list[dict]:
    full = tmp / "full.onnx"
    onnx.save(traced.model, full)
    front_onnx, front_erg = tmp / f"front_{tensor}.onnx", tmp / f"front_{tensor}.erg"
    inp = traced.model.graph.input[0].name
    onnx.utils.extract_model(str(full), str(front_onnx), [inp], [tensor])
    front = onnx.shape_inference.infer_shapes(onnx.load(front_onnx))
    info = erg.write_erg(front, front_erg)
    x = traced.source.example.numpy().astype(np.float32)
    rows = []
    for th in threads_list:
        native = NativeEngine(front_erg, max_batch=1, threads=th)
        ort = OrtEngine(front_onnx, threads=th)
        ref, got = ort.run(x), native.run(x)
        err = max(float(np.abs(ref[k] - got[k]).max() / max(np.abs(ref[k]).max(), 1e-6)) for k in ref)
        n_ms, o_ms = interleaved_ms([native.run, ort.run], x, runs, warmup, before=before)
        rows.append({"model": traced.source.model_id, "cut": label, "tensor": tensor, "threads": th,
                     "native_ms": round(n_ms, 4), "ort_ms": round(o_ms, 4),
                     "ratio_native_over_ort": round(n_ms / o_ms, 3), "max_rel_err": err,
                     "nodes": info["nodes"], "arena_bytes": native.arena_bytes,
                     "weight_bytes": native.weight_bytes})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--cold", action="store_true",
                    help="dirty 64 MiB before every timed call (caches cold, as in a control loop "
                         "that does other work between inferences); writes engine_cold.json/png")
    args = ap.parse_args()
    from edgerun import _core

    rows, traced_cache = [], {}
    with tempfile.TemporaryDirectory() as d:
        for spec, label, scope, before in CUTS:
            if spec not in traced_cache:
                traced_cache[spec] = trace_model(spec)
            traced = traced_cache[spec]
            tensor = cut_tensor(traced.model, scope, before)
            rows += bench_cut(traced, label, tensor, Path(d), args.threads, args.runs, args.warmup,
                              before=CacheEvictor() if args.cold else None)
    print(f"{'model':<20} {'cut':<15} {'thr':>3} {'native ms':>10} {'ort ms':>9} {'ratio':>6} {'rel err':>8}")
    for r in rows:
        print(f"{r['model']:<20} {r['cut']:<15} {r['threads']:>3} {r['native_ms']:>10.3f} "
              f"{r['ort_ms']:>9.3f} {r['ratio_native_over_ort']:>6.2f} {r['max_rel_err']:>8.1e}")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpu": cpu_name(), "cpu_count": __import__("os").cpu_count(),
            "gemm_path": _core.gemm_path(), "batch": 1, "runs": args.runs, "warmup": args.warmup,
            "statistic": "median", "caches": "cold (64 MiB dirtied before each call)" if args.cold else "warm"}
    name = "engine_cold" if args.cold else "engine"
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    _plot(rows, args.out / f"{name}.png")
    print(f"wrote {args.out / f'{name}.json'}")


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = [f"{r['model'].split(':')[-1]}\n{r['cut']}\nt={r['threads']}" for r in rows]
    xs = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 1.1), 4))
    ax.bar(xs - 0.2, [r["native_ms"] for r in rows], 0.4, label="native")
    ax.bar(xs + 0.2, [r["ort_ms"] for r in rows], 0.4, label="onnxruntime")
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_ylabel("median latency, ms (batch 1)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
