"""Vision transformers' attention on the native engine: timm's ``permute(2, 0, 3, 1, 4)`` + ``unbind`` (DeiT,
DINOv2) and torch's ``nn.MultiheadAttention`` (torchvision's ViT) both moved the batch dim, and such fronts
ran on onnxruntime only. Now each runs natively and equals onnxruntime, and the traced graph equals the
torch model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgerun.engine import NativeEngine, OrtEngine
from edgerun.exporters import erg

from _models import TimmViT, perturbed_export  # noqa: E402

RTOL = 1e-4  # as test_engine_ops.py: summation order only; a wrong pick or layout is O(1)


def _err(ref: np.ndarray, got: np.ndarray) -> float:
    assert ref.shape == got.shape
    return float(np.abs(ref - got).max()) / max(float(np.abs(ref).max()), 1e-3)


def _check(module: nn.Module, example: torch.Tensor, tmp_path, name: str) -> None:
    """Traced, no node falls back; native == onnxruntime == torch at batch 1 and 3, 1 and 2 threads."""
    model, onnx_path, erg_path, _ = perturbed_export(module, example, tmp_path, name)
    assert erg.check_native_support(model) == []
    ort = OrtEngine(onnx_path)
    for batch, threads in ((1, 1), (3, 2)):
        x = np.random.default_rng(batch).standard_normal((batch, *example.shape[1:])).astype(np.float32)
        ref = ort.run(x)
        got = NativeEngine(erg_path, max_batch=4, threads=threads).run(x)
        with torch.no_grad():
            want = module(torch.from_numpy(x))
        want = want[0] if isinstance(want, tuple) else want
        (k,) = ref
        assert _err(ref[k], got[k]) <= RTOL, f"{name} b{batch} t{threads}: native vs onnxruntime"
        assert _err(want.numpy(), ref[k]) <= RTOL, f"{name} b{batch}: onnxruntime vs torch"


@pytest.mark.parametrize("pick, fused", [("unbind", False), ("index", False), ("unbind", True)])
def test_timm_style_attention_runs_natively(tmp_path, pick, fused):
    # before: "the native engine cannot run node 'node_permute' (op Transpose): perm [2, 0, 3, 1, 4] moves
    # the batch dim"
    _check(TimmViT(pick=pick, fused=fused), torch.randn(1, 3, 16, 16), tmp_path, f"timm_{pick}_{fused}")


class MhaBlock(nn.Module):
    """torchvision's ``EncoderBlock``: pre-norm ``nn.MultiheadAttention(batch_first=True)`` and an MLP,
    then (``weights``) the heads' attention maps too."""

    def __init__(self, d: int = 24, heads: int = 3, need_weights: bool = False, average: bool = True):
        super().__init__()
        self.need_weights, self.average = need_weights, average
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        y = self.ln1(x)
        a, w = self.attn(y, y, y, need_weights=self.need_weights, average_attn_weights=self.average)
        x = x + a
        x = x + self.mlp(self.ln2(x))
        if w is None:
            return x
        return x + (w if self.average else w[:, -1]) @ x  # the maps used: the last head's when not averaged


@pytest.mark.parametrize("need_weights, average, heads", [(False, True, 3), (True, True, 3), (True, False, 4)])
def test_torch_multihead_attention_runs_natively(tmp_path, need_weights, average, heads):
    # before: "perm [1, 0, 2] moves the batch dim" (torch runs it sequence first inside); with 4 heads (even)
    # torch's eager fast path answers, not the code traced
    block = MhaBlock(24, heads, need_weights, average)
    _check(block, torch.randn(1, 6, 24), tmp_path, f"mha_{need_weights}_{average}_{heads}")
    assert "forward" not in vars(block.attn)  # the swap was for the trace only


def test_torch_transformer_encoder_runs_natively(tmp_path):
    # nn.TransformerEncoderLayer calls its nn.MultiheadAttention with need_weights=False: swapped the same way
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    _check(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), torch.randn(1, 7, 32), tmp_path, "encoder")


class CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x[:, :3], x[:, :3], need_weights=False)[0]


def test_attention_the_swap_does_not_cover_is_traced_as_torch_writes_it(tmp_path):
    from edgerun.exporters.trace import to_onnx

    module = CrossAttention().eval()
    model = to_onnx(module, torch.randn(1, 5, 8))
    assert "Transpose" in {op for _, op in erg.check_native_support(model)}  # torch's own: sequence first
    import onnx

    onnx.save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert _err(want, next(iter(OrtEngine(tmp_path / "m.onnx").run(x).values()))) <= RTOL


class TorchvisionStyleViT(nn.Module):
    """torchvision's ``VisionTransformer`` in small: patch Conv, class token, position embedding,
    ``nn.MultiheadAttention`` blocks, head on the class token."""

    def __init__(self, d: int = 24, heads: int = 3):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, d, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        self.pos_embedding = nn.Parameter(torch.randn(1, 17, d) * 0.1)
        self.layers = nn.Sequential(MhaBlock(d, heads), MhaBlock(d, heads), MhaBlock(d, heads))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, 5)

    def forward(self, x):
        t = self.conv_proj(x).flatten(2).permute(0, 2, 1)
        t = torch.cat([self.class_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embedding
        return self.head(self.ln(self.layers(t))[:, 0])


def test_a_torchvision_style_vit_splits_with_a_native_front_equal_to_torch(tmp_path):
    from edgerun.exporters.models import SourceModel
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model

    torch.manual_seed(0)
    module = TorchvisionStyleViT().eval()
    traced = trace_model(SourceModel("vit", module, torch.randn(1, 3, 16, 16)))
    cut = next(c for c in traced.cuts if c.label == "layers.1")  # inside the encoder: attention on both sides
    b = export(traced, ExportConfig(cut=cut.index, evaluate=False, calib_samples=4), tmp_path / "b")
    assert b.native_ok, b.native_reason
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    mid = NativeEngine(b.file("front.erg"), max_batch=4, threads=2).run(x)
    (got,) = OrtEngine(b.file("back.onnx")).run(mid).values()
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert _err(want, got) <= RTOL  # the split, native front, against the torch model itself
