"""Real data for the zoo: the digits split and the opencv-doc photo crops."""

from __future__ import annotations

import numpy as np
import os

import pytest

from edgerun.errors import ConfigError, UserError
from edgerun.exporters import data

N_DIGITS = 1797
N_TEST_AT_20_PERCENT = 360
# Preprocessing (x - 127) / 128 of uint8 pixels spans exactly this range.
EFFNET_MIN, EFFNET_MAX = -127.0 / 128.0, 128.0 / 128.0
MIN_EVAL_CROPS = 96


@pytest.fixture(scope="module")
def photos_available() -> None:
    try:
        data.photos_dir()
    except UserError as exc:  # no opencv-doc and no way to fetch it here
        if os.environ.get("CI"):  # CI installs what it needs: a missing photo set is a failure there
            raise
        pytest.skip(f"opencv-doc photos unavailable: {exc}")


def test_digits_split_is_deterministic() -> None:
    a, b = data.load_digits_split(seed=0), data.load_digits_split(seed=0)
    np.testing.assert_array_equal(a.idx_test, b.idx_test)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    other = data.load_digits_split(seed=1)
    assert not np.array_equal(a.idx_test, other.idx_test)


def test_digits_split_is_disjoint_stratified_and_complete() -> None:
    s = data.load_digits_split()
    assert len(s.idx_test) == N_TEST_AT_20_PERCENT
    assert not set(s.idx_train) & set(s.idx_test)
    assert sorted(np.concatenate([s.idx_train, s.idx_test])) == list(range(N_DIGITS))
    assert np.bincount(s.y_test, minlength=10).min() >= 35  # every class held out


def test_digits_layout_and_range() -> None:
    s = data.load_digits_split()
    assert s.x_train.shape[1:] == (1, 8, 8) and s.x_train.dtype == np.float32
    assert s.y_train.dtype == np.int64
    assert 0.0 <= s.x_test.min() and s.x_test.max() <= 1.0


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 2.0])
def test_digits_bad_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        data.load_digits_split(test_fraction=fraction)


def test_photo_crops_layout_and_range(photos_available: None) -> None:
    x, tags = data.photo_crops("eval")
    assert x.dtype == np.float32 and x.shape[1:] == (3, 224, 224)
    assert len(x) == len(tags) >= MIN_EVAL_CROPS
    assert x.min() >= EFFNET_MIN and x.max() <= EFFNET_MAX
    assert len(set(tags)) == len(tags)


def test_photo_crops_deterministic_and_limit(photos_available: None) -> None:
    a, tags_a = data.photo_crops("eval", limit=5)
    b, tags_b = data.photo_crops("eval", limit=5)
    assert a.shape[0] == 5 and tags_a == tags_b
    np.testing.assert_array_equal(a, b)


def test_calib_crops_are_not_eval_crops(photos_available: None) -> None:
    _, eval_tags = data.photo_crops("eval")
    calib, calib_tags = data.photo_crops("calib", limit=16)
    assert len(calib) == 16 and not set(calib_tags) & set(eval_tags)


def test_extra_crops_are_neither_eval_nor_calib(photos_available: None) -> None:
    _, eval_tags = data.photo_crops("eval")
    _, calib_tags = data.photo_crops("calib")
    extra, extra_tags = data.photo_crops("extra", limit=40)
    assert len(extra) == 40 and len(set(extra_tags)) == 40
    assert not set(extra_tags) & (set(eval_tags) | set(calib_tags))


def test_photos_skip_grey_and_tiny(photos_available: None) -> None:
    names = [n for n, _ in data.photos()]
    assert "squirrel_cls.jpg" in names
    assert "left01.jpg" not in names  # greyscale chessboard
    assert all(min(img.size) >= data.MIN_PHOTO_SIDE for _, img in data.photos())


def test_class_names(photos_available: None) -> None:
    names = data.class_names()
    assert names is not None and len(names) == 1000 and names[0] == "tench"


def test_bad_photo_split_and_limit(photos_available: None) -> None:
    with pytest.raises(ConfigError, match="split"):
        data.photo_crops("train")
    with pytest.raises(ConfigError, match="limit"):
        data.photo_crops("eval", limit=-1)
    with pytest.raises(UserError, match="no usable photo"):
        data.load_photo("nope.jpg")


def test_edgerun_photos_without_jpg_is_user_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGERUN_PHOTOS", str(tmp_path))
    with pytest.raises(UserError, match="EDGERUN_PHOTOS"):
        data.photos_dir()


def test_edgerun_photos_is_used(tmp_path, monkeypatch) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.full((240, 320), 9, np.uint8)).save(tmp_path / "grey.jpg")
    monkeypatch.setenv("EDGERUN_PHOTOS", str(tmp_path))
    assert data.photos_dir() == tmp_path
    x, tags = data.photo_crops("eval")
    assert tags == ["a.jpg:256c", "a.jpg:256c-flip", "a.jpg:320c"]
    assert data.class_names() is None


def test_fetch_without_apt_says_how_to_get_photos(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(data.shutil, "which", lambda _: None)
    with pytest.raises(UserError, match="apt-get install -y opencv-doc"):
        data._fetch_opencv_doc(tmp_path / "opencv-doc")


def test_cache_dir_env(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGERUN_CACHE", str(tmp_path))
    assert data.cache_dir() == tmp_path


def test_data_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, edgerun.exporters.data; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
