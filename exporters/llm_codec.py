"""The activation codec on a split LLM's hidden states, calibrated and measured at export.

What crosses the cut per position is one hidden state (576 floats for SmolLM2-135M). tsq codes it
token-wise: each position's vector is one row (``layout="channel"`` on the (1, T, hidden) tensor),
the few huge values mid-network LLM hidden states carry travel exactly (threshold split) and the
rest takes the fewest bits that keep every value within ``max_err``. Rows are coded independently,
so a replayed session decodes to the very values the server saw the first time.

Measured on text the model did not see in calibration (the stdlib's ``pydoc_data.topics``), by
teacher forcing: the front half runs the text, the hidden states go through the codec, the back
half runs position by position; each position's top-1 next token is compared with the uncoded
split's (agreement) and the true next token's log-likelihood gives the perplexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgerun import codec, llm

# The grid calibrate() searches: the split threshold as a percentile of |hidden| (mid-network hidden
# states carry a few values 100-10,000x the median, which TS sends exactly) x the relative-MSE budget.
TAU_PERCENTILES = (98.0, 99.0, 99.5)
BUDGETS = (3e-4, 1e-3, 3e-3)
MIN_AGREEMENT = 0.99  # the rule: top-1 next-token agreement with the uncoded split on calibration text
MAX_PPL_RISE = 0.01   # ... and perplexity within 1 % of the uncoded split's


@dataclass
class Chunks:
    calib: list[list[int]]
    eval: list[list[int]]


def corpus_chunks(tok: llm.Tokenizer, n: int, length: int) -> Chunks:
    """``n`` calibration and ``n`` evaluation chunks of ``length`` tokens from ``pydoc_data.topics``:
    calibration from its first half, evaluation from its second (no text in both)."""
    from pydoc_data.topics import topics

    ids = tok.encode("\n\n".join(topics[k] for k in sorted(topics)))
    half = len(ids) // 2
    step = max(length, (half - length) // max(n, 1))
    calib = [ids[i * step:i * step + length] for i in range(n)]
    ev = [ids[half + i * step:half + i * step + length] for i in range(n)]
    return Chunks(calib, ev)


def _hidden(front: llm.Half, chunk: list[int]) -> np.ndarray:
    return front.step(np.array([chunk], np.int64), front.new_cache())


def _logits(back: llm.Half, h: np.ndarray) -> np.ndarray:
    cache = back.new_cache()
    return np.concatenate([back.step(np.ascontiguousarray(h[:, i:i + 1]), cache) for i in range(h.shape[1])])


def _coded(h: np.ndarray, p: codec.TSQParams) -> tuple[np.ndarray, int]:
    payload = codec.encode_native(np.ascontiguousarray(h, np.float32), p)
    return codec.decode_native(payload, h.shape, p), len(payload)


def _score(logits: np.ndarray, chunk: list[int]) -> tuple[np.ndarray, float]:
    """Top-1 per position and the mean negative log-likelihood of the true next tokens."""
    z = logits[:-1].astype(np.float64)
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    nll = float(np.mean(lse - z[np.arange(len(z)), chunk[1:]]))
    return logits.argmax(-1), nll


def evaluate(front: llm.Half, back: llm.Half, chunks: list[list[int]],
             params: list[codec.TSQParams]) -> list[dict[str, Any]]:
    """Per params (None first: the uncoded split): agreement with it, perplexity, bytes per position."""
    hs = [_hidden(front, c) for c in chunks]
    ref = [_score(_logits(back, h), c) for h, c in zip(hs, chunks)]
    rows = [{"codec": "none", "agreement": 1.0, "ppl": math.exp(np.mean([r[1] for r in ref])),
             "bytes_per_position": 4 * hs[0].shape[2], "ratio": 1.0}]
    for p in params:
        agree, nll, nbytes, n = 0, [], 0, 0
        for h, c, (top, _) in zip(hs, chunks, ref):
            y, size = _coded(h, p)
            t, v = _score(_logits(back, y), c)
            agree += int((t == top).sum())
            nll.append(v)
            nbytes += size
            n += h.shape[1]
        per = nbytes / n + len(p.to_bytes()) / len(chunks[0])
        rows.append({"codec": "tsq", "budget": p.budget, "tau": p.tau, "max_err": p.max_err, "agreement": agree / n,
                     "ppl": math.exp(float(np.mean(nll))), "bytes_per_position": per,
                     "ratio": 4 * hs[0].shape[2] / per})
    return rows


def calibrate(front: llm.Half, back: llm.Half, chunks: Chunks) -> dict[str, Any]:
    """tsq params for every (threshold percentile, budget) of the grid, fitted on the calibration chunks'
    hidden states; the chosen one has the fewest bytes among those that keep top-1 agreement >=
    MIN_AGREEMENT and perplexity within MAX_PPL_RISE of the uncoded split on the calibration chunks.
    Returns the codec entry (id, params) and every point's figures on calibration and evaluation text."""
    acts = np.concatenate([_hidden(front, c) for c in chunks.calib], axis=1)
    params = [codec.calibrate(acts, budget=b, tau_percentile=t, layout="channel")
              for t in TAU_PERCENTILES for b in BUDGETS]
    cal = evaluate(front, back, chunks.calib, params)
    ok = [i for i, r in enumerate(cal[1:]) if r["agreement"] >= MIN_AGREEMENT
          and r["ppl"] <= cal[0]["ppl"] * (1 + MAX_PPL_RISE)]
    chosen = max(ok, key=lambda i: cal[1 + i]["ratio"]) if ok else None
    ev = evaluate(front, back, chunks.eval, params)
    for rows in (cal, ev):
        for r, (t, b) in zip(rows[1:], [(t, b) for t in TAU_PERCENTILES for b in BUDGETS]):
            r["tau_percentile"], r["budget"] = t, b
    return {"id": "tsq" if chosen is not None else "none",
            "params": {"hidden": params[chosen].to_bytes().hex()} if chosen is not None else {},
            "rule": f"fewest bytes with top-1 agreement >= {MIN_AGREEMENT} and perplexity <= "
                    f"{1 + MAX_PPL_RISE:g}x the uncoded split's on calibration text",
            "chosen": None if chosen is None else {"calib": cal[1 + chosen], "eval": ev[1 + chosen]},
            "calib": cal, "eval": ev,
            "positions": {"calib": sum(map(len, chunks.calib)), "eval": sum(map(len, chunks.eval))},
            "text": "pydoc_data.topics (stdlib): calibration from its first half, evaluation from its second"}
