"""torch's ``nn.MultiheadAttention`` traced batch first, for the native engine.

torch runs a batch-first ``nn.MultiheadAttention`` (torchvision's ViT) sequence first inside:
``query.transpose(1, 0)``, then the heads folded into the batch (``q.view(L, B * H, D)``), and back.
The native engine keeps the batch as every tensor's first dim, so the front half of such a model ran on
onnxruntime only ("perm [1, 0, 2] moves the batch dim"). While the model is traced, each such module's
``forward`` is swapped (on the instance, restored after) for the same computation written batch first:
the same packed input projection, the same head split of it, the same attention call
(``scaled_dot_product_attention`` with ``need_weights=False``, the scaled ``q @ k^T`` and softmax
otherwise), the same output projection, the same weights. Only the order of the batch and sequence dims
in the intermediate tensors differs.

Why a swap and not a graph rewrite as for timm's ``permute(2, 0, 3, 1, 4)`` (``pick_transpose``): the
folding of batch and heads into one dim (``Reshape [L, B * H, D]``, then a Transpose, then the reverse
Reshape after the attention) spans a dozen ONNX nodes whose shapes torch computes from ``Shape`` ops;
recognising that as a whole in the graph is fragile, while the module's own arguments say exactly when
the batch-first form is the same computation. What it does not cover (cross attention, masks,
``add_bias_kv``, ``add_zero_attn``, separate k / v dims, ``batch_first=False``) is traced by torch's own
``forward`` as before.
"""

from __future__ import annotations

import contextlib
import math
import types
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def batch_first_attention(module: nn.Module) -> Iterator[int]:
    """While inside, every ``nn.MultiheadAttention`` in ``module`` (forward not overridden) computes
    batch first; yields how many were swapped. The module is as it was afterwards."""
    swapped = [m for m in module.modules() if isinstance(m, nn.MultiheadAttention)
               and type(m).forward is nn.MultiheadAttention.forward and "forward" not in vars(m)]
    for m in swapped:
        m.forward = types.MethodType(_forward, m)
    try:
        yield len(swapped)
    finally:
        for m in swapped:
            del m.forward


def _covered(m: nn.MultiheadAttention, query, key, value, key_padding_mask, attn_mask, is_causal) -> bool:
    """Self-attention on a batch-first [B, L, E] tensor, no mask, no extra key / value rows."""
    return (m.batch_first and query.dim() == 3 and query is key and key is value and m._qkv_same_embed_dim
            and m.in_proj_weight is not None and m.bias_k is None and m.bias_v is None and not m.add_zero_attn
            and key_padding_mask is None and attn_mask is None and not is_causal
            and not (m.training and m.dropout > 0.0))


def _forward(self: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
             attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
             is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``nn.MultiheadAttention.forward`` (torch 2.13 ``F.multi_head_attention_forward``, its self-attention
    path) with the batch kept first; anything else goes to torch's own forward."""
    if not _covered(self, query, key, value, key_padding_mask, attn_mask, is_causal):
        return nn.MultiheadAttention.forward(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                                             average_attn_weights, is_causal)
    b, n, e = query.shape
    h = self.num_heads
    d = e // h
    proj = F.linear(query, self.in_proj_weight, self.in_proj_bias)  # [B, L, 3E]: q, k, v side by side
    q, k, v = (proj[..., i * e:(i + 1) * e].reshape(b, n, h, d).transpose(1, 2) for i in range(3))  # [B, H, L, D]
    weights = None
    if need_weights:
        attn = torch.softmax((q * math.sqrt(1.0 / float(d))) @ k.transpose(-2, -1), dim=-1)
        out = attn @ v
        weights = attn.mean(dim=1) if average_attn_weights else attn
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    out = F.linear(out.transpose(1, 2).reshape(b, n, e), self.out_proj.weight, self.out_proj.bias)
    return out, weights
