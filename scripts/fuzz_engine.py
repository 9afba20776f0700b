"""Differential fuzzer for the native engine's fp32 kernels: random small ONNX graphs, each run
on the engine (.erg, written by exporters/erg.py) and on onnxruntime.

Each case (drawn by scripts/fuzz_specs.py, built by fuzz_graphs.py) is a random chain of ops the engine claims to run: Conv of
every shape (kernels 1-7, non-square, strides 1-3, asymmetric pads, dilations, grouped /
depthwise / depthwise x2, bias or not) with the activations; 1x1 -> depthwise -> 1x1 chains, some
big enough to fuse at the default budget, with residual Adds; shapes aimed at the special kernels
(stems, 1x1 on small planes, depthwise on narrow planes and at stride 2); pooling (pads,
ceil_mode, count_include_pad, dilation); GlobalAveragePool; squeeze-excite; Gemm / MatMul;
Concat; Resize (nearest, bilinear); Softmax; Transpose; Slice; Pad; BatchNorm; ReduceMean /
ReduceSum; LayerNorm / InstanceNorm; attention; Conv1d; Split; Gather; broadcast binary ops; odd
sizes, batch 1-3, mostly a dynamic batch dim, sometimes a second (intermediate) output. Checked:

- the engine at 1, 2 and 3 threads against onnxruntime (max error / max |reference| <= 1e-4,
  as tests/runtime/test_engine.py; and per channel against the channel's own scale, 1e-3),
  and the last sample alone on the same engine after the batch;
- bit identity where the README claims it: 2 and 3 threads = 1 thread; EDGERUN_NO_FUSE,
  EDGERUN_FUSE_KB=8 and 1 (small chains fuse, in strips of a few rows), EDGERUN_NO_SMALL_N,
  EDGERUN_NO_DIRECT_CONV, EDGERUN_NO_FUSE_ADD (residual Adds in the conv epilogue) = default; the same bits with all of them set after the engine loaded
  (knobs are read at load);
- the AVX2 (EDGERUN_NO_AVX512) and portable (EDGERUN_FORCE_PORTABLE) paths, read once per
  process, in two worker processes, against onnxruntime (their bits may differ: FMA order);
  im2col + GEMM instead of the implicit-GEMM convs (EDGERUN_NO_IMPLICIT_CONV, also read once per
  process) in a third, which must give the default's bits; and in a fourth the weights read in
  place instead of packed at load (EDGERUN_NO_PACK_A, EDGERUN_NO_PACK_B) and the GEMM's row tiles
  outer in Gemms of many rows (EDGERUN_NO_STRIPS_OUTER), also the default's bits.

A graph the exporter refuses with an EdgerunError is recorded as refused, not as a failure; a file
it wrote that the engine then fails to load is a failure. Run (2,500 cases: about 7 minutes):

    .venv/bin/python scripts/fuzz_engine.py --seed 0 --cases 200 --out /tmp/fuzz.json

``--budget N`` allows inputs of N floats per sample (default 400,000); ``--no-arch`` skips the
AVX2 / portable workers; ``--spec FILE`` replays one case (a failure's ``spec`` from the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_graphs  # noqa: E402
from fuzz_graphs import Invalid, build_model  # noqa: E402
from fuzz_specs import random_spec  # noqa: E402

RTOL = 1e-4
CHANNEL_RTOL = 1e-3  # per channel, against the channel's own scale (see channel_err)
KNOBS = ("EDGERUN_NO_FUSE", "EDGERUN_FUSE_KB", "EDGERUN_NO_SMALL_N", "EDGERUN_NO_DIRECT_CONV", "EDGERUN_NO_FUSE_ADD")
BIT_VARIANTS = [("no_fuse", {"EDGERUN_NO_FUSE": "1"}), ("fuse_kb8", {"EDGERUN_FUSE_KB": "8"}),
                ("fuse_kb1", {"EDGERUN_FUSE_KB": "1"}),
                ("no_small_n", {"EDGERUN_NO_SMALL_N": "1"}), ("no_direct_conv", {"EDGERUN_NO_DIRECT_CONV": "1"}),
                ("no_fuse_add", {"EDGERUN_NO_FUSE_ADD": "1"})]
ARCH_VARIANTS = [("avx2", {"EDGERUN_NO_AVX512": "1"}), ("portable", {"EDGERUN_FORCE_PORTABLE": "1"}),
                 ("no_implicit_conv", {"EDGERUN_NO_IMPLICIT_CONV": "1"}),
                 ("no_pack", {"EDGERUN_NO_PACK_A": "1", "EDGERUN_NO_PACK_B": "1", "EDGERUN_NO_STRIPS_OUTER": "1"})]
SAME_BITS_WORKERS = ("no_implicit_conv", "no_pack")  # process-wide knobs that must not change a bit


def rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    if ref.shape != got.shape:
        return float("inf")
    if not np.isfinite(got).all() and np.isfinite(ref).all():
        return float("inf")
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-3)
    return float(np.abs(ref.astype(np.float64) - got).max(initial=0.0)) / scale


COVERAGE: dict[str, int] = {}  # kernel name -> cases that ran it (default knobs)


def channel_err(ref: np.ndarray, got: np.ndarray) -> float:
    """The worst channel's error relative to that channel's own scale (floored at 1 % of the whole
    output's): a wrong border of a channel whose values are small hides under the global scale."""
    if ref.shape != got.shape or ref.ndim < 3 or not np.isfinite(ref).all():
        return 0.0
    axes = tuple(i for i in range(ref.ndim) if i != 1)
    scale = np.maximum(np.abs(ref).max(axis=axes), max(float(np.abs(ref).max()), 1e-3) * 1e-2)
    return float((np.abs(ref.astype(np.float64) - got).max(axis=axes) / scale).max())


def _joined(outs: dict | list, names: list[str]) -> np.ndarray:
    """The first output, or all outputs flattened per sample and joined (a second output)."""
    arrays = [outs[n] for n in names] if isinstance(outs, dict) else list(outs)
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate([a.reshape(a.shape[0], -1) for a in arrays], axis=1)


def engine_run(erg_path: str, x: np.ndarray, threads: int, env: dict[str, str], profile: bool = False,
               then: np.ndarray | None = None, env_after_load: dict[str, str] | None = None):
    """The engine's output for x (and, with ``then``, for ``then`` on the same engine after x).
    ``env_after_load``: knobs set after the engine loaded, before it runs (they must change nothing)."""
    from edgerun.engine import NativeEngine

    saved = {k: os.environ.get(k) for k in KNOBS}
    for k in KNOBS:
        os.environ.pop(k, None)
    os.environ.update(env)
    try:
        eng = NativeEngine(erg_path, max_batch=3, threads=threads)
        os.environ.update(env_after_load or {})
        if profile:
            for k in {s["kernel"] for s in eng.profile_layers(x, runs=1, warmup=0)}:
                COVERAGE[k] = COVERAGE.get(k, 0) + 1
        y = _joined(eng.run(x), eng.output_names)
        return y if then is None else (y, _joined(eng.run(then), eng.output_names))
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


class ArchWorker:
    """A child process with one kernel-path knob set (read once per process) that runs .erg files."""

    def __init__(self, env: dict[str, str]):
        full = {k: v for k, v in os.environ.items()
                if k not in ("EDGERUN_NO_AVX512", "EDGERUN_FORCE_PORTABLE", "EDGERUN_NO_IMPLICIT_CONV",
                             "EDGERUN_NO_PACK_A", "EDGERUN_NO_PACK_B", "EDGERUN_NO_STRIPS_OUTER")}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], env={**full, **env}, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, erg_path: str, x_path: str, y_path: str) -> str:
        self.proc.stdin.write(json.dumps([erg_path, x_path, y_path]) + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def worker_loop() -> None:
    for line in sys.stdin:
        erg_path, x_path, y_path = json.loads(line)
        try:
            np.save(y_path, engine_run(erg_path, np.load(x_path), 1, {}))
            print("ok", flush=True)
        except Exception as exc:  # reported to the parent as a finding
            print("error " + repr(exc).replace("\n", " "), flush=True)


def check_case(spec: dict, work: Path, workers: dict | None) -> tuple[str, list[dict]]:
    """Returns (status, findings): status is ok / refused / invalid / ort_refused / failed."""
    import onnx
    import onnxruntime as ort

    from edgerun.errors import EdgerunError
    from edgerun.exporters import erg

    try:
        model, in_shape, out_shape = build_model(spec)
    except Invalid as exc:
        return "invalid", [{"kind": "invalid", "detail": str(exc)}]
    onnx_path, erg_path = work / "m.onnx", work / "m.erg"
    onnx.save(model, onnx_path)
    rng = np.random.default_rng(spec["xseed"])
    x = rng.standard_normal((spec["batch"], *in_shape)).astype(np.float32)
    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        ref = _joined(sess.run(None, {"x": x}), [])
    except Exception as exc:
        return "ort_refused", [{"kind": "ort_refused", "detail": str(exc)[:300]}]
    if len(model.graph.output) == 1 and ref.shape != (spec["batch"], *out_shape):  # the spec's shape arithmetic is wrong: not the engine's fault
        return "invalid", [{"kind": "invalid", "detail": f"onnxruntime gives {ref.shape}, spec {out_shape}"}]
    try:
        erg.write_erg(onnx.shape_inference.infer_shapes(model), erg_path)
    except EdgerunError as exc:
        return "refused", [{"kind": "refused", "detail": f"{type(exc).__name__}: {str(exc)[:300]}"}]
    try:  # a file the exporter wrote must load and run
        base = engine_run(str(erg_path), x, 1, {}, profile=True)
    except EdgerunError as exc:
        return "failed", [{"kind": "load_error", "detail": f"{type(exc).__name__}: {str(exc)[:300]}"}]
    findings = []
    err = rel_err(ref, base)
    if err > RTOL:
        findings.append({"kind": "vs_ort", "variant": "t1", "err": err})
    elif channel_err(ref, base) > CHANNEL_RTOL:
        findings.append({"kind": "vs_ort_channel", "variant": "t1", "err": channel_err(ref, base)})
    for threads in (2, 3):
        # then: the last sample alone on the same engine (a smaller batch after a larger one)
        got, last = engine_run(str(erg_path), x, threads, {}, then=x[-1:] if spec["dyn"] else x)
        if not np.array_equal(got, base, equal_nan=True):
            findings.append({"kind": "bits", "variant": f"t{threads}", "err": rel_err(base, got)})
        rerun_err = rel_err(ref[-1:] if spec["dyn"] else ref, last)  # a fixed batch reruns the whole batch
        if rerun_err > RTOL:
            findings.append({"kind": "vs_ort", "variant": f"t{threads}_rerun", "err": rerun_err})
    for name, env in BIT_VARIANTS:
        for threads in ((1, 2, 3) if name.startswith("fuse_kb") else (1, 2)):
            got = engine_run(str(erg_path), x, threads, env)
            if not np.array_equal(got, base, equal_nan=True):
                findings.append({"kind": "bits", "variant": f"{name}_t{threads}", "err": rel_err(base, got)})
    got = engine_run(str(erg_path), x, 2, {}, env_after_load={k: "1" for k in KNOBS})
    if not np.array_equal(got, base, equal_nan=True):  # knobs are read when an engine loads
        findings.append({"kind": "bits", "variant": "knobs_after_load_t2", "err": rel_err(base, got)})
    for name, w in (workers or {}).items():
        x_path, y_path = str(work / "x.npy"), str(work / f"y_{name}.npy")
        np.save(x_path, x)
        status = w.run(str(erg_path), x_path, y_path)
        if status != "ok":
            findings.append({"kind": "arch_error", "variant": name, "detail": status})
            continue
        y = np.load(y_path)
        if name in SAME_BITS_WORKERS and not np.array_equal(y, base, equal_nan=True):
            findings.append({"kind": "bits", "variant": name, "err": rel_err(base, y)})
        e = rel_err(ref, y)
        if e > RTOL:
            findings.append({"kind": "vs_ort", "variant": name, "err": e})
    return ("failed" if findings else "ok"), findings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--out", type=Path, help="JSON file of the failures (and counts)")
    ap.add_argument("--spec", type=Path, help="replay one case spec (JSON) and print its findings")
    ap.add_argument("--no-arch", action="store_true", help="skip the AVX2 / portable / im2col worker processes")
    ap.add_argument("--budget", type=int, default=fuzz_graphs.FLOAT_BUDGET,
                    help="largest input, per sample, in floats (bigger: larger planes and channel counts)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_loop()
        return
    fuzz_graphs.FLOAT_BUDGET = args.budget
    workers = {} if args.no_arch else {name: ArchWorker(env) for name, env in ARCH_VARIANTS}
    counts: dict[str, int] = {}
    failures, refused = [], []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        if args.spec:
            spec = json.loads(args.spec.read_text())
            print(json.dumps(check_case(spec.get("spec", spec), Path(tmp), workers), indent=1))
        for i in range(0 if args.spec else args.cases):
            spec = random_spec(np.random.default_rng([args.seed, i]))
            status, findings = check_case(spec, Path(tmp), workers)
            counts[status] = counts.get(status, 0) + 1
            if status == "failed":
                failures.append({"case": i, "findings": findings, "spec": spec})
                print(f"case {i}: FAILED {findings}", flush=True)
            elif status in ("refused", "ort_refused", "invalid"):
                refused.append({"case": i, "status": status, "detail": findings[0]["detail"]})
    for w in workers.values():
        w.close()
    if not args.spec:
        print(f"{args.cases} cases in {time.time() - t0:.0f} s: {counts}")
        print("kernels run (cases):", dict(sorted(COVERAGE.items())))
    if args.out:
        args.out.write_text(json.dumps({"seed": args.seed, "cases": args.cases, "counts": counts, "kernels": COVERAGE,
                                        "failures": failures, "refused": refused}, indent=1))


if __name__ == "__main__":
    main()
