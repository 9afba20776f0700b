"""A batch-1 example is traced as two copies stacked: torch specialises a dim of size 1, so with the
user's usual `torch.randn(1, ...)` some standard layers failed to trace or traced to a fixed batch."""

from __future__ import annotations

import numpy as np
import pytest

MODELS = '''
import torch
import torch.nn as nn

class ChannelsLastNorm(nn.Module):  # ConvNeXt's LayerNorm2d (and Swin's norms) feeding a Conv
    def __init__(self):
        super().__init__()
        self.stem, self.norm = nn.Conv2d(3, 8, 2, stride=2), nn.LayerNorm(8)
        self.dw, self.head = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Linear(8, 4)
    def forward(self, x):
        y = self.norm(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(torch.relu(self.dw(y)).mean((2, 3)))

class Attn(nn.Module):  # nn.MultiheadAttention (a ViT's blocks) traced to a fixed batch of 1
    def __init__(self):
        super().__init__()
        self.mha, self.fc = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)
    def forward(self, x):
        a, _ = self.mha(x, x, x)
        return self.fc(a.mean(1))

def norm():
    torch.manual_seed(0)
    return ChannelsLastNorm(), torch.randn(1, 3, 8, 8)

def attn():
    torch.manual_seed(0)
    return Attn(), torch.randn(1, 5, 8)
'''


@pytest.mark.parametrize("fn", ["norm", "attn"])
def test_a_batch_1_example_traces_to_a_free_batch_that_matches_torch(tmp_path, fn):
    # norm: "torch.onnx.export could not trace the model (UserError: Invalid ranges [2:1]) ... make forward()
    # traceable (no data-dependent Python control flow)"; attn: "the traced graph has a fixed batch of 1"
    import onnx
    import torch

    from edgerun.engine import ort_session
    from edgerun.exporters.pipeline import trace_model

    path = tmp_path / "m.py"
    path.write_text(MODELS)
    traced = trace_model(f"{path}:{fn}")
    assert traced.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    onnx.save(traced.model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((3, *traced.source.example.shape[1:])).astype(np.float32)
    got = ort_session(tmp_path / "m.onnx").run(None, {traced.model.graph.input[0].name: x})[0]
    with torch.no_grad():
        want = traced.source.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
