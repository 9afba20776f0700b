"""A two-input robot policy for benchmarks/bench_policy.py --two-input: gymnasium's Pendulum-v1 seen through a
camera. forward(image, joints): ``image`` is a 1x24x24 picture of the pendulum (the rod drawn from the pivot at
angle θ, as a camera would see it: it shows where the pendulum is, not how fast it moves), ``joints`` the joint
sensor's angular velocity θdot / 8. The vision trunk (three stride-2 convs, a Linear) reads the image; the joint
state joins its features after it, so it passes through every cut in the trunk.

Trained here (MSE, Adam, 1 thread, fixed seed, ~1 min, cached) to imitate the zoo pendulum policy's scripted
expert on states of its noisy expert rollouts (``edgerun.exporters.zoo.pendulum_policy.collect``, training
seeds). ``python pendulum_vision.py OUT.npz`` saves the --data file: states of the calibration and evaluation
seed ranges (disjoint from training), ``inputs.image``, ``inputs.joints`` and ``labels`` (the expert's torque).
"""

import hashlib
import os
import sys

import numpy as np
import torch
from torch import nn

SIZE = 24                  # image side, pixels
ROD = 10.0                 # rod length, pixels (pivot at the centre)
WIDTH = 1.2                # rod half-width, pixels (anti-aliased edge)
SPEED_SCALE = 8.0          # joints = θdot / 8: in [-1, 1]
STEPS, BATCH, LR, SEED = 8000, 256, 2e-3, 0
TRAIN_ROLLOUTS = 96        # x 200 steps
DATA_ROLLOUTS = 32         # --data file: 16 calibration + 16 evaluation rollouts x 200 steps


def render(obs: np.ndarray) -> np.ndarray:
    """Images (N, 1, SIZE, SIZE) of observations (N, 3) = [cos θ, sin θ, θdot]; θ = 0 is upright (rod up)."""
    c, s = obs[:, 0:1, None], obs[:, 1:2, None]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    px, py = xx[None] - SIZE / 2, yy[None] - SIZE / 2
    ex, ey = ROD * s, -ROD * c                      # rod end (image y grows downward)
    t = np.clip((px * ex + py * ey) / (ROD * ROD), 0.0, 1.0)
    d = np.hypot(px - t * ex, py - t * ey)
    return np.clip(WIDTH + 0.5 - d, 0.0, 1.0)[:, None].astype(np.float32)


def inputs(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image, joints) the policy sees in state ``obs``."""
    return render(obs), (obs[:, 2:3] / SPEED_SCALE).astype(np.float32)


class VisionPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.vision = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                    nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 3 * 3, 64),
                                    nn.ReLU())
        self.head = nn.Sequential(nn.Linear(64 + 1, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, image, joints):
        return self.head(torch.cat([self.vision(image), joints], dim=1))


def _cache_path() -> str:
    from edgerun.exporters.data import cache_dir

    with open(__file__, "rb") as f:
        key = hashlib.sha256(f.read()).hexdigest()[:10]
    return str(cache_dir() / "bench" / f"pendulum-vision-{key}.pt")


def _train() -> nn.Module:
    from edgerun.exporters.zoo.pendulum_policy import TRAIN_SEED, collect

    obs, y = collect(TRAIN_ROLLOUTS, TRAIN_SEED)
    image, joints = (torch.from_numpy(a) for a in inputs(obs))
    y = torch.from_numpy(y)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = VisionPolicy()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    for _ in range(STEPS):
        idx = torch.randint(0, len(y), (BATCH,), generator=gen)
        opt.zero_grad()
        nn.functional.mse_loss(model(image[idx], joints[idx]), y[idx]).backward()
        opt.step()
        sched.step()
    return model.eval()


def load_trained() -> nn.Module:
    """The trained policy from the cache, training (and caching) it on first use."""
    path = _cache_path()
    if os.path.isfile(path):
        model = VisionPolicy()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    print("training the pendulum vision policy (first use, ~1 min)...", file=sys.stderr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _train()
    finally:
        torch.set_num_threads(threads)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(model.state_dict(), f"{path}.{os.getpid()}.tmp")
    os.replace(f"{path}.{os.getpid()}.tmp", path)
    return model


def make():
    from edgerun.exporters.zoo.pendulum_policy import EVAL_SEED, collect

    obs, _ = collect(1, EVAL_SEED, steps=1)
    image, joints = inputs(obs)
    return load_trained(), (torch.from_numpy(image), torch.from_numpy(joints))


def save_data(path: str) -> None:
    """The --data file: states of calibration and evaluation rollouts (never training seeds), expert labels."""
    from edgerun.exporters.zoo.pendulum_policy import CALIB_SEED, EVAL_SEED, collect

    half = DATA_ROLLOUTS // 2
    parts = [collect(half, CALIB_SEED), collect(half, EVAL_SEED)]
    obs, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    image, joints = inputs(obs)
    np.savez(path, **{"inputs.image": image, "inputs.joints": joints, "labels": y})


if __name__ == "__main__":
    save_data(sys.argv[1])
