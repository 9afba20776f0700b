"""A user's own model file for benchmarks/bench_user_data.py: a small CNN on scikit-learn's 8x8 digits
(real scans), trained on the first 1000 in make(); `python digits_user.py OUT.npz` saves the other 797 as
the --data file (inputs, labels)."""

import sys

import numpy as np
import torch
from torch import nn

N_TRAIN = 1000


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


def make():
    torch.manual_seed(0)
    x, y = digits()
    m = Net()
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    xt, yt = torch.from_numpy(x[:N_TRAIN]), torch.from_numpy(y[:N_TRAIN])
    for epoch in range(8):
        perm = torch.randperm(N_TRAIN)
        for i in range(0, N_TRAIN, 50):
            idx = perm[i:i + 50]
            opt.zero_grad()
            nn.functional.cross_entropy(m(xt[idx]), yt[idx]).backward()
            opt.step()
    return m.eval(), torch.from_numpy(x[:1])


if __name__ == "__main__":
    x, y = digits()
    np.savez(sys.argv[1], inputs=x[N_TRAIN:], labels=y[N_TRAIN:])
