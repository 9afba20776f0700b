"""Two (or more) builds of the native core timed against each other, step by step.

Each variant is a copy of ``edgerun/_core*.so`` (keep the baseline's aside before rebuilding),
optionally with environment settings (``path.so,EDGERUN_FUSE_KB=512``). The variants run in
separate processes (one process cannot load two builds of the module), alternated round by round
with the order rotated; each process times every .erg front ``--runs`` times at batch 1 and one
thread after 20 warm-up runs, each run profiled alone (the engine's per-step timer). Printed per
front: for the step sum and each step (matched by node name: the builds may name its kernel
differently, both names shown), the median of the rounds' medians and the least run, and each
variant's ratio to the first; and whether the outputs are bit-identical (sha1).

    python benchmarks/ab_builds.py --make-fronts /tmp/fronts   # EfficientNet-Lite0 blocks.3 / .7, fp32 + int8 GPTQ (~5 min)
    python benchmarks/ab_builds.py --runs 150 --rounds 4 --builds base.so new.so --fronts /tmp/fronts/*.erg
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def make_fronts(out: Path) -> None:
    from edgerun.exporters import zoo
    from edgerun.exporters.cuts import resolve_cut
    from edgerun.exporters.erg import write_erg
    from edgerun.exporters.pipeline import trace_model
    from edgerun.exporters.quantize_front import FrontPrecisionConfig, plan_front_precision
    from edgerun.exporters.split import split

    out.mkdir(parents=True, exist_ok=True)
    z = zoo.load("zoo:efficientnet-lite0")
    np.save(out / "x.npy", z.eval_data()[0][:1].astype(np.float32))
    calib = z.calib_data(64).astype(np.float32)
    traced = trace_model("zoo:efficientnet-lite0")
    for cut in ("blocks.3", "blocks.7"):
        front, _ = split(traced.model, resolve_cut(traced.cuts, cut))
        write_erg(front, out / f"{cut}-fp32.erg")
        plan = plan_front_precision(front, calib, FrontPrecisionConfig("int8", 32, None, "gptq", act="int8"))
        write_erg(front, out / f"{cut}-int8.erg", precisions=plan.precisions, group_size=32,
                  rounded=plan.rounded, fp32_acts=plan.fp32_acts)


def time_one(so: str, runs: int, ergs: list[str]) -> dict:
    """In a child process: this build's per-run step times on each front."""
    spec = importlib.util.spec_from_file_location("edgerun._core", so)
    core = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(core)
    out = {}
    for e in ergs:
        eng = core.Engine(e, 1, 1)
        shape = [1] + list(eng.inputs[0]["shape"][1:])
        xp = Path(e).with_name("x.npy")
        x = np.load(xp)[:1] if xp.exists() else None
        if x is None or list(x.shape) != shape:
            x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        x = np.ascontiguousarray(x)
        digest = hashlib.sha1(b"".join(o.tobytes() for o in eng.run([x], 1))).hexdigest()[:12]
        for _ in range(20):
            eng.run([x], 1)
        steps: dict[str, list[float]] = {}
        kernels: dict[str, str] = {}
        for _ in range(runs):
            eng.set_profiling(True)
            eng.run([x], 1)
            for node, _op, kernel, ns in eng.step_times()[0]:
                steps.setdefault(node, []).append(ns / 1e3)
                kernels[node] = kernel
        eng.set_profiling(False)
        out[Path(e).name] = {"hash": digest, "steps": steps, "kernels": kernels}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--make-fronts", type=Path, default=None, help="write the four fronts here and exit")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--builds", nargs="+", default=[], help="variant.so[,VAR=val...] ...")
    ap.add_argument("--fronts", nargs="+", default=[], help=".erg files (x.npy beside them: the input)")
    args = ap.parse_args()
    if args.make_fronts is not None:
        make_fronts(args.make_fronts)
        return
    variants, ergs = args.builds, args.fronts
    if args.child:
        print(json.dumps(time_one(variants[0], args.runs, ergs)))
        return
    res: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            so, *envs = v.split(",")
            env = dict(os.environ, OPENBLAS_NUM_THREADS="1", **dict(e.split("=", 1) for e in envs))
            cmd = [sys.executable, __file__, "--child", "--runs", str(args.runs), "--builds", so, "--fronts", *ergs]
            res[v].append(json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True,
                                                    check=True).stdout))
    for name in [Path(e).name for e in ergs]:
        hashes = [res[v][0][name]["hash"] for v in variants]
        print(f"== {name}  outputs bit-identical: {len(set(hashes)) == 1} {hashes}")
        steps = list(res[variants[0]][0][name]["steps"])
        for step in ["step sum"] + steps:
            def runs_of(rr):
                s = rr[name]["steps"]
                return np.sum([s[k] for k in steps], axis=0) if step == "step sum" else np.array(s[step])
            stats = [(np.median([np.median(runs_of(rr)) for rr in res[v]]), min(runs_of(rr).min() for rr in res[v]))
                     for v in variants]
            if stats[0][0] < 3:
                continue
            cols = "  ".join(f"med {m:8.1f} min {mn:8.1f}" for m, mn in stats)
            ratios = " ".join(f"{m / stats[0][0]:.3f}/{mn / stats[0][1]:.3f}" for m, mn in stats[1:])
            kern = "/".join(dict.fromkeys(res[v][0][name]["kernels"].get(step, "") for v in variants))
            print(f"{(step + ' ' + kern).strip():36s} {cols}  vs first (med/min) {ratios}")


if __name__ == "__main__":
    main()
