"""Evaluate the zoo models in fp32 and write the numbers as JSON.

digits-cnn: training time (trained afresh, TrainConfig.threads threads), held-out test accuracy,
batch-1 latency. efficientnet-lite0: load time, photos and crops used, batch-1
latency, a few predicted class names (sanity), mean top-1 probability.

Run:
    /work/venv/bin/python benchmarks/eval_zoo.py [--out benchmarks/results/eval_zoo.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from edgerun.exporters import data, zoo
from edgerun.exporters.zoo import digits_cnn

SANITY_PHOTOS = ("squirrel_cls.jpg", "baboon.jpg", "orange.jpg", "apple.jpg", "messi5.jpg", "sudoku.png")


def batch1_ms(module: torch.nn.Module, x: torch.Tensor, runs: int, warmup: int = 3) -> dict:
    """Median / p90 / min milliseconds of ``module`` on batch-1 inputs cycled from ``x``."""
    times = []
    with torch.no_grad():
        for i in range(warmup + runs):
            xi = x[i % len(x)][None]
            t0 = time.perf_counter()
            module(xi)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 3),
        "p90_ms": round(times[int(0.9 * (len(times) - 1))], 3),
        "min_ms": round(times[0], 3),
        "runs": runs,
    }


def eval_digits(runs: int) -> dict:
    t0 = time.perf_counter()
    _, acc_fresh = digits_cnn.train_digits_cnn()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = zoo.load("digits-cnn")
    load_s = time.perf_counter() - t0
    x, y = m.eval_data()
    acc = digits_cnn.accuracy(m.module, x, y)
    return {
        "train_seconds": round(train_s, 2),
        "train_epochs": digits_cnn.TrainConfig().epochs,
        "train_threads": digits_cnn.TrainConfig().threads,
        "test_accuracy": round(acc, 4),
        "test_accuracy_fresh_training": round(acc_fresh, 4),
        "test_images": int(len(y)),
        "load_seconds": round(load_s, 3),
        "fp32_batch1": batch1_ms(m.module, torch.from_numpy(x), runs),
    }


def eval_effnet(runs: int) -> dict:
    t0 = time.perf_counter()
    m = zoo.load("efficientnet-lite0")
    load_s = time.perf_counter() - t0
    x, _ = m.eval_data()
    names = m.class_names or [str(i) for i in range(1000)]
    with torch.no_grad():
        probs = torch.cat([m.module(torch.from_numpy(x[i:i + 16])) for i in range(0, len(x), 16)]).softmax(1)
    preds = {}
    available = {n for n, _ in data.photos()}
    for photo in SANITY_PHOTOS:
        if photo in available:
            with torch.no_grad():
                p = m.module(torch.from_numpy(data.load_photo(photo))).softmax(1)[0]
            preds[photo] = f"{names[int(p.argmax())]} ({float(p.max()):.2f})"
    return {
        "photos_dir": str(data.photos_dir()),
        "photos_used": len(available),
        "eval_crops": int(len(x)),
        "calib_crops_available": int(len(m.calib_data(10_000))),
        "load_seconds": round(load_s, 3),
        "mean_top1_probability": round(float(probs.max(1).values.mean()), 4),
        "sample_predictions": preds,
        "fp32_batch1": batch1_ms(m.module, torch.from_numpy(x), runs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_zoo.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="timed batch-1 runs per model")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {
        "host": {
            "machine": platform.machine(), "threads": args.threads, "torch": torch.__version__,
            # Other processes skew timings: record how busy the machine was at the start.
            "loadavg_1min": round(os.getloadavg()[0], 2),
        },
        "digits-cnn": eval_digits(args.runs),
        "efficientnet-lite0": eval_effnet(args.runs),
    }
    d, e = result["digits-cnn"], result["efficientnet-lite0"]
    print(f"{'model':<20}{'metric':<34}{'fp32 batch-1 median':>20}")
    print(f"{'digits-cnn':<20}{'test top1 ' + format(d['test_accuracy'], '.2%'):<34}"
          f"{d['fp32_batch1']['median_ms']:>17.3f} ms")
    crops = f"{e['eval_crops']} crops of {e['photos_used']} photos"
    print(f"{'efficientnet-lite0':<20}{crops:<34}"
          f"{e['fp32_batch1']['median_ms']:>17.3f} ms")
    print(f"digits-cnn trained in {d['train_seconds']} s ({d['train_epochs']} epochs, "
          f"{digits_cnn.TrainConfig().threads} thread(s)); cached load {d['load_seconds']} s")
    for photo, pred in e["sample_predictions"].items():
        print(f"  {photo} -> {pred}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
