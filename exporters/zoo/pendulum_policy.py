"""pendulum-policy: an MLP control policy for gymnasium's Pendulum-v1, imitating a scripted expert.

Why it is in the zoo: a policy outputs a continuous action, not class scores, so early
exits on it use the ACTION CONSISTENCY criterion (distance between successive exits'
actions) instead of max-probability; this model exercises that path end to end.

The expert (``expert_action``) is a classic two-mode controller on the observation
``[cos θ, sin θ, θdot]`` (θ = 0 upright): far from upright it pumps energy
(``u = -k_e · E · θdot``, E = the pendulum's energy relative to upright), near upright a
PD stabilizer (``u = -(k_p θ + k_d θdot)``); torque clipped to [-2, 2]. States are
collected along expert rollouts with executed-action noise and random velocity kicks
(DART-style, so the states cover recoveries), each labelled with the expert's CLEAN
action. Training data, calibration data and evaluation data come from disjoint seed
ranges. The dynamics are a vectorised numpy copy of Pendulum-v1 (``pendulum_step``;
the unit tests check it against gymnasium), so collection does not need gymnasium.

Training (MSE, Adam, 1 thread, fixed seed) takes a few seconds and is cached in
``<cache>/zoo/pendulum-policy-<hash of the training config>.pt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from edgerun.errors import ConfigError
from edgerun.exporters.data import cache_dir
from edgerun.exporters.zoo import ZooModel, register

NAME = "pendulum-policy"
ARCH_VERSION = 1            # bump when the architecture, expert or data change (part of the cache key)
EXPECTED_TRAIN_SECONDS = 15

# Pendulum-v1 constants (gymnasium/envs/classic_control/pendulum.py, g = 10).
GRAVITY, DT, MAX_TORQUE, MAX_SPEED, EPISODE_STEPS = 10.0, 0.05, 2.0, 8.0, 200
OMEGA2 = 1.5 * GRAVITY      # 3 g / (2 l), l = m = 1: θddot = OMEGA2 sin θ + 3 u

# Seed ranges: training, calibration and evaluation rollouts never share a seed.
TRAIN_SEED, CALIB_SEED, EVAL_SEED = 0, 10_000, 20_000
EVAL_ROLLOUTS = 16          # 16 x 200 = 3200 held-out states


@dataclass(frozen=True)
class Expert:
    """Gains of the scripted expert (energy pumping + PD near upright)."""

    k_energy: float = 0.5
    kp: float = 10.0
    kd: float = 2.0
    cos_switch: float = 0.85   # PD when cos θ > this (|θ| < ~32°)


EXPERT = Expert()


def expert_action(obs: np.ndarray, ex: Expert = EXPERT) -> np.ndarray:
    """The expert's torque for observations ``obs`` (..., 3) = [cos θ, sin θ, θdot]; shape (...)."""
    obs = np.asarray(obs, dtype=np.float64)
    c, s, w = obs[..., 0], obs[..., 1], obs[..., 2]
    energy = 0.5 * w * w + OMEGA2 * (c - 1.0)       # 0 at rest upright, < 0 below
    swing = np.clip(-ex.k_energy * energy * w, -MAX_TORQUE, MAX_TORQUE)
    stab = np.clip(-(ex.kp * np.arctan2(s, c) + ex.kd * w), -MAX_TORQUE, MAX_TORQUE)
    return np.where(c > ex.cos_switch, stab, swing)


def pendulum_step(th: np.ndarray, thdot: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Pendulum-v1 step, vectorised: returns (θ', θdot', reward)."""
    u = np.clip(u, -MAX_TORQUE, MAX_TORQUE)
    th_n = ((th + np.pi) % (2 * np.pi)) - np.pi
    reward = -(th_n ** 2 + 0.1 * thdot ** 2 + 0.001 * u ** 2)
    thdot2 = np.clip(thdot + (OMEGA2 * np.sin(th) + 3.0 * u) * DT, -MAX_SPEED, MAX_SPEED)
    return th + thdot2 * DT, thdot2, reward


def observe(th: np.ndarray, thdot: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(th), np.sin(th), thdot], axis=-1).astype(np.float32)


def collect(n_rollouts: int, seed: int, action_noise: float = 0.4, kick_prob: float = 0.02,
            steps: int = EPISODE_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """States along noisy expert rollouts and the expert's clean actions there.

    Args:
        n_rollouts: parallel rollouts, each from a Pendulum-v1-style random start
            (θ ~ U(-π, π), θdot ~ U(-1, 1)).
        seed: seed of starts and noise; the same seed gives the same data.
        action_noise: std of Gaussian noise added to the EXECUTED torque.
        kick_prob: per-step chance of a random velocity kick (U(-3, 3) rad/s).
        steps: steps per rollout.

    Returns:
        ``(obs float32 (n_rollouts * steps, 3), expert actions float32 (N, 1))``, time-major.
    """
    if n_rollouts < 1 or steps < 1:
        raise ConfigError(f"collect needs n_rollouts >= 1 and steps >= 1, got {n_rollouts}, {steps}")
    rng = np.random.default_rng(seed)
    th = rng.uniform(-np.pi, np.pi, n_rollouts)
    thdot = rng.uniform(-1.0, 1.0, n_rollouts)
    xs, ys = [], []
    for _ in range(steps):
        obs = observe(th, thdot)
        u = expert_action(obs)
        xs.append(obs)
        ys.append(u)
        u_exec = u + action_noise * rng.standard_normal(n_rollouts)
        th, thdot, _ = pendulum_step(th, thdot, u_exec)
        kick = rng.random(n_rollouts) < kick_prob
        thdot = np.clip(thdot + kick * rng.uniform(-3.0, 3.0, n_rollouts), -MAX_SPEED, MAX_SPEED)
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32).reshape(-1, 1)


class PendulumPolicy(nn.Module):
    """obs (N, 3) -> l1..l4 (Linear 64 + ReLU) -> head (Linear 1) -> torque (N, 1), unclipped."""

    def __init__(self, hidden: int = 64, depth: int = 4) -> None:
        super().__init__()
        dims = [3] + [hidden] * depth
        for i in range(depth):  # named blocks, so cuts are labelled l1 .. l<depth>
            self.add_module(f"l{i + 1}", nn.Sequential(nn.Linear(dims[i], dims[i + 1]), nn.ReLU()))
        self.depth = depth
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.depth):
            x = getattr(self, f"l{i + 1}")(x)
        return self.head(x)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (hashed into the cache name)."""

    seed: int = 0
    rollouts: int = 96          # 96 x 200 = 19200 training states
    steps: int = 4000
    batch_size: int = 256
    lr: float = 2e-3
    hidden: int = 64
    depth: int = 4
    threads: int = 1            # hashed: the thread count can change float summation order
    arch_version: int = ARCH_VERSION

    def __post_init__(self) -> None:
        if min(self.rollouts, self.steps, self.batch_size, self.hidden, self.depth, self.threads) < 1 or self.lr <= 0:
            raise ConfigError(f"pendulum-policy training needs positive sizes and lr > 0; got {self}")

    def short_hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def _train(cfg: TrainConfig) -> nn.Module:
    x_np, y_np = collect(cfg.rollouts, TRAIN_SEED + cfg.seed)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = PendulumPolicy(cfg.hidden, cfg.depth)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    model.train()
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=gen)
        opt.zero_grad()
        nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
        sched.step()
    return model.eval()


def action_mae(module: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute torque error of ``module`` vs the expert labels ``y`` (N, 1)."""
    with torch.no_grad():
        return float(np.abs(module(torch.from_numpy(x)).numpy() - y).mean())


def cache_path(cfg: TrainConfig = TrainConfig()) -> str:
    """Where the trained state_dict for ``cfg`` is cached."""
    return str(cache_dir() / "zoo" / f"{NAME}-{cfg.short_hash()}.pt")


def load_trained(cfg: TrainConfig = TrainConfig()) -> nn.Module:
    """The trained policy from the cache, training (and caching) it on first use."""
    path = cache_path(cfg)
    if os.path.isfile(path):
        model = PendulumPolicy(cfg.hidden, cfg.depth)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        return model.eval()
    print(f"training {NAME} (first use, ~{EXPECTED_TRAIN_SECONDS} s)...", file=sys.stderr)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        model = _train(cfg)
    finally:
        torch.set_num_threads(threads)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader sees no file or the whole file
    print(f"trained {NAME} in {time.perf_counter() - t0:.1f} s -> {path}", file=sys.stderr)
    return model


@lru_cache(maxsize=4)
def eval_set() -> tuple[np.ndarray, np.ndarray]:
    """The held-out evaluation states and expert actions (seeds from ``EVAL_SEED``)."""
    return collect(EVAL_ROLLOUTS, EVAL_SEED)


@lru_cache(maxsize=8)
def calib_set(n: int) -> np.ndarray:
    """``n`` calibration states from their own rollouts (seeds from ``CALIB_SEED``), shuffled."""
    x, _ = collect(-(-n // EPISODE_STEPS), CALIB_SEED)
    return x[np.random.default_rng(CALIB_SEED).permutation(len(x))[:n]]


@register(NAME)
def build() -> ZooModel:
    """pendulum-policy with held-out expert states (labelled with expert actions: metric action_mae)."""
    model = load_trained(TrainConfig())

    def eval_data(limit: int | None) -> tuple[np.ndarray, np.ndarray]:
        x, y = eval_set()
        return x[:limit], y[:limit]

    return ZooModel(
        name=NAME,
        module=model,
        example=torch.from_numpy(eval_set()[0][:1].copy()),
        metric="action_mae",
        input_name="obs",
        _eval=eval_data,
        _calib=lambda n: calib_set(n).copy(),
    )
