"""Shared by the runtime tests and benchmarks/bench_engine_ops.py: export a torch module with its
weights pushed off their init (so no layer is near-identity) to ONNX and to the engine's .erg, and
the small user-style models that exercise the engine's ops (test_engine_ops.py)."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from edgerun.exporters import erg


def perturbed_export(module: torch.nn.Module, example: torch.Tensor, out_dir: Path, name: str):
    """Returns (onnx model, onnx path, erg path, write_erg's info)."""
    from edgerun.exporters.trace import to_onnx

    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        for b in module.buffers():
            if b.dtype.is_floating_point:
                b.uniform_(0.5, 1.5)
    model = to_onnx(module.eval(), example)
    onnx_path, erg_path = out_dir / f"{name}.onnx", out_dir / f"{name}.erg"
    onnx.save(model, onnx_path)
    info = erg.write_erg(model, erg_path)
    return model, onnx_path, erg_path, info


class Detector(nn.Module):
    """A small FPN-style vision model: LeakyReLU, GELU, nearest x2 / (2, 3) upsampling."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.lat = nn.Conv2d(16, 8, 1)
        self.out = nn.Conv2d(8, 6, 3, padding=1)

    def forward(self, x):
        a = F.leaky_relu(self.c1(x), 0.1)
        b = F.gelu(self.c2(a))
        up = F.interpolate(self.lat(b), scale_factor=2, mode="nearest")
        y = F.gelu(self.out(a + up), approximate="tanh")
        return F.interpolate(y, scale_factor=(2, 3), mode="nearest") * 0.5


class ImuNet(nn.Module):
    """A 1-D sensor model: Conv1d (padding, stride, dilation, groups), BatchNorm1d, pooling."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(6, 16, 5, padding=2)
        self.bn = nn.BatchNorm1d(16)
        self.c2 = nn.Conv1d(16, 32, 3, stride=2, padding=2, dilation=2, groups=4)
        self.pw = nn.Conv1d(32, 24, 1)
        self.fc = nn.Linear(24, 4)

    def forward(self, x):
        y = F.relu(self.bn(self.c1(x)))
        y = F.max_pool1d(y, 3, stride=2, padding=1)
        y = F.leaky_relu(self.c2(y), 0.2)
        y = F.avg_pool1d(self.pw(y), 2)
        return self.fc(y.mean(-1))


class Shuffle(nn.Module):
    """ShuffleNet / CSP-style data movement: channel shuffle, chunk, strided slice, softmax,
    and a [N, T, C] sequence transposed into a Conv1d."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.seq = nn.Conv1d(8, 4, 3)

    def forward(self, x):
        y = self.c(x).unflatten(1, (2, 4)).transpose(1, 2).flatten(1, 2)
        a, b = y.chunk(2, dim=1)
        y = torch.cat([a.softmax(dim=1), F.relu(b[:, :, 1::2, ::3]).mean((2, 3), keepdim=True) * b], 1)
        t = y.mean(2).transpose(1, 2)                           # [N, W, C]: a token sequence
        z = self.seq(t.transpose(1, 2)[:, :, 1:-1]).softmax(-1)
        return torch.cat([y[:, 2:7].flatten(1), z.flatten(1)], 1)


class Activations(nn.Module):
    """The other common activations: a policy MLP's tanh, ELU, Softplus, Mish, PReLU (per channel
    and shared), on convs and on a Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.p1 = nn.PReLU(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.p2 = nn.PReLU()
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        y = self.p1(self.c1(x))
        y = F.elu(y, 0.7) + F.softplus(y) + F.mish(self.p2(self.c2(y)))
        return torch.tanh(self.fc(y.mean((2, 3)))) * 2.0


class Block(nn.Module):
    """A pre-norm transformer block: LayerNorm, multi-head attention (two activation products,
    softmax), GELU MLP."""

    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.h = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        d = x.shape[-1]
        q, k, v = (t.unflatten(-1, (self.h, d // self.h)).transpose(1, 2) for t in self.qkv(self.ln1(x)).chunk(3, -1))
        a = (q @ k.transpose(-2, -1) * (d // self.h) ** -0.5).softmax(-1)
        x = x + self.proj((a @ v).transpose(1, 2).flatten(2))
        return x + self.mlp(self.ln2(x))


class TinyViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 32, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 16, 32) * 0.1)
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.blocks(self.patch(x).flatten(2).transpose(1, 2) + self.pos).mean(1))


class ClsViT(nn.Module):
    """A ViT with a class token (torch writes Shape -> Concat -> Expand for ``cls.expand(n, -1, -1)``)
    whose output is the token's row (Gather with a constant index), after a MobileNetV3-style
    squeeze-excite stem (a [N, C, 1, 1] gate times the [N, C, H, W] map)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.se1, self.se2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.patch = nn.Conv2d(16, 32, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 32))
        self.pos = nn.Parameter(torch.randn(1, 17, 32) * 0.1)
        self.block = Block()
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        a = F.hardswish(self.stem(x))
        a = a * F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(a, 1)))))
        t = self.patch(a).flatten(2).transpose(1, 2)
        t = self.block(torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos)
        return self.head(t[:, 0]) + t[:, 1:4].mean(1)[:, :10]


class SumPool(nn.Module):
    """Sums (ReduceSum): global sum pooling and an attention pooling over positions."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        a = torch.relu(self.c(x))
        q = a.flatten(2).transpose(1, 2)  # N, HW, 8
        w = torch.softmax(q.sum(-1, keepdim=True), 1)
        return self.fc(a.sum((2, 3)) / 10.0) + (q * w).sum(1)[:, :4]


class Norms(nn.Module):
    """GroupNorm (torch writes Reshape -> InstanceNormalization -> Reshape to Shape(x) -> affine)
    and InstanceNorm2d."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.inn = nn.InstanceNorm2d(8, affine=True)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(F.relu(self.inn(self.gn(self.c(x)))))


class Seg(nn.Module):
    """A segmentation-style head: bilinear upsampling back to the input size (torch writes the
    target size through Shape -> Slice -> Concat) and by 1.5 with align_corners."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        y = self.head(F.relu(self.down(x)))
        a = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        b = F.interpolate(y, scale_factor=1.5, mode="bilinear", align_corners=True)
        return torch.cat([a.flatten(1), b.flatten(1)], 1)


class TimmAttention(nn.Module):
    """timm's ``Attention`` (DeiT, DINOv2): one qkv Linear, ``reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)``
    (the 3 moves before the batch), then q, k, v picked by ``unbind(0)`` or by index (``pick="index"``),
    softmax attention written out or timm's fused ``scaled_dot_product_attention``."""

    def __init__(self, d: int, heads: int, pick: str = "unbind", fused: bool = False):
        super().__init__()
        self.h, self.pick, self.fused = heads, pick, fused
        self.scale = (d // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.h, c // self.h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0) if self.pick == "unbind" else (qkv[0], qkv[1], qkv[2])
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = (q * self.scale @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TimmBlock(nn.Module):
    """timm's ``Block``: pre-norm attention and GELU MLP, each scaled by a LayerScale (DINOv2)."""

    def __init__(self, d: int, heads: int, pick: str = "unbind", fused: bool = False):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.attn = TimmAttention(d, heads, pick, fused)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.ls1, self.ls2 = nn.Parameter(torch.full((d,), 0.5)), nn.Parameter(torch.full((d,), 0.5))

    def forward(self, x):
        x = x + self.ls1 * self.attn(self.norm1(x))
        return x + self.ls2 * self.mlp(self.norm2(x))


class TimmViT(nn.Module):
    """A timm-style ViT (patch embedding, class token, position embedding, blocks, final norm, head on
    the class token). ``TimmViT(224, 16, 384, 4, 6)`` is ViT-S/16's width at 4 blocks."""

    def __init__(self, img: int = 16, patch: int = 4, d: int = 32, depth: int = 2, heads: int = 4,
                 pick: str = "unbind", fused: bool = False, classes: int = 10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, d) * 0.02)
        self.blocks = nn.Sequential(*(TimmBlock(d, heads, pick, fused) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(d, eps=1e-6), nn.Linear(d, classes)

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(t))[:, 0])
