"""The source of a two-input robot policy (a camera image and a joint state), for tests that write it as a
user's model file: ``make`` gives one output (action scores), ``actor_critic`` two by name (action, value).
The joint state joins the image features after the vision trunk, so it passes through every cut there;
``gated`` also reads it part-way through the trunk (it gates the image features)."""

POLICY = '''
import torch
from torch import nn


class Policy(nn.Module):
    def __init__(self):
        super().__init__()
        self.vision = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                    nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(16 + 5, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, image, joints):
        return self.head(torch.cat([self.vision(image), joints], dim=1))


class ActorCritic(Policy):
    def __init__(self):
        super().__init__()
        self.value = nn.Linear(16 + 5, 1)

    def forward(self, image, joints):
        h = torch.cat([self.vision(image), joints], dim=1)
        return {"action": self.head(h), "value": self.value(h)}


def make():
    torch.manual_seed(0)
    return Policy(), (torch.randn(1, 3, 16, 16), torch.randn(1, 5))


def actor_critic():
    torch.manual_seed(0)
    return ActorCritic(), (torch.randn(1, 3, 16, 16), torch.randn(1, 5))


class Gated(nn.Module):
    """The joint state gates the image features early (the front reads it part-way) and joins them at the end."""

    def __init__(self):
        super().__init__()
        self.c1, self.g = nn.Conv2d(3, 8, 3, 2, 1), nn.Linear(5, 8)
        self.c2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.head = nn.Linear(16 + 5, 4)

    def forward(self, image, joints):
        f = torch.relu(self.c1(image)) * torch.sigmoid(self.g(joints))[:, :, None, None]
        return self.head(torch.cat([torch.relu(self.c2(f)).mean(dim=(2, 3)), joints], dim=1))


def gated():
    torch.manual_seed(0)
    return Gated(), (torch.randn(1, 3, 16, 16), torch.randn(1, 5))
'''


def export_with_exits(d, n_samples: int = 320):
    """``make`` written to ``d``/policy.py and exported with ``--exits auto`` at ``vision.3`` on ``n_samples``
    random samples (``--data``; the joints pass through the cut); returns the bundle."""
    import numpy as np

    from edgerun.exporters.pipeline import ExportConfig, export

    (d / "policy.py").write_text(POLICY)
    rng = np.random.default_rng(0)
    np.savez(d / "samples.npz", **{"inputs.image": rng.standard_normal((n_samples, 3, 16, 16)).astype(np.float32),
                                   "inputs.joints": rng.standard_normal((n_samples, 5)).astype(np.float32)})
    return export(f"{d}/policy.py:make", ExportConfig(cut="vision.3", exits="auto", data=d / "samples.npz"),
                  d / "bundle")
