"""Planner validation: measured latency of every candidate cut next to the predicted one.

For two link profiles (wifi, lte) and both zoo models, every candidate of `plan(...)` with the
device profile `this-machine` and server profile `cpu-server` (both measured here) is run for
real: the model exported at that cut, a real Mosquitto, a real `edgerun serve`, the device
behind the link emulator. "input" (all on the server) uses a bundle cut at the input, "output"
(all on the device) the native engine on the whole model. Device compute is this machine's
(no scaling). With --device PROFILE the device is this machine slowed down by the fp32 GMAC/s ratio
of the two profiles (`edgerun.bench.SlowedEngine`), and the plan is made for exactly that device:
`edgerun.profiles.emulated_device` (this machine's measured profile, scaled). Every report says so.
Only the fp32, no-codec candidates are measured. EfficientNet is measured at block boundaries and
the planned cut (to bound the run time; `--all-cuts` measures every cut).

    python benchmarks/validate_planner.py [--requests 20] [--passes 2] [--device rpi4] [--out benchmarks/results]

Writes planner_validation.json / .png and prints a table per (model, link).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

LINKS = ("wifi", "lte")
MODELS = ("zoo:digits-cnn", "zoo:efficientnet-lite0")


def _keep(model: str, label: str, all_cuts: bool = False) -> bool:
    return all_cuts or "digits" in model or label in ("input", "output") or \
        re.fullmatch(r"blocks\.\d+", label) is not None


def _export_cut(traced, cut_index: int, work: Path):
    from edgerun.bench import make_server_bundle
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(traced, ExportConfig(cut=max(cut_index, 0), evaluate=False), work / f"cut{cut_index}")
    xs = np.ascontiguousarray(b.samples(), dtype=np.float32)
    return (make_server_bundle(b, work / "input-cut") if cut_index == -1 else b), xs


def _measure_cut(b, xs: np.ndarray, links, work: Path, requests: int, factor: float = 1.0) -> dict[str, float]:
    from edgerun import procs
    from edgerun.bench import _remote_mode
    from edgerun.broker import Mosquitto, parse_broker_url
    from edgerun.linkemu import LinkConfig, LinkEmulator

    out = {}
    with Mosquitto() as broker:
        proc = procs.start_server(b.path, broker.url, work / "serve.log")
        try:
            for link in links:
                with LinkEmulator(parse_broker_url(broker.url), LinkConfig.from_profile(link, outages=())) as emu:
                    engine = "native" if b.native_ok else "ort"
                    r = _remote_mode(b, emu, proc, work / "serve.log", engine, xs, requests, 2, factor)
                out[link.name] = r["stages"]["total"]["p50"]
        finally:
            procs.stop(proc)
    return out


def _measure_whole(traced, work: Path, requests: int, factor: float = 1.0) -> float:
    from edgerun.engine import NativeEngine
    from edgerun.exporters.erg import write_erg
    from edgerun.profiler import REQUEST_GAP_MS, time_ms

    write_erg(traced.model, work / "whole.erg")
    from edgerun.bench import SlowedEngine

    eng = SlowedEngine(NativeEngine(work / "whole.erg", max_batch=1), factor)
    x = np.ascontiguousarray(traced.source.example.numpy(), dtype=np.float32)
    return time_ms(lambda: eng.run(x), requests, gap_ms=REQUEST_GAP_MS)  # requests arrive one at a time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--passes", type=int, default=2, help="sweeps over all cuts; the median over passes is kept")
    ap.add_argument("--all-cuts", action="store_true", help="EfficientNet too at every cut, not only block boundaries")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--device", default="this-machine",
                    help="device profile to plan for; other than this-machine, its speed is emulated "
                         "(this machine's measured compute scaled by the profiles' fp32 GMAC/s ratio)")
    args = ap.parse_args()
    from edgerun.exporters.pipeline import trace_model
    from edgerun.exporters.planner import WHOLE, plan
    from edgerun.profiles import emulated_device, load_link

    links = [load_link(n) for n in LINKS]
    results = []
    for spec in args.models:
        traced = trace_model(spec)
        # The measured device is this machine slowed by `factor`; plan with exactly that profile.
        device, factor, note = emulated_device(args.device)
        plans = {l.name: plan(traced, device, "cpu-server", l) for l in links}
        work = Path(tempfile.mkdtemp(prefix="edgerun-validate-"))
        fp32 = {l.name: [c for c in plans[l.name].candidates if (c.front_precision, c.codec) == ("fp32", "none")]
                for l in links}
        # Block boundaries (all cuts for digits), plus each link's planned cut wherever it is.
        todo = {c.cut_index for c in fp32[links[0].name] if _keep(spec, c.cut, args.all_cuts)}
        todo |= {next(c for c in fp32[l.name] if c.feasible).cut_index for l in links}
        todo = sorted(todo)
        bundles = {i: _export_cut(traced, i, work) for i in todo if i != WHOLE}
        # Each pass sweeps every cut (forward, then backward on the next pass, so slow drift
        # of the machine does not favour one end); a cut's figure is the median over passes.
        runs: dict[int, list[dict[str, float]]] = {i: [] for i in todo}
        for k in range(args.passes):
            for i in (todo if k % 2 == 0 else todo[::-1]):
                t0 = time.time()
                if i == WHOLE:
                    ms = _measure_whole(traced, work, args.requests, factor)
                    runs[i].append({l.name: ms for l in links})
                else:
                    runs[i].append(_measure_cut(*bundles[i], links, work, args.requests, factor))
                print(f"{traced.source.model_id} pass {k} cut {i}: {runs[i][-1]} ({time.time() - t0:.1f} s)",
                      flush=True)
        measured = {i: {l.name: float(np.median([r[l.name] for r in rs])) for l in links} for i, rs in runs.items()}
        for l in links:
            p = plans[l.name]
            rows = [{"cut": c.cut, "cut_index": c.cut_index, "predicted_ms": round(c.total_ms, 3),
                     "measured_p50_ms": round(measured[c.cut_index][l.name], 3)}
                    for c in p.candidates if c.cut_index in measured and (c.front_precision, c.codec) == ("fp32", "none")]
            rows.sort(key=lambda r: r["cut_index"])
            best = min(rows, key=lambda r: r["measured_p50_ms"])
            chosen = next(c for c in fp32[l.name] if c.feasible)
            planned = next(r for r in rows if r["cut_index"] == chosen.cut_index)
            results.append({"model": traced.source.model_id, "link": l.name, "device": args.device,
                            "device_compute": note, "rows": rows,
                            "planned": planned, "measured_best": best,
                            "planned_over_best": round(planned["measured_p50_ms"] / best["measured_p50_ms"], 3)})
    _write(results, args.out, args.device)


def _write(results: list[dict], out: Path, device: str = "this-machine") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgerun.report import table

    out.mkdir(parents=True, exist_ok=True)
    meta = {"device_profile": device, "server_profile": "cpu-server",
            "device_compute": results[0]["device_compute"] if results else "", "results": results}
    tag = "" if device == "this-machine" else f"_{device}"
    (out / f"planner_validation{tag}.json").write_text(json.dumps(meta, indent=2) + "\n")
    fig, axes = plt.subplots(len(results), 1, figsize=(10, 3 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        labels = [x["cut"] for x in r["rows"]]
        ax.plot(labels, [x["predicted_ms"] for x in r["rows"]], "o-", label="predicted")
        ax.plot(labels, [x["measured_p50_ms"] for x in r["rows"]], "s-", label="measured p50")
        ax.set_title(f"{r['model']} over {r['link']}: planned {r['planned']['cut']}, best {r['measured_best']['cut']}")
        ax.set_ylabel("ms")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"planner_validation{tag}.png", dpi=90)
    for r in results:
        print(f"\n{r['model']} / {r['link']}: planned {r['planned']['cut']} measured "
              f"{r['planned']['measured_p50_ms']} ms; best {r['measured_best']['cut']} "
              f"{r['measured_best']['measured_p50_ms']} ms (ratio {r['planned_over_best']})")
        print(table(["cut", "predicted ms", "measured p50 ms"],
                    [[x["cut"], x["predicted_ms"], x["measured_p50_ms"]] for x in r["rows"]]))


if __name__ == "__main__":
    main()
