"""The export report across models, cuts, precisions and codecs, in one table.

For each zoo model at two cuts, exports a bundle per setting and collects what
``report.json`` measured on real held-out data: bytes per request vs fp32, the
metric vs the fp32 whole model, codec encode/decode time, front weight bytes, and the
fp16 / int8 back half's relative logit error against its fp32 self on the calibration
crossings (``back rel err``, what ``edgerun verify`` bounds the split by).

    python benchmarks/bench_report.py [--out benchmarks/results] [--quick]

Writes ``report.json`` and ``report.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

CUTS = {"zoo:digits-cnn": ("block1", "down"), "zoo:efficientnet-lite0": ("blocks.3", "blocks.7")}
SETTINGS = (
    {"front_precision": "fp32", "codec": "none", "back_precision": "fp32"},
    {"front_precision": "int8", "codec": "none", "back_precision": "fp32"},
    {"front_precision": "int8", "front_act": "fp32", "codec": "none", "back_precision": "fp32"},
    {"front_precision": "fp32", "codec": "tsq", "back_precision": "fp32"},
    {"front_precision": "fp32", "codec": "none", "back_precision": "fp16"},  # each lossy step alone,
    {"front_precision": "fp32", "codec": "none", "back_precision": "int8"},  # then all together
    {"front_precision": "int8", "codec": "tsq", "back_precision": "fp16"},
)
KEYS = ("front_act", "metric", "metric_whole_fp32", "metric_split", "bytes_per_request", "bytes_per_request_fp32",
        "front_weight_bytes", "encode_us", "decode_us", "n_eval", "back_calib_rel_err")


def run(models: list[str], out: Path) -> list[dict]:
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgerun-report-") as tmp:
        for spec in models:
            traced = trace_model(spec)
            for cut in CUTS[spec]:
                for setting in SETTINGS:
                    t0 = time.perf_counter()
                    b = export(traced, ExportConfig(cut=cut, **setting), Path(tmp) / "b")
                    rep = json.loads(b.file("report.json").read_text())
                    row = {"model": spec, "cut": cut, **setting, **{k: rep.get(k) for k in KEYS},
                           "export_s": round(time.perf_counter() - t0, 1)}
                    row["bytes_ratio"] = round(row["bytes_per_request_fp32"] / row["bytes_per_request"], 2)
                    row["loss_pp"] = round(100 * (row["metric_whole_fp32"] - row["metric_split"]), 2)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    (out / "report.md").write_text(to_markdown(rows))
    return rows


def _front(r: dict) -> str:
    """The front precision as the table shows it: int8 on fp32 activations is "int8-a32"."""
    return "int8-a32" if r["front_precision"] == "int8" and r.get("front_act") == "fp32" else r["front_precision"]


def to_markdown(rows: list[dict]) -> str:
    head = ("| model | cut | front | codec | back | metric | whole fp32 | split | loss pp | bytes/req | "
            "vs fp32 | front weights B | encode µs | decode µs | back rel err |\n" + "|---" * 15 + "|\n")
    lines = []
    for r in rows:
        enc = "" if r["encode_us"] is None else f"{r['encode_us']:.0f}"
        dec = "" if r["decode_us"] is None else f"{r['decode_us']:.0f}"
        berr = f"{r['back_calib_rel_err']:.1e}" if r.get("back_calib_rel_err") else ""
        lines.append(
            f"| {r['model'].removeprefix('zoo:')} | {r['cut']} | {_front(r)} | {r['codec']} | "
            f"{r['back_precision']} | {r['metric']} | {r['metric_whole_fp32']:.4f} | {r['metric_split']:.4f} | "
            f"{r['loss_pp']:.2f} | {r['bytes_per_request']} | {r['bytes_ratio']}x | {r['front_weight_bytes']} | "
            f"{enc} | {dec} | {berr} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--quick", action="store_true", help="digits only")
    args = ap.parse_args()
    models = ["zoo:digits-cnn"] if args.quick else list(CUTS)
    rows = run(models, args.out)
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
