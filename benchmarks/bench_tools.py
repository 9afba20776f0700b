"""Dynamic tool selection on BFCL v4: recall, tools kept and request bytes, against sending every tool
and against a TF-IDF selector.

The catalog is the pool of every distinct tool of BFCL's single-turn categories (1702 tools); the
queries are its labelled questions (each needs the tools its ground truth calls) and its irrelevance
questions (need none). ``edgerun tools build`` splits them in two by a hash of the text, calibrates
the keep rule on one half and this script measures on the other, through the device's path
(tokenizer + ONNX encoder on onnxruntime, int8 scores and the keep rule in the native core).

Peers, on the same held-out queries:
* **all tools**: the plain agent sends every schema with every request (recall 1);
* **TF-IDF**: scikit-learn's TfidfVectorizer over the same tool texts, its rule calibrated the same way.

Also swept: the held-out recall and tools kept for calibration targets 0.70-0.95 (the plot).

Run:
    python benchmarks/bench_tools.py [--recall 0.9] [--out benchmarks/results/zen5/tools.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edgerun import tools as rt
from edgerun.exporters import tools, tools_data

TARGETS = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def tfidf_scores(catalog: list[dict], calib: list[str], held: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(sublinear_tf=True).fit([tools.tool_text(t) for t in catalog])
    e = vec.transform([tools.tool_text(t) for t in catalog])
    return (vec.transform(calib) @ e.T).toarray(), (vec.transform(held) @ e.T).toarray()


def sweep(calib_s, calib_n, held_s, held_n) -> list[dict]:
    rows = []
    for target in TARGETS:
        rule, met = tools.calibrate(calib_s, calib_n, target)
        rows.append({"target": target, "met_on_calib": met, "rule": rule.to_json(), **tools.evaluate(held_s, held_n, rule)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recall", type=float, default=0.9, help="the index's calibration target")
    ap.add_argument("--index", type=Path, default=None, help="reuse a BFCL tool index instead of building one")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/tools.json"))
    args = ap.parse_args()

    catalog, queries = tools_data.bfcl()
    names = [t["name"] for t in catalog]
    tmp = tempfile.TemporaryDirectory(prefix="edgerun-bench-tools-")
    path = args.index or Path(tmp.name) / "bfcl"
    if args.index is None:
        t0 = time.perf_counter()
        tools.build_index(catalog, path, queries=queries, target_recall=args.recall, index_id="bfcl")
        print(f"built the index in {time.perf_counter() - t0:.0f} s", flush=True)
    index = rt.ToolIndex.load(path)
    sel = rt.ToolSelector(index, threads=1)
    calib, held = tools.split_queries(queries)

    # The device's path, query by query: embedding, scoring + rule, request bytes.
    kept_names, embed_us, select_us, req_bytes, all_bytes = [], [], [], [], []
    for q in held:
        s = sel.select(q.text)
        kept_names.append(set(s.names))
        embed_us.append(s.embed_us)
        select_us.append(s.select_us)
        req_bytes.append(s.request_bytes)
        all_bytes.append(s.catalog_request_bytes)
    rel = [i for i, q in enumerate(held) if q.tools]
    none = [i for i, q in enumerate(held) if not q.tools]
    recall = float(np.mean([held[i].tools <= kept_names[i] for i in rel]))
    device = {
        "recall": recall, "mean_kept": float(np.mean([len(kept_names[i]) for i in rel])),
        "no_tool_kept_none": float(np.mean([not kept_names[i] for i in none])),
        "request_bytes_mean": float(np.mean(req_bytes)), "all_tools_request_bytes_mean": float(np.mean(all_bytes)),
        "bytes_ratio_vs_all_tools": float(np.mean(all_bytes) / np.mean(req_bytes)),
        "embed_ms_p50": statistics.median(embed_us) / 1e3, "embed_ms_p99": float(np.percentile(embed_us, 99)) / 1e3,
        "select_us_p50": statistics.median(select_us),
    }

    # Same rule search for both selectors on the same split (scores computed in numpy).
    deq = index.emb.astype(np.float32) * index.scale[:, None]
    calib_emb, held_emb = sel.encoder([q.text for q in calib]), sel.encoder([q.text for q in held])
    cn, hn = tools.needed_indices(calib, names), tools.needed_indices(held, names)
    minilm = sweep(calib_emb @ deq.T, cn, held_emb @ deq.T, hn)
    tc, th = tfidf_scores(catalog, [q.text for q in calib], [q.text for q in held])
    tfidf = sweep(tc, cn, th, hn)
    out = {"catalog_size": len(catalog), "held_out_queries": len(held), "held_out_needing_tools": len(rel),
           "calibration_target": args.recall, "index_report": index.report(), "device_path": device,
           "sweep_minilm_int8": minilm, "sweep_tfidf": tfidf}
    print(f"held-out: {len(rel)} queries needing tools, {len(none)} needing none; catalog {len(catalog)} tools")
    print(f"device path (target {args.recall}): recall {recall:.3f}, {device['mean_kept']:.1f} tools kept, "
          f"request {device['request_bytes_mean']:.0f} B vs {device['all_tools_request_bytes_mean']:.0f} B with every "
          f"tool ({device['bytes_ratio_vs_all_tools']:.0f}x fewer); no-tool queries keeping none "
          f"{device['no_tool_kept_none']:.3f}; embed p50 {device['embed_ms_p50']:.1f} ms, select p50 "
          f"{device['select_us_p50']:.0f} us")
    print("| target | MiniLM int8 recall | tools kept | TF-IDF recall | tools kept |")
    print("|---|---|---|---|---|")
    for m, t in zip(minilm, tfidf):
        print(f"| {m['target']:.2f} | {m['recall']:.3f} | {m['mean_kept']:.1f} | {t['recall']:.3f} | {t['mean_kept']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4))
        for label, rows in (("MiniLM (int8 index)", minilm), ("TF-IDF", tfidf)):
            ax.plot([r["mean_kept"] for r in rows], [r["recall"] for r in rows], "o-", label=label)
        ax.set_xlabel(f"tools kept per query (of {len(catalog)})")
        ax.set_ylabel("held-out recall (every needed tool kept)")
        ax.set_title("BFCL v4: tool selection")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".png"), dpi=120)
    except ImportError:
        print("matplotlib not installed: no plot")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
