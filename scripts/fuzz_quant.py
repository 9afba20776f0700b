"""Differential fuzzer of the native engine's quantized (int8 / int4 weight) paths.

Each case is a small random conv net (1x1 convs with K in 1..700, kxk and grouped convs,
depthwise convs, inverted-residual chains that fuse, residual adds, a Gemm head; batch
1-3), quantized with the exporter's own ``write_erg`` (per-layer fp32 / int8 / int4, int4
group sizes 8..128, int8 Convs on 8-bit or fp32 activations, round-to-nearest or GPTQ
rounding) and run by the engine. Checked:

* paths: AMX, AVX-512 VNNI, AVX-VNNI, AVX2 and portable give the same bits (one
  subprocess per path: the knobs are read once per process);
* threads 1 / 2 / 3 give the same bits, and fused chains (EDGERUN_FUSE_KB small) the
  same bits as EDGERUN_NO_FUSE=1;
* every node's output against a float64 numpy reference (``fuzz_quant_ref``) computed
  from the engine's own input to that node, with the stored weights and the engine's
  per-pixel activation quantization: within ``REF_TOL`` of ||w||_1 ||x||_inf;
* NaN inputs: the quantized file gives NaN exactly where the same net in fp32 does
  (or a clear EdgerunError), never a crash.

Run (about 1-3 cases a second on 2 cores):

    .venv/bin/python scripts/fuzz_quant.py --seed 1 --cases 200 --out /tmp/fq.json

A failing case is shrunk (fewer layers, channels, pixels, batch) and written to
``--out`` as JSON: ``{"failures": [{"spec": ..., "kind": ..., "detail": ...}]}``; replay
one with ``--replay FILE --index I``.
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
from fuzz_quant_checks import check_case  # noqa: E402
from fuzz_quant_nets import _shape_after, build_onnx, gen_case, make_input  # noqa: E402

PATHS = {"amx": {}, "avx512-vnni": {"EDGERUN_NO_AMX": "1"}, "avx-vnni": {"EDGERUN_NO_AVX512": "1"},
         "avx2": {"EDGERUN_NO_VNNI": "1"}, "portable": {"EDGERUN_FORCE_PORTABLE": "1"}}
# (threads, fuse): fuse None = EDGERUN_NO_FUSE=1, else the EDGERUN_FUSE_KB strip budget.
RUNS = [(1, None), (1, "8"), (2, "8"), (3, "8"), (2, None), (3, "4")]


# --------------------------------------------------------------------------- files
def write_files(spec: dict, d: Path) -> dict:
    """main.erg (quantized), probe.erg (same + every tensor as output), fp32.erg."""
    from edgerun.exporters.erg import write_erg

    model, layers, meta = build_onnx(spec)
    precisions = {n: p for n, p in layers}
    depthwise = {n for n, _ in layers if "groups" in meta[n] and meta[n]["groups"] > 1
                 and meta[n]["groups"] == meta[n]["w"].shape[0] and meta[n]["w"].shape[1] == 1}
    fp32_acts = [n for n, p in layers if spec["act"] == "fp32" and p == "int8" and "groups" in meta[n]
                 and n not in depthwise]
    rounded = {}
    x = make_input(spec)
    # GPTQ holds a K x K float64 H (and its inverse, factor) per layer: a 5x5 conv on 600
    # channels (K = 15000) took 19 GB here, so larger layers are rounded to nearest.
    max_k = max((int(np.prod(m["w"].shape[1:])) if "groups" in m else m["w"].shape[1 if m["trans_b"] else 0])
                for m in meta.values()) if meta else 0
    if spec["rounding"] == "gptq" and any(p != "fp32" for p in precisions.values()) and np.isfinite(x).all() \
            and max_k <= 4096:
        from edgerun.exporters.quant_rounding import FrontRounder, RoundingConfig

        cfg = RoundingConfig(act_quant_min_k=None) if spec["act"] == "fp32" else RoundingConfig()
        rounded = FrontRounder(model, x, spec["gs"], cfg).sequential(precisions)
    kw = dict(precisions=precisions, group_size=spec["gs"], rounded=rounded or None, fp32_acts=fp32_acts)
    write_erg(model, d / "main.erg", **kw)
    tensors = [o for n in model.graph.node for o in n.output if o != model.graph.output[0].name]
    write_erg(model, d / "probe.erg", extra_outputs=tensors, **kw)
    write_erg(model, d / "fp32.erg")
    np.save(d / "x.npy", x)
    (d / "spec.json").write_text(json.dumps(spec))
    return {"model": model, "layers": layers, "meta": meta, "rounded": rounded, "fp32_acts": set(fp32_acts),
            "depthwise": depthwise, "precisions": precisions, "x": x}


# --------------------------------------------------------------------------- worker (one path)
def worker(job_file: str) -> None:
    """Run every case dir of the job through RUNS (this process's kernel path)."""
    from edgerun import _core
    from edgerun.engine import NativeEngine
    from edgerun.errors import EdgerunError

    job = json.loads(Path(job_file).read_text())
    res, kinds = {"path": _core.qgemm_path()}, {}
    for d in job["dirs"]:
        d = Path(d)
        x = np.load(d / "x.npy")
        spec = json.loads((d / "spec.json").read_text())
        extra = spec.get("extra_batch", 0)
        # A Gemm's fp32 GEMM may block differently by batch (fp32 too): Conv nets only.
        split = len(x) > 1 and all(l["op"] != "head" for l in spec["layers"])
        outs, err = {}, None
        try:
            for threads, fuse in RUNS:
                if fuse is None:
                    os.environ["EDGERUN_NO_FUSE"] = "1"
                    os.environ.pop("EDGERUN_FUSE_KB", None)
                else:
                    os.environ.pop("EDGERUN_NO_FUSE", None)
                    os.environ["EDGERUN_FUSE_KB"] = fuse
                eng = NativeEngine(d / "main.erg", max_batch=len(x) + extra, threads=threads)
                if (threads, fuse) == (1, "8"):
                    kinds[str(d)] = [s["kernel"] for s in eng.profile_layers(x, runs=1, warmup=0)]
                outs[f"{threads}_{fuse}"] = next(iter(eng.run(x).values()))
                if (threads, fuse) == (2, "8") and split:  # image by image on the same engine
                    outs["split"] = np.concatenate([next(iter(eng.run(x[i:i + 1]).values())) for i in range(len(x))])
            if True:
                os.environ["EDGERUN_NO_FUSE"] = "1"
                eng = NativeEngine(d / "probe.erg", max_batch=len(x), threads=1)
                outs.update({"probe:" + k: v for k, v in eng.run(x).items()})
                eng = NativeEngine(d / "fp32.erg", max_batch=len(x), threads=1)
                outs["fp32"] = next(iter(eng.run(x).values()))
        except EdgerunError as e:
            err = f"{type(e).__name__}: {e}"
        np.savez(d / f"out_{job['name']}.npz", **outs)
        res[str(d)] = err
    res["kinds"] = kinds
    Path(job_file + ".res").write_text(json.dumps(res))


def run_paths(dirs: list[Path], tmp: Path, paths=PATHS) -> dict:
    """Every path's worker over ``dirs`` (two at a time); {path: result dict or error text}."""
    procs = {}
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGERUN_")}
    for name, extra in paths.items():
        job = tmp / f"job_{name}.json"
        job.write_text(json.dumps({"name": name, "dirs": [str(d) for d in dirs]}))
        procs[name] = (job, subprocess.Popen([sys.executable, __file__, "--worker", str(job)], env=base | extra,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        if len([p for p in procs.values() if p[1].poll() is None]) >= 2:
            next(p for p in procs.values() if p[1].poll() is None)[1].wait()
    results = {}
    for name, (job, p) in procs.items():
        out, errtxt = p.communicate()
        res = Path(str(job) + ".res")
        results[name] = json.loads(res.read_text()) if p.returncode == 0 and res.exists() else \
            f"worker died rc={p.returncode}: {errtxt[-2000:]}"
    return results


def run_cases(specs: list[dict], paths=PATHS) -> tuple[list[list], list[dict]]:
    """Build, run and check specs; per spec its failures, and the (amx) kernel lists."""
    with tempfile.TemporaryDirectory(prefix="fuzzq-") as t:
        tmp = Path(t)
        dirs, infos, fails = [], [], [[] for _ in specs]
        for i, spec in enumerate(specs):
            d = tmp / f"c{i}"
            d.mkdir()
            try:
                infos.append(write_files(spec, d))
                dirs.append(d)
            except Exception as e:  # noqa: BLE001 - an exporter failure is a finding too
                infos.append(None)
                fails[i].append(("export", f"{type(e).__name__}: {e}"))
        live = [d for d, inf in zip([tmp / f"c{i}" for i in range(len(specs))], infos) if inf is not None]
        results = run_paths(live, tmp, paths) if live else {}
        if any(isinstance(r, str) for r in results.values()) and len(live) > 1:
            # a worker died: find the case by running each alone
            out = [run_cases([s], paths) for s in specs]
            return [o[0][0] for o in out], [o[1][0] for o in out]
        kinds = []
        for i, spec in enumerate(specs):
            d = tmp / f"c{i}"
            if infos[i] is not None:
                fails[i] += check_case(spec, infos[i], d, results)
            amx = results.get("amx")
            kinds.append(amx.get("kinds", {}).get(str(d), []) if isinstance(amx, dict) else [])
        return fails, kinds


# --------------------------------------------------------------------------- shrinking
def _candidates(spec):
    def c(**kw):
        s = json.loads(json.dumps(spec))
        s.update(kw)
        return s

    if spec["batch"] > 1:
        yield c(batch=1)
    for i in range(len(spec["layers"])):
        yield c(layers=spec["layers"][:i] + spec["layers"][i + 1:])
    if spec["rounding"] != "rtn":
        yield c(rounding="rtn")
    for key in ("h", "w", "cin"):
        if spec[key] > 1:
            yield c(**{key: max(1, spec[key] // 2)})
            yield c(**{key: spec[key] - 1})
    for i, l in enumerate(spec["layers"]):
        for key in ("cout", "exp"):
            if l.get(key, 1) > 1:
                for v in (max(1, l[key] // 2), l[key] - 1):
                    s = c()
                    s["layers"][i][key] = v
                    yield s
        if l.get("act", "none") != "none":
            s = c()
            s["layers"][i]["act"] = "none"
            yield s
        if l.get("zero_rows"):
            s = c()
            s["layers"][i]["zero_rows"] = False
            yield s
        for j, p in enumerate(l["prec"]):
            if p != "fp32":
                s = c()
                s["layers"][i]["prec"][j] = "fp32"
                yield s


def _valid(spec):
    c, h, w = spec["cin"], spec["h"], spec["w"]
    for l in spec["layers"]:
        if l["op"] == "conv" and (c % l["groups"] or l["cout"] % l["groups"] or h + 2 * l["pad"] < l["k"]
                                  or w + 2 * l["pad"] < l["k"]):
            return False
        if l["op"] == "dw" and (c < 2 or h + 2 * l["pad"] < l["k"] or w + 2 * l["pad"] < l["k"]):
            return False
        if l["op"] == "head":
            continue
        c, h, w = _shape_after(l, c, h, w)
        if h < 1 or w < 1:
            return False
    return True


def shrink(spec, kind, budget_s=120.0):
    """The smallest spec found that still fails with the same kind (prefix before ':')."""
    fam = kind.split(":")[0]
    paths = PATHS if fam != "bits" else {k: v for k, v in PATHS.items() if k in (kind.split(":")[1], "portable")}
    t0, best, detail = time.time(), spec, None
    progress = True
    while progress and time.time() - t0 < budget_s:
        progress = False
        for cand in _candidates(best):
            if time.time() - t0 > budget_s:
                break
            if not _valid(cand):
                continue
            f = run_cases([cand], paths)[0][0]
            hit = [x for x in f if x[0].split(":")[0] == fam]
            if hit:
                best, detail, progress = cand, hit[0], True
                break
    return best, detail


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the failures")
    ap.add_argument("--batch", type=int, default=8, help="cases per worker round")
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--small", action="store_true", help="small nets only (a quick smoke run)")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"kernel paths to compare (of {','.join(PATHS)})")
    ap.add_argument("--shrink-s", type=float, default=120.0, help="seconds of shrinking per failure")
    ap.add_argument("--replay", type=Path, help="a --out file: run its failure --index again")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--skip-input", action="append", default=[],
                    help="input kinds not to draw (normal, shift, const, huge, nan, zero_pixel, tiny)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker)
        return 0
    if a.replay:
        spec = json.loads(a.replay.read_text())["failures"][a.index]["spec"]
        f, k = run_cases([spec])
        print(json.dumps({"failures": f[0], "kernels": k[0]}, indent=1))
        return 1 if f[0] else 0
    rng = np.random.default_rng(a.seed)
    failures, stats, t0 = [], {"cases": 0, "fused": 0, "s8": 0, "kinds": {}}, time.time()
    seen = set()
    for start in range(0, a.cases, a.batch):
        specs = [s for s in (gen_case(rng, a.small) for _ in range(min(a.batch, a.cases - start)))
                 if _valid(s) and s["input"] not in a.skip_input]
        fails, kinds = run_cases(specs, {k: v for k, v in PATHS.items() if k in a.paths.split(",")})
        for spec, f, k in zip(specs, fails, kinds):
            stats["cases"] += 1
            stats["fused"] += k.count("fused-1x1-dw-1x1")
            stats["s8"] += k.count("conv-s8")
            if not f:
                continue
            kind, detail = f[0]
            key = kind.split(":")[0] + ":" + (kind.split(":")[1] if kind.startswith("bits") else "")
            print(f"FAIL {kind}: {detail}", flush=True)
            entry = {"kind": kind, "detail": detail, "spec": spec, "all": f}
            if not a.no_shrink and key not in seen:
                small, sd = shrink(spec, kind, a.shrink_s)
                entry.update(shrunk=small, shrunk_detail=sd)
                print("  shrunk:", json.dumps(small), sd, flush=True)
            seen.add(key)
            failures.append(entry)
        print(f"{stats['cases']} cases, {len(failures)} failing, {stats['s8']} int8 GEMM convs, "
              f"{stats['fused']} fused chains, {time.time() - t0:.0f} s", flush=True)
        if a.out:  # after every round: a run cut short by a timeout keeps what it found
            a.out.write_text(json.dumps({"seed": a.seed, "stats": stats, "failures": failures}, indent=1,
                                        default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
