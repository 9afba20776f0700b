"""The on-device agent end to end: tool selection on the device + the split LLM calling a tool.

For BFCL v4 ``live_multiple`` questions (each with its own 2-37 candidate tools), through one
``edgerun serve --threads 1`` worker of a split SmolLM2 bundle on a private Mosquitto (loopback):

* **candidates**: the question's own candidate tools in the system prompt (a plain agent that was
  handed the right short list);
* **selected**: the agent (``edgerun/llm_agent.py``): the device's selector keeps at most ``--k-max``
  tools of the whole BFCL pool (1702) and only those go into the prompt.

Per condition: prompt positions, bytes sent up for the prompt (the hidden states of every prompt
position cross the link), prefill time (the prompt's step: device front + round trip), and whether
the generated call names a tool the ground truth calls.

Run:  python benchmarks/bench_llm_agent.py --index /path/to/bfcl-index --bundle /path/to/llm-bundle \\
          --out benchmarks/results/zen5/llm_agent.json
(a missing index or bundle is built: ~2 min each.)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from edgerun import llm, procs
from edgerun import tools as rt
from edgerun.broker import Mosquitto
from edgerun.exporters import tools, tools_data
from edgerun.llm_agent import Agent, prompt_ids
from edgerun.llm_device import LlmDevice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=40, help="live_multiple questions (random, seeded)")
    ap.add_argument("--k-max", type=int, default=3)
    ap.add_argument("--index", type=Path, default=None, help="a BFCL tool index (`edgerun tools build bfcl`)")
    ap.add_argument("--bundle", type=Path, default=None, help="a split LLM bundle (`edgerun llm export`)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="edgerun-bench-agent-")
    if args.index is None:
        catalog, queries = tools_data.bfcl()
        args.index = Path(tmp.name) / "bfcl"
        tools.build_index(catalog, args.index, queries=queries, index_id="bfcl")
    if args.bundle is None:
        from edgerun.exporters.llm_export import export_llm

        args.bundle = Path(tmp.name) / "llm"
        export_llm(args.bundle)
    index = rt.ToolIndex.load(args.index)
    selector = rt.ToolSelector(index, rule=rt.Rule(index.rule.floor, index.rule.margin, args.k_max))
    b = llm.LlmBundle.load(args.bundle)
    d = tools_data.bfcl_dir()
    items = tools_data.read_json_lines(d / "BFCL_v4_live_multiple.json")
    answers = {a["id"]: a for a in tools_data.read_json_lines(d / "possible_answer" / "BFCL_v4_live_multiple.json")}
    random.Random(0).shuffle(items)
    rows = []
    with Mosquitto() as broker:
        w = procs.start_server(b.path, broker.url, Path(tmp.name) / "serve.log", "--threads", "1")
        try:
            with LlmDevice(b, broker.url, threads=1, step_timeout_s=2) as dev:
                dev.wait_ready()  # the worker may still be loading
                dev.step_timeout_s = 60.0
                agent = Agent(dev, selector)
                for item in items:
                    if len(rows) == args.questions:
                        break
                    question = tools_data.user_text(item["question"])
                    cands = item["function"]
                    ids = prompt_ids(dev.tokenizer, question, cands)
                    if len(ids) + args.max_new_tokens > b.spec.max_context:
                        continue  # a candidate list past the context: skipped (counted below)
                    needed = {n for call in answers[item["id"]]["ground_truth"] for n in call}
                    g = dev.generate(ids=ids, max_new_tokens=args.max_new_tokens)
                    name = g.text.split('"', 1)[0]
                    a = agent.ask(question, max_new_tokens=args.max_new_tokens)
                    row = {"id": item["id"], "candidates": len(cands), "kept": len(a.offered),
                           "selector_kept_needed": bool(needed & set(a.offered)),
                           "candidates_run": {"positions": len(ids), "bytes_up_prompt": g.steps[0].up_bytes,
                                              "prefill_ms": g.steps[0].front_ms + g.steps[0].rtt_ms,
                                              "right": name in needed},
                           "selected_run": {"positions": a.prompt_positions,
                                            "bytes_up_prompt": a.generation.steps[0].up_bytes,
                                            "prefill_ms": a.generation.steps[0].front_ms + a.generation.steps[0].rtt_ms,
                                            "right": a.tool in needed if a.tool else False}}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            procs.stop(w)
    summary = {"questions": len(rows), "mean_candidates": statistics.mean(r["candidates"] for r in rows),
               "mean_kept": statistics.mean(r["kept"] for r in rows),
               "selector_kept_needed": statistics.mean(r["selector_kept_needed"] for r in rows)}
    for cond in ("candidates_run", "selected_run"):
        summary[cond] = {k: statistics.mean(float(r[cond][k]) for r in rows)
                         for k in ("positions", "bytes_up_prompt", "prefill_ms", "right")}
    c, s = summary["candidates_run"], summary["selected_run"]
    print("\n| offered | tools | prompt positions | bytes up for the prompt | prefill ms | call names a needed tool |")
    print("|---|---|---|---|---|---|")
    print(f"| the question's candidates | {summary['mean_candidates']:.1f} | {c['positions']:.0f} | "
          f"{c['bytes_up_prompt']:.0f} | {c['prefill_ms']:.0f} | {100 * c['right']:.1f} % |")
    print(f"| selected from 1702 (k_max {args.k_max}) | {summary['mean_kept']:.1f} | {s['positions']:.0f} | "
          f"{s['bytes_up_prompt']:.0f} | {s['prefill_ms']:.0f} | {100 * s['right']:.1f} % |")
    print(f"ratio candidates / selected: positions {c['positions'] / s['positions']:.2f}x, bytes "
          f"{c['bytes_up_prompt'] / s['bytes_up_prompt']:.2f}x, prefill {c['prefill_ms'] / s['prefill_ms']:.2f}x; "
          f"selector kept a needed tool for {100 * summary['selector_kept_needed']:.1f} %")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"k_max": args.k_max, "bundle_codec": b.codec["id"], "summary": summary,
                                        "rows": rows, "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
