"""Shared by the runtime tests: export a torch module with its weights pushed off their init
(so no layer is near-identity) to ONNX and to the engine's .erg."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

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
