"""Plain-text tables for the CLI (no dependency beyond the standard library)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Right-aligned fixed-width table."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(c.rjust(w) for c, w in zip(cells[0], widths)), line]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells[1:]]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def cuts_table(rows: list[dict]) -> str:
    return table(
        ["index", "label", "tensor", "shape", "bytes", "front %"],
        [[r["index"], r["label"], ",".join(r["tensors"]), ",".join("x".join(map(str, sh)) for sh in r["shapes"]), r["crossing_bytes"],
          f"{100 * r['front_fraction']:.1f}"] for r in rows],
    )


# A split that loses more than this (the planner's default --max-accuracy-drop, one point) is
# flagged in the export summary: the user asked for the precisions, but should see the cost.
WARN_LOSS = 0.01


def export_summary(bundle: Any, report: dict) -> str:
    lines = [
        f"bundle   {bundle.path}",
        f"model    {bundle.model_id}   hash {bundle.hash[:16]}",
        f"cut      {report['cut']} (index {report['cut_index']}), {report['front_fraction'] * 100:.1f}% of MACs on the device",
        _crossing(report),
        f"precision front {_prec(report['front_precision'])}, back {report['back_precision']}"
        + (f" (rel. error {report['back_calib_rel_err']:.1e} vs fp32 on calibration data"
           + (f", {report['back_samples_rel_err']:.1e} on the bundle's samples"
              if report.get("back_samples_rel_err") else "") + ")"
           if report.get("back_calib_rel_err") else "")
        + (f", front weights {report['front_weight_bytes']} B" if report.get("front_weight_bytes") else "")
        + (f" + arena {report['front_arena_bytes']} B" if report.get("front_arena_bytes") else "")
        + (f" (+ scratch {report['front_scratch_bytes']} B)" if report.get("front_scratch_bytes") else ""),
        f"native   {'yes' if bundle.native_ok else 'NO: ' + bundle.native_reason}",
    ]
    if getattr(bundle, "passthrough", None):  # model inputs the device sends as they came
        lines.insert(3, f"inputs   {', '.join(s.name for s in bundle.inputs)}; passing through the cut to the server: "
                        f"{', '.join(bundle.passthrough)}")
    fallback = (report.get("front_rounding") or {}).get("rtn_fallback")
    if fallback:
        lines.append(f"rounding {len(fallback)} front layer(s) rounded to nearest, not GPTQ (statistics too large): "
                     f"{', '.join(fallback)}")
    ex = report.get("exits")
    if isinstance(ex, dict) and ex.get("points"):
        k, asked = len(ex["points"]), ex.get("asked")
        lines.append(f"exits    {k} at {', '.join(map(str, ex['points']))}"
                     + (f" (asked for {asked}: only {k} fit before the cut, each at most 90 % of the front's "
                        "compute)" if isinstance(asked, int) and asked > k else ""))
    if "metric" in report:
        lines.append(
            f"metric   {report['metric']}"
            + (f" of output {report['metric_output']}" if report.get("metric_output") else "")
            + f": whole {report['metric_whole_fp32']:.4f}, split {report['metric_split']:.4f} "
            f"(n={report['n_eval']}, max |split - whole| = {report['split_vs_whole_max_abs']:.2e})"
            + (f"\n         on {report['eval_inputs']}" if report.get("eval_inputs") else "")
        )
        per = report.get("per_output") or {}
        shown = per if len(per) > 1 or report["metric"] == "top1_agreement" else {}  # several, or no labels
        for name, e in shown.items():
            lines.append(f"output   {name}: mean |split - whole| {e['mean_abs']:.2e} ({100 * e['rel_mean_abs']:.2f} % of "
                         f"its mean |value|), max {e['max_abs']:.2e}"
                         + (f", top-1 agreement {100 * e['top1_agreement']:.2f} %" if "top1_agreement" in e else ""))
        if report.get("whole_nonfinite"):
            lines.append(f"warning  the whole model gives NaN or Inf on {report['whole_nonfinite']} of the {report['n_eval']} "
                         "eval inputs (the split gives the same; the figures above compare the finite values): check "
                         "the model for log / sqrt / division of values that can be 0 or negative")
        loss = report["metric_whole_fp32"] - report["metric_split"]
        if report["metric"] not in ("action_mae", "mae") and loss > WARN_LOSS:
            lines.append(f"warning  the split loses {100 * loss:.2f} pp of {report['metric']} against the whole fp32 "
                         f"model (more than {100 * WARN_LOSS:g} pp): re-export with fp32 for the lossy steps above "
                         "(front / back precision, codec) to see which one costs it")
    return "\n".join(lines)


def _crossing(report: dict) -> str:
    n, fp32 = report["bytes_per_request"], report["bytes_per_request_fp32"]
    line = f"crossing {n} bytes per sample ({report['codec']}; fp32: {fp32}"
    if report["codec"] != "none" and n:
        line += f", {fp32 / n:.2f}x fewer"
        if report.get("bytes_per_request_on"):
            line += f" on {report['bytes_per_request_on']}"
        if report.get("encode_us") is not None and report.get("decode_us") is not None:
            line += f"; encode {report['encode_us']:.1f} us, decode {report['decode_us']:.1f} us"
    return line + ")"


def _prec(p: Any) -> str:
    if isinstance(p, dict):
        counts: dict[str, int] = {}
        for v in p.values():
            counts[v] = counts.get(v, 0) + 1
        return "mixed (" + ", ".join(f"{k}: {n} layers" for k, n in sorted(counts.items())) + ")"
    return str(p)


def percentiles(samples: dict[str, list[float]], qs: Sequence[int] = (50, 95)) -> dict[str, dict[str, float]]:
    """Per-stage percentiles, e.g. {"device": {"p50": .., "p95": ..}}."""
    return {
        k: {f"p{q}": float(np.percentile(v, q)) for q in qs} for k, v in samples.items() if len(v)
    }


def stage_table(stats: dict[str, dict[str, float]], order: Sequence[str]) -> str:
    keys = list(next(iter(stats.values())).keys()) if stats else []
    return table(["stage"] + [f"{k} ms" for k in keys], [[s] + [stats[s][k] for k in keys] for s in order if s in stats])
