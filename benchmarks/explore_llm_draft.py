"""Would the device draft tokens for the split LLM? An exit head at the cut, measured before building it.

Self-speculative split decoding: the device would guess the next tokens from the hidden state at the
cut (an exit head: a learned map 576 -> 576, the model's final norm, its tied output matrix), run its
front half on its guesses, and send several positions in one request; the server would check them in
one pass and the device keep the guesses that match. Greedy output stays exactly the model's; what it
buys is fewer round trips per token, which pays on a slow link. It pays only if the head guesses well.

Measured here on SmolLM2-135M-Instruct (torch, fp32), the head fit on the first half of the stdlib's
``pydoc_data.topics`` and scored on text it did not see:
- **agreement**: the head's top-1 equals the whole model's top-1, teacher-forced, on (a) the second
  half of pydoc and (b) the whole model's own greedy answers to chat prompts (what decoding sees);
  per confidence threshold: the share of positions over it (cover) and the agreement there;
- **tokens per round** on (b): the device drafts while the head's confidence is over the threshold
  (at most ``D`` drafts), a wrong draft ends the round (the server's token replaces it); the round's
  tokens = drafts kept + the server's one. Also the drafts thrown away per token (front-half work lost; a lower bound: the drafts the device
  would make after a wrong one are not simulated).
Two fits: least squares (closed form) and a KL fit to the whole model's next-token distribution
started from it (Adam, ``--steps`` batches of 256 positions).

Run:  python benchmarks/explore_llm_draft.py --out benchmarks/results/xeon/explore_llm_draft.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from edgerun.profiles import cpu_name
from exporters import llm_model as lm

PROMPTS = ("Name three colours of the rainbow.", "Write a Python function that reverses a string.",
           "Explain what a robot's control loop is in two sentences.", "What is the capital of France?",
           "List four planets of the solar system.", "How do I open a file in Python?",
           "Give me a short definition of machine learning.", "What should I pack for a day hike?")
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


@torch.no_grad()
def _pairs(front: lm.Stage, back: lm.Stage, norm: torch.Tensor, eps: float, ids: list[int]):
    """(rms-normed hidden state at the cut with a 1 appended, the final normed hidden state) per position."""
    h, _, _ = front(torch.tensor([ids]), front.empty_cache(), front.empty_cache())
    y, _, _ = back(h, back.empty_cache(), back.empty_cache())
    x = torch.cat([_rms(h[0], eps), torch.ones(h.shape[1], 1)], 1)
    return x, lm._rms(y[0], norm, eps)


def _score(w: torch.Tensor, emb: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
    with torch.no_grad():
        ref = (y @ emb.T).argmax(-1)
        p = torch.softmax((x @ w) @ emb.T, -1)
        conf, arg = p.max(-1)
        ok = arg == ref
        out = {"positions": int(len(ok)), "agreement": round(float(ok.float().mean()), 4), "by_threshold": []}
        for t in THRESHOLDS:
            m = conf >= t
            out["by_threshold"].append({"threshold": t, "cover": round(float(m.float().mean()), 4),
                                        "agreement": round(float(ok[m].float().mean()), 4) if m.any() else None})
    return out, ok.numpy(), conf.numpy()


def _rounds(answers: list[tuple[np.ndarray, np.ndarray]], threshold: float, max_drafts: int) -> dict:
    """Simulated drafting over the whole model's greedy answers (ok / conf per answer position)."""
    tokens = rounds = wasted = 0
    for ok, conf in answers:
        i, n = 0, len(ok)
        while i < n:  # a round starts after the server's token: the head guesses position i, i+1, ...
            kept = 0
            while kept < max_drafts and i + kept < n - 1 and conf[i + kept] >= threshold:
                if not ok[i + kept]:
                    wasted += 1
                    break
                kept += 1
            step = min(kept + 1, n - i)
            tokens, rounds, i = tokens + step, rounds + 1, i + step
    return {"threshold": threshold, "max_drafts": max_drafts, "tokens_per_round": round(tokens / rounds, 3),
            "wasted_drafts_per_token": round(wasted / tokens, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cut", type=int, default=15)
    ap.add_argument("--chunks", type=int, default=40, help="calibration chunks of 256 tokens")
    ap.add_argument("--steps", type=int, default=600, help="KL-fit batches")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/xeon/explore_llm_draft.json"))
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg, w, reader = lm.read_gguf(lm.gguf_path())
    front = lm.build_stage(cfg, w, 0, a.cut, embed=True, head=False)
    back = lm.build_stage(cfg, w, a.cut, cfg.layers, embed=False, head=False)
    whole = lm.build_stage(cfg, w, 0, cfg.layers, embed=True, head=True)
    emb, norm = torch.from_numpy(w["token_embd.weight"]), torch.from_numpy(np.array(w["output_norm.weight"]))
    tok = Tokenizer.from_str(lm.tokenizer_json(reader))
    from pydoc_data.topics import topics

    ids = tok.encode("\n\n".join(topics[k] for k in sorted(topics))).ids
    half, L = len(ids) // 2, 256
    t0 = time.perf_counter()
    cal = [_pairs(front, back, norm, cfg.eps, ids[i:i + L]) for i in range(0, a.chunks * L, L)]
    held = [_pairs(front, back, norm, cfg.eps, ids[half + i:half + i + L]) for i in range(0, 8 * L, L)]
    chats = []
    for p in PROMPTS:  # the whole model's own answers: the positions decoding would draft at
        pid = tok.encode(CHAT.format(p)).ids
        ans = lm.greedy([whole], pid, a.new_tokens, cfg.eos)
        x, y = _pairs(front, back, norm, cfg.eps, pid + ans)
        chats.append((x[len(pid) - 1:len(pid) - 1 + len(ans)], y[len(pid) - 1:len(pid) - 1 + len(ans)]))
    collect_s = time.perf_counter() - t0
    x, y = torch.cat([c[0] for c in cal]).double(), torch.cat([c[1] for c in cal]).double()
    ridge = torch.linalg.solve(x.T @ x + torch.eye(x.shape[1], dtype=torch.float64), x.T @ y).float()
    wk = torch.nn.Parameter(ridge.clone())
    opt = torch.optim.Adam([wk], lr=3e-4)
    xf, yf = x.float(), y.float()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        idx = torch.randint(0, len(xf), (256,))
        with torch.no_grad():
            target = torch.softmax(yf[idx] @ emb.T, -1)
        loss = -(target * torch.log_softmax((xf[idx] @ wk) @ emb.T, -1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    fit_s = time.perf_counter() - t0
    xh, yh = torch.cat([c[0] for c in held]), torch.cat([c[1] for c in held])
    xc, yc = torch.cat([c[0] for c in chats]), torch.cat([c[1] for c in chats])
    fits = {}
    for name, wm in (("least_squares", ridge), ("kl", wk.detach())):
        pydoc, _, _ = _score(wm, emb, xh, yh)
        chat, _, _ = _score(wm, emb, xc, yc)
        answers = [_score(wm, emb, cx, cy)[1:] for cx, cy in chats]
        fits[name] = {"pydoc_held_out": pydoc, "chat_answers": chat,
                      "rounds": [_rounds(answers, t, d) for t in THRESHOLDS for d in (1, 2, 4)]}
    plain = _score(torch.cat([torch.diag(norm), torch.zeros(1, cfg.hidden)]), emb, xc, yc)[0]["agreement"]
    out = {"machine": {"cpu": cpu_name(), "python": platform.python_version()}, "cut": a.cut,
           "calibration_positions": int(len(x)), "kl_steps": a.steps, "collect_s": round(collect_s, 1),
           "kl_fit_s": round(fit_s, 1), "plain_head_at_cut_chat_agreement": plain, "fits": fits}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    for name, f in fits.items():
        best = max(f["rounds"], key=lambda r: r["tokens_per_round"])
        print(f"{name}: agreement pydoc {f['pydoc_held_out']['agreement']:.3f}, chat {f['chat_answers']['agreement']:.3f}; "
              f"best {best['tokens_per_round']} tokens per round (threshold {best['threshold']}, "
              f"<= {best['max_drafts']} drafts, {best['wasted_drafts_per_token']} wasted drafts per token)")
    print(f"plain norm + head at the cut: chat agreement {plain:.3f}; wrote {a.out}")


if __name__ == "__main__":
    main()
