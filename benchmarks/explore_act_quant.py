"""Would uint8 tensors between layers keep the int8 front accurate? (a study, not the engine).

onnxruntime's QDQ model runs uint8 tensors through every layer of the front half; the native
engine keeps fp32 tensors and quantizes each int8 1x1 conv's input per pixel at run time
(asymmetric 8 bits over the pixel's channels, ERG.md). This script measures, on EfficientNet-Lite0
with fp32 weights and the activations of blocks 0-7 quantized in torch, what each activation
scheme alone costs against the fp32 model:

* ``engine``: the engine's scheme, per pixel, on every project conv's input (the depthwise
  outputs; the engine also quantizes the larger-K expands' inputs, not simulated here);
* ``u8_fixed_dw`` / ``u8_fixed_expand`` / ``u8_fixed_all``: every depthwise output, every expand
  output, or both, stored as uint8 on the fixed grid of their ReLU6 range (step 6 / 255, no
  calibration needed: the cheapest static uint8 pipeline);
* ``u8_channel_all``: both, per channel with each map's own min / max (dynamic, not streamable);
* ``engine_u8_expand``: the engine's scheme plus the expand outputs on the fixed grid (what a
  uint8 tensor between each expand conv and its depthwise would cost on top of today's int8
  front), and ``engine_u8_stem_expand`` with the stem's output on that grid too.

Printed per scheme: top-1 flips against fp32 and the logit relative L2 error, on the 138 eval
crops and the 828 ``extra`` views (exporters/data.py).

Run:
    python benchmarks/explore_act_quant.py [--blocks 8] [--out benchmarks/results/explore_act_quant.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgerun.exporters import data
from edgerun.exporters.zoo.efficientnet_lite0 import load_pretrained

BATCH = 64
SCHEMES = ("engine", "u8_fixed_dw", "u8_fixed_expand", "u8_fixed_all", "u8_channel_all", "engine_u8_expand",
           "engine_u8_stem_expand")


def fixed_grid(t: torch.Tensor) -> torch.Tensor:
    """A ReLU6 output stored as uint8 with step 6 / 255."""
    return torch.round(t * (255 / 6)).clamp(0, 255) * (6 / 255)


def _asym(t: torch.Tensor, dims) -> torch.Tensor:
    mn, mx = t.amin(dims, keepdim=True), t.amax(dims, keepdim=True)
    s = (mx - mn).clamp_min(1e-12) / 255
    return torch.round((t - mn) / s) * s + mn


def per_pixel(t: torch.Tensor) -> torch.Tensor:
    """The engine's run-time scheme: asymmetric 8 bits over each pixel's channels."""
    return _asym(t, (1,))


def per_channel(t: torch.Tensor) -> torch.Tensor:
    return _asym(t, (2, 3))


def quantizers(scheme: str) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Which ReLU6 outputs a scheme quantizes, and how."""
    return {
        "engine": {"depthwise_act": per_pixel},
        "u8_fixed_dw": {"depthwise_act": fixed_grid},
        "u8_fixed_expand": {"expand_act": fixed_grid},
        "u8_fixed_all": {"depthwise_act": fixed_grid, "expand_act": fixed_grid},
        "u8_channel_all": {"depthwise_act": per_channel, "expand_act": per_channel},
        "engine_u8_expand": {"depthwise_act": per_pixel, "expand_act": fixed_grid},
        "engine_u8_stem_expand": {"depthwise_act": per_pixel, "expand_act": fixed_grid, "stem_act": fixed_grid},
    }[scheme]


def hook(model, scheme: str, blocks: int) -> list:
    handles = []
    q = quantizers(scheme)
    if "stem_act" in q:
        handles.append(model.stem_act.register_forward_hook(lambda _m, _i, out, fn=q["stem_act"]: fn(out)))
    for block in model.blocks[:blocks]:
        for name, fn in q.items():
            if name == "stem_act":
                continue
            if name == "expand_act" and block.expand_conv is None:
                continue
            handles.append(getattr(block, name).register_forward_hook(lambda _m, _i, out, fn=fn: fn(out)))
    return handles


def logits(model, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=8, help="quantize blocks 0..N-1 (8: the blocks.7 front)")
    ap.add_argument("--out", default="benchmarks/results/explore_act_quant.json")
    ap.add_argument("--schemes", default=",".join(SCHEMES), help="comma-separated subset of " + ", ".join(SCHEMES))
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load_pretrained().eval()
    splits = {s: torch.from_numpy(data.photo_crops(s)[0].astype(np.float32)) for s in ("eval", "extra")}
    rows = []
    with torch.no_grad():
        ref = {s: logits(model, x) for s, x in splits.items()}
        for scheme in args.schemes.split(","):
            handles = hook(model, scheme, args.blocks)
            row = {"scheme": scheme, "blocks": args.blocks}
            for s, x in splits.items():
                out = logits(model, x)
                row[f"{s}_n"] = len(x)
                row[f"{s}_flips"] = int((out.argmax(1) != ref[s].argmax(1)).sum())
                row[f"{s}_logit_rel_err"] = round(float((out - ref[s]).norm() / ref[s].norm()), 5)
            for h in handles:
                h.remove()
            rows.append(row)
            print(f"{scheme:16s} eval flips {row['eval_flips']}/{row['eval_n']} "
                  f"err {100 * row['eval_logit_rel_err']:.2f}%  |  extra flips "
                  f"{row['extra_flips']}/{row['extra_n']} err {100 * row['extra_logit_rel_err']:.2f}%")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": "efficientnet-lite0", "weights": "fp32", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
