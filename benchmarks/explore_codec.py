"""What limits activation compression at one EfficientNet-Lite0 block boundary (a study, not the wire codec).

The tsq codec (edgerun/codec.py) gives every row one absolute error budget. This script asks
whether a smarter rate allocation could reach 8x at <= 0.5 pp where tsq cannot, with a
simulation of the same row quantizer (rows = one channel's map; each row gets the fewest of
1..12 bits whose half step is within its budget; bytes = packed bits + 4 B of fp16 min and step
per row + a 4-bit row code, 2 B for a 0-bit row) run through the real back half (torch):

* ``uniform``: one budget for every channel (what tsq does);
* ``weighted``: each channel's budget scaled by 1 / sqrt(sensitivity), the sensitivity being
  the mean squared gradient of the top-1 minus top-2 logit margin over the calibration crops
  (equal margin-noise per channel), normalised to geometric mean 1.

``--transform-sweep`` asks instead whether a transform plus entropy coding would: a uniform
quantizer with one step per channel (a multiple of the channel's std on the calibration crops),
its symbols entropy coded with one static table per channel learnt on the calibration crops
(cross-entropy on the measured crops: bits per value, side info not counted), on the channel maps
as they are and after an orthonormal 2-D DCT of each 14x14 map (JPEG's spatial transform).

For each budget: ratio vs fp32, the ideal ratio if the row symbols were entropy coded (one
static table per bit width), top-1 flips against fp32 on the 138 eval crops and on the 828
``extra`` views (exporters/data.py), and mean KL. Also printed: the coding gain a channel
transform (KLT) could give, from the eigenvalues of the channel covariance.

Run:
    python benchmarks/explore_codec.py [--block 7] [--budgets 0.1,0.2,0.3,0.5,0.8]
        [--transform-sweep 0.1,0.2,0.3,0.4] [--out benchmarks/results/explore_codec.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edgerun.exporters import data
from edgerun.exporters.zoo.efficientnet_lite0 import load_pretrained

BATCH = 32


def halves(model, block: int):
    def front(x):
        if model.stem_pad is not None:
            x = model.stem_pad(x)
        x = model.stem_act(model.bn0(model.conv_stem(x)))
        for b in model.blocks[:block + 1]:
            x = b(x)
        return x

    def back(a):
        for b in model.blocks[block + 1:]:
            a = b(a)
        a = model.head_act(model.bn1(model.conv_head(a)))
        return model.fc(model.flatten(model.avgpool(a)))

    return front, back


def batched(fn, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([fn(torch.from_numpy(x[i:i + BATCH])) for i in range(0, len(x), BATCH)]).numpy()


def margin_sensitivity(back, acts: np.ndarray) -> np.ndarray:
    """Per channel: mean over samples and positions of d(top1 - top2 logit) / d activation, squared."""
    g2 = np.zeros(acts.shape[1], np.float64)
    for i in range(0, len(acts), BATCH):
        a = torch.from_numpy(acts[i:i + BATCH]).requires_grad_(True)
        z = back(a)
        top = z.topk(2, dim=1).indices
        (z.gather(1, top[:, :1]) - z.gather(1, top[:, 1:])).sum().backward()
        g2 += (a.grad.numpy().astype(np.float64) ** 2).sum(axis=(0, 2, 3))
    return g2 / (len(acts) * acts.shape[2] * acts.shape[3])


def quantize_rows(acts: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Decoded activations, mean bytes per sample, ideal entropy-coded bytes per sample."""
    n, c = acts.shape[:2]
    rows = acts.reshape(n, c, -1).astype(np.float64)
    p = rows.shape[2]
    lo, hi = rows.min(2, keepdims=True), rows.max(2, keepdims=True)
    rng, e = hi - lo, err[None, :, None]
    bits = np.full(rng.shape, 12)
    for b in range(11, 0, -1):
        bits = np.where(rng / (2**b - 1) / 2 <= e, b, bits)
    bits = np.where(rng <= 2 * e, 0, bits)
    step = np.where(bits > 0, rng / np.maximum(2.0**bits - 1, 1), 1.0)
    q = np.where(bits > 0, np.round((rows - lo) / step), 0)
    dec = np.where(bits > 0, lo + q * step, (lo + hi) / 2)
    side = np.where(bits > 0, 4, 2) + 0.5
    nbytes = float((np.ceil(bits * p / 8) + side).sum() / n)
    h_bits = 0.0
    for b in range(1, 13):
        sel = (bits == b)[..., 0]
        if sel.any():
            sym = q[sel].astype(np.int64).ravel()
            f = np.bincount(sym) / len(sym)
            f = f[f > 0]
            h_bits += float(-(f * np.log2(f)).sum()) * len(sym)
    return dec.reshape(acts.shape).astype(np.float32), nbytes, float((h_bits / 8 + side.sum()) / n)


def transform_sweep(back, acts: dict, ref: dict, steps: list[float]) -> list[dict]:
    """Uniform quantization per channel + static per-channel entropy tables, without and with a 2-D DCT."""
    from scipy.fft import dctn, idctn

    sd = acts["calib"].std(axis=(0, 2, 3))[None, :, None, None].astype(np.float64)
    rows = []
    for dct in (False, True):
        fwd = (lambda a: dctn(a, axes=(2, 3), norm="ortho")) if dct else (lambda a: a)
        inv = (lambda a: idctn(a, axes=(2, 3), norm="ortho")) if dct else (lambda a: a)
        for rel_step in steps:
            step = rel_step * sd
            qc = np.round(fwd(acts["calib"].astype(np.float64)) / step).astype(np.int64)
            row = {"mode": "dct" if dct else "pixels", "step_over_std": rel_step}
            for split in ("eval", "extra"):
                qe = np.round(fwd(acts[split].astype(np.float64)) / step).astype(np.int64)
                bits = 0.0
                for ch in range(qe.shape[1]):
                    a, b = qc[:, ch].ravel(), qe[:, ch].ravel()
                    lo = min(a.min(), b.min())
                    f = np.bincount(a - lo, minlength=max(a.max(), b.max()) - lo + 1) + 0.5
                    bits += float(-np.log2((f / f.sum())[b - lo]).sum())
                flips, kl = flips_and_kl(back, inv(qe * step).astype(np.float32), ref[split])
                row.update({f"{split}_bits_per_value": round(bits / qe.size, 3),
                            f"{split}_ratio": round(32 * qe.size / bits, 2), f"{split}_flips": flips,
                            f"{split}_loss_pp": round(100 * flips / len(qe), 2), f"{split}_kl": kl})
            rows.append(row)
            print(f"{row['mode']:6} step {rel_step:.2f} std  {row['eval_bits_per_value']:.2f} bits/value "
                  f"({row['eval_ratio']:.1f}x)  eval flips {row['eval_flips']}/{len(ref['eval'])}  extra flips "
                  f"{row['extra_flips']}/{len(ref['extra'])} ({row['extra_loss_pp']:.2f} pp)", flush=True)
    return rows


def flips_and_kl(back, dec: np.ndarray, ref_logits: np.ndarray) -> tuple[int, float]:
    logits = batched(back, dec)
    p = torch.log_softmax(torch.from_numpy(ref_logits), 1)
    q = torch.log_softmax(torch.from_numpy(logits), 1)
    kl = float((p.exp() * (p - q)).sum(1).mean())
    return int((logits.argmax(1) != ref_logits.argmax(1)).sum()), kl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, default=7, help="cut after blocks.N")
    ap.add_argument("--budgets", default="0.1,0.2,0.3,0.5,0.8,1.2,2.0", help="absolute per-row error budgets")
    ap.add_argument("--transform-sweep", default=None, metavar="STEPS",
                    help="instead: uniform steps (x channel std) with entropy coding, pixels vs 2-D DCT, e.g. 0.1,0.2,0.3")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/explore_codec.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    front, back = halves(load_pretrained(), args.block)
    sets = {s: data.photo_crops(s)[0] for s in ("calib", "eval", "extra")}
    acts = {s: batched(front, x) for s, x in sets.items()}
    ref = {s: batched(back, acts[s]) for s in ("eval", "extra")}
    if args.transform_sweep:
        rows = transform_sweep(back, acts, ref, [float(x) for x in args.transform_sweep.split(",")])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cut": f"blocks.{args.block}", "transform_sweep": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")
        return
    sens = margin_sensitivity(back, acts["calib"])
    scale = 1 / np.sqrt(sens)
    scale /= np.exp(np.log(scale).mean())
    chans = acts["calib"].transpose(0, 2, 3, 1).reshape(-1, acts["calib"].shape[1]).astype(np.float64)
    eig = np.linalg.eigvalsh(np.cov(chans, rowvar=False))
    var = chans.var(0)
    gm = lambda v: float(np.exp(np.log(v).mean()))  # noqa: E731
    klt_bits = 0.5 * np.log2(gm(var) / gm(eig))
    fp32_bytes = acts["eval"][0].nbytes
    rows = []
    for mode, s in (("uniform", np.ones_like(scale)), ("weighted", scale)):
        for budget in (float(b) for b in args.budgets.split(",")):
            row = {"mode": mode, "budget": budget}
            for split in ("eval", "extra"):
                dec, nbytes, hbytes = quantize_rows(acts[split], budget * s)
                flips, kl = flips_and_kl(back, dec, ref[split])
                row.update({f"{split}_ratio": round(fp32_bytes / nbytes, 2),
                            f"{split}_entropy_ratio": round(fp32_bytes / hbytes, 2),
                            f"{split}_flips": flips, f"{split}_loss_pp": round(100 * flips / len(dec), 2),
                            f"{split}_kl": kl})
            rows.append(row)
            print(f"{mode:8} budget {budget:5.2f}  ratio {row['eval_ratio']:5.2f} (entropy-coded "
                  f"{row['eval_entropy_ratio']:5.2f})  eval flips {row['eval_flips']:2d}/{len(ref['eval'])} "
                  f"KL {row['eval_kl']:.2e}  extra flips {row['extra_flips']:3d}/{len(ref['extra'])} "
                  f"({row['extra_loss_pp']:.2f} pp)", flush=True)
    print(f"channel KLT: eigenvalue AM/GM {eig.mean() / gm(eig):.2f} vs channel-variance AM/GM "
          f"{var.mean() / gm(var):.2f}: {klt_bits:.2f} bits per value saved at equal error")
    out = {"cut": f"blocks.{args.block}", "shape": list(acts["eval"].shape[1:]), "fp32_bytes": int(fp32_bytes),
           "samples": {s: int(len(a)) for s, a in acts.items()}, "klt_bits_per_value": round(klt_bits, 3),
           "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
