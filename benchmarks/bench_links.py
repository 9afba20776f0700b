"""All modes of both zoo models over every link profile (the `edgerun bench` harness in a loop).

For each model and link the bundle (with the tsq codec, so split and split_codec are both
measured) is exported at the fp32 split the planner chooses for the device profile
(`--device`, default this-machine) + `cpu-server` over that link, restricted to real splits. Device compute is this
machine's, or with `--device` this machine slowed to that profile's speed (and planned for exactly
that emulated device: `edgerun.profiles.emulated_device`); links are emulated and the emulation is measured in every run.

    python benchmarks/bench_links.py [--requests 40] [--links ethernet wifi 5g lte]

Writes bench_links.json, one PNG per (model, link), and prints a summary table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

MODELS = ("zoo:digits-cnn", "zoo:efficientnet-lite0")
LINKS = ("ethernet", "wifi", "5g", "lte")


def _split_cut(traced, link: str, device: str | None) -> int:
    """The planner's best fp32 split for the (emulated) device and link, with or without the codec
    (both "split" and "split + codec" are then measured at that cut)."""
    from edgerun.exporters.planner import plan
    from edgerun.profiles import emulated_device

    prof, _, _ = emulated_device(device)  # the device the bench measures: this machine, scaled
    p = plan(traced, prof, "cpu-server", link, splits_only=True)
    return next(c.cut_index for c in p.candidates if c.feasible and c.front_precision == "fp32")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--links", nargs="*", default=list(LINKS))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--device", default=None, help="emulate this device profile's speed (see `edgerun bench --device`)")
    args = ap.parse_args()
    from edgerun.bench import plot, run_bench
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model
    from edgerun.report import table

    args.out.mkdir(parents=True, exist_ok=True)
    reports, rows = [], []
    for spec in args.models:
        traced = trace_model(spec)
        for link in args.links:
            cut = _split_cut(traced, link, args.device)
            b = export(traced, ExportConfig(cut=cut, codec="tsq", evaluate=False), Path(tempfile.mkdtemp()) / "bundle")
            rep = run_bench(b, link, requests=args.requests, device=args.device,
                            log=lambda s: print(f"[{spec} {link}] {s}", flush=True))
            tag = "" if args.device is None else f"_{args.device}"
            rep["png"] = str(plot(rep, args.out / f"bench_{b.model_id}_{link}{tag}.png"))
            reports.append(rep)
            for mode, r in rep["modes"].items():
                if "stages" in r:
                    t = r["stages"]["total"]
                    rows.append([b.model_id, link, b.cut_label, mode, round(t["p50"], 2), round(t["p95"], 2),
                                 round(t["p99"], 2), r["bytes_sent"]])
            em = rep["emulated"]["measured"]
            print(f"  emulated {link}: RTT p50 {em['rtt_ms_p50']:.2f} ms (profile {rep['emulated']['profile']['rtt_ms']}"
                  f" + jitter {rep['emulated']['profile']['jitter_ms']}), up {em['up_mbps']:.1f} Mbit/s, "
                  f"down {em['down_mbps']:.1f} Mbit/s", flush=True)
    name = "bench_links.json" if args.device is None else f"bench_links_{args.device}.json"
    (args.out / name).write_text(json.dumps({"device_compute": reports[0]["device_compute"] if reports else "",
                                             "reports": reports}, indent=2) + "\n")
    print(table(["model", "link", "cut", "mode", "p50 ms", "p95 ms", "p99 ms", "bytes sent"], rows))


if __name__ == "__main__":
    main()
