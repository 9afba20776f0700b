"""Regenerate tests/golden/bundle_v1: a tiny bundle that every later reader must keep loading.

Run only when the bundle format version changes (then add bundle_v2 beside it;
never overwrite an old golden): `python tests/golden/make_bundle_golden.py OUT_DIR`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

from edgerun.exporters.models import SourceModel
from edgerun.exporters.pipeline import ExportConfig, export


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x)) + x
        return self.fc(x.mean(dim=(2, 3)))


def main(out: Path) -> None:
    torch.manual_seed(0)
    src = SourceModel("tiny-golden", Tiny().eval(), torch.randn(1, 1, 6, 6))
    b = export(src, ExportConfig(cut="conv1", evaluate=True), out)
    print(b, b.hash)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "bundle_v1"))
