"""digits-cnn: a small residual CNN trained here on scikit-learn's 8x8 digits.

The graph is a DAG (two residual skips), uses BatchNorm (the exporter folds it), a
stride-2 convolution and a MaxPool, so it exercises the parts of the pipeline a chain
of convolutions would not. Training takes a few seconds on 2 cores and is cached in
``<cache>/zoo/digits-cnn-<hash of the training config>.pt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from edgerun.errors import ConfigError
from edgerun.exporters.data import cache_dir, load_digits_split
from edgerun.exporters.zoo import ZooModel, register

NAME = "digits-cnn"
# Bump when the architecture or the training loop changes: it is part of the cache key.
ARCH_VERSION = 1
EXPECTED_TRAIN_SECONDS = 10


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(x + y)


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class DigitsCNN(nn.Module):
    """1x8x8 -> stem(16) -> res(16) -> stride-2 (32, 4x4) -> res(32) -> maxpool -> GAP -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(1, 16, 1)
        self.block1 = ResidualBlock(16)
        self.down = _conv_bn_relu(16, 32, 2)
        self.block2 = ResidualBlock(32)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.fc(self.flatten(self.gap(self.pool(x))))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (hashed into the cache name)."""

    seed: int = 0
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    split_seed: int = 0
    # One thread: the convolutions on 8x8 images are too small to split, and a second
    # OpenMP thread slows training 5-20x when the 2 cores are shared. Hashed, because
    # the thread count can change the float summation order.
    threads: int = 1
    arch_version: int = ARCH_VERSION

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.threads < 1:
            raise ConfigError(
                "digits-cnn training needs epochs >= 1, batch_size >= 1, lr > 0, threads >= 1; "
                f"got {self}"
            )

    def short_hash(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def accuracy(module: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``module`` on (x, y)."""
    module.eval()
    with torch.no_grad():
        pred = module(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def _train(cfg: TrainConfig) -> nn.Module:
    split = load_digits_split(seed=cfg.split_seed)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = DigitsCNN()
    x = torch.from_numpy(split.x_train)
    y = torch.from_numpy(split.y_train)
    steps_per_epoch = (len(x) + cfg.batch_size - 1) // cfg.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr * 3, total_steps=cfg.epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            # Tiny random shifts (+-1 px) so 1437 images go further; seeded, deterministic.
            xb = _shift(x[idx], gen)
            opt.zero_grad()
            loss_fn(model(xb), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def _shift(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
    return torch.roll(xb, shifts=(dy, dx), dims=(2, 3))


def train_digits_cnn(seed: int = 0, epochs: int = 30) -> tuple[nn.Module, float]:
    """Train digits-cnn from scratch, deterministically (``TrainConfig.threads`` threads).

    Args:
        seed: seed of weight init, shuffling and augmentation.
        epochs: passes over the 1437 training images.

    Returns:
        (the module in eval mode, top-1 accuracy on the 360 held-out test images).

    Raises:
        ConfigError: ``epochs`` < 1.
    """
    cfg = TrainConfig(seed=seed, epochs=epochs)
    with _deterministic_threads(cfg.threads):
        model = _train(cfg)
    split = load_digits_split(seed=cfg.split_seed)
    return model, accuracy(model, split.x_test, split.y_test)


class _deterministic_threads:
    """Pin torch's thread count while training so results do not depend on the machine."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> None:
        self._threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._threads)


def cache_path(cfg: TrainConfig = TrainConfig()) -> str:
    """Where the trained state_dict for ``cfg`` is cached."""
    return str(cache_dir() / "zoo" / f"{NAME}-{cfg.short_hash()}.pt")


def load_trained(cfg: TrainConfig = TrainConfig()) -> nn.Module:
    """The trained model from the cache, training (and caching) it on first use."""
    path = cache_path(cfg)
    model = DigitsCNN()
    if os.path.isfile(path):
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        return model.eval()
    print(f"training {NAME} (first use, ~{EXPECTED_TRAIN_SECONDS} s)...", file=sys.stderr)
    t0 = time.perf_counter()
    with _deterministic_threads(cfg.threads):
        model = _train(cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the whole file
    print(f"trained {NAME} in {time.perf_counter() - t0:.1f} s -> {path}", file=sys.stderr)
    return model


@register(NAME)
def build() -> ZooModel:
    """digits-cnn with its held-out test set (labelled: metric top1)."""
    cfg = TrainConfig()
    model = load_trained(cfg)
    split = load_digits_split(seed=cfg.split_seed)

    def eval_data(limit: int | None) -> tuple[np.ndarray, np.ndarray]:
        return split.x_test[:limit], split.y_test[:limit]

    def calib_data(n: int) -> np.ndarray:
        return split.x_train[:n]  # already shuffled by the split

    return ZooModel(
        name=NAME,
        module=model,
        example=torch.from_numpy(split.x_test[:1].copy()),
        metric="top1",
        input_name="image",
        _eval=eval_data,
        _calib=calib_data,
        class_names=[str(d) for d in range(10)],
    )
