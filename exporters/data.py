"""Real data for the zoo, all offline: scikit-learn digits and the opencv-doc photos.

Two sources, both installable from a package registry:

* ``load_digits_split``: scikit-learn's 1797 8x8 handwritten digits, split 80/20
  (stratified, fixed seed) into train and a held-out test set.
* ``photos_dir`` / ``photo_crops``: the ~90 sample images that Debian's ``opencv-doc``
  ships; the colour photos among them feed EfficientNet-Lite0. They are looked up in
  ``$EDGERUN_PHOTOS``, the installed package, then the cache, and as a last resort
  extracted from ``apt-get download opencv-doc`` into the cache (~3 s).

Needs numpy, scikit-learn and Pillow (the ``export`` extra); never torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgerun.errors import ConfigError, UserError

# Where the Debian package installs its sample data.
SYSTEM_PHOTOS_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
_DEB_DATA_PREFIX = "./usr/share/doc/opencv-doc/examples/data/"
CLASS_NAMES_FILE = "dnn/classification_classes_ILSVRC2012.txt"
PHOTO_SUFFIXES = (".jpg", ".png")
# Photos smaller than this (shorter side) are icons/templates, not scenes.
MIN_PHOTO_SIDE = 160
# Mean |R-G| + |G-B| below this means the image is grey in all but name
# (chessboard calibration shots, renders): skip, since ImageNet models see colour.
MIN_COLOUR_SPREAD = 2.0
EFFNET_SIZE = 224


def cache_dir() -> Path:
    """The edgerun cache: ``$EDGERUN_CACHE``, else ``~/.cache/edgerun``."""
    env = os.environ.get("EDGERUN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgerun"


# --------------------------------------------------------------------------- digits


@dataclass(frozen=True)
class DigitsSplit:
    """scikit-learn digits as float32 N x 1 x 8 x 8 in [0, 1] (pixel / 16), int64 labels.

    ``idx_train`` / ``idx_test`` are the rows of ``sklearn.datasets.load_digits`` used.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    idx_train: np.ndarray
    idx_test: np.ndarray


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> DigitsSplit:
    """Split the digits into train / held-out test, stratified and deterministic.

    Args:
        seed: random state of the split; the same seed gives the same split.
        test_fraction: share of the 1797 images held out, in (0, 1).

    Returns:
        A ``DigitsSplit``; calibration data must come from ``x_train`` only.

    Raises:
        ConfigError: ``test_fraction`` outside (0, 1).

    Example:
        >>> s = load_digits_split()
        >>> s.x_train.shape, s.x_test.shape
        ((1437, 1, 8, 8), (360, 1, 8, 8))
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}; use e.g. 0.2")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    idx_tr, idx_te = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y
    )
    return DigitsSplit(x[idx_tr], y[idx_tr], x[idx_te], y[idx_te], idx_tr, idx_te)


# --------------------------------------------------------------------------- photos


def _has_photos(d: Path) -> bool:
    return d.is_dir() and any(d.glob("*.jpg"))


def photos_dir() -> Path:
    """The folder of opencv-doc sample photos, fetched into the cache if needed.

    Looks at ``$EDGERUN_PHOTOS``, then the installed ``opencv-doc`` package, then
    ``<cache>/opencv-doc``; if none holds photos, extracts them from
    ``apt-get download opencv-doc`` into the cache.

    Returns:
        A directory holding ``*.jpg`` (and ``*.png``) images.

    Raises:
        UserError: ``$EDGERUN_PHOTOS`` holds no jpg, or the photos cannot be fetched.
    """
    env = os.environ.get("EDGERUN_PHOTOS")
    if env:
        d = Path(env).expanduser()
        if not _has_photos(d):
            raise UserError(
                f"EDGERUN_PHOTOS={env} holds no *.jpg; point it at opencv-doc's "
                "examples/data folder or unset it"
            )
        return d
    if _has_photos(SYSTEM_PHOTOS_DIR):
        return SYSTEM_PHOTOS_DIR
    cached = cache_dir() / "opencv-doc"
    if _has_photos(cached):
        return cached
    _fetch_opencv_doc(cached)
    return cached


def _fetch_opencv_doc(dest: Path) -> None:
    """Extract the sample images of the opencv-doc .deb into ``dest`` (atomically)."""
    hint = (
        "install the photos with `sudo apt-get install -y opencv-doc` "
        "(or set EDGERUN_PHOTOS to a folder of jpg photos)"
    )
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise UserError(f"no opencv-doc photos found and no apt-get/dpkg-deb to fetch them: {hint}")
    print("fetching opencv-doc sample photos (first use, ~3 s)...", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            _apt_download(tmp)
            deb = next(Path(tmp).glob("opencv-doc_*.deb"))
            patterns = [_DEB_DATA_PREFIX + p for p in ("*.jpg", "*.png", CLASS_NAMES_FILE)]
            tar = subprocess.Popen(
                ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE
            )
            subprocess.run(
                ["tar", "-x", "-C", tmp, "--wildcards", *patterns],
                stdin=tar.stdout, check=True, capture_output=True, timeout=300,
            )
            tar.wait(timeout=60)
        except (subprocess.SubprocessError, OSError, StopIteration) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            raise UserError(
                f"could not fetch opencv-doc ({exc}; {detail.decode(errors='replace')[-300:]}): "
                f"{hint}; `apt-get update` may be needed first"
            ) from exc
        extracted = Path(tmp) / _DEB_DATA_PREFIX
        if not _has_photos(extracted):
            raise UserError(f"the opencv-doc package held no photos: {hint}")
        # Rename is atomic: a concurrent fetch either sees all photos or none.
        try:
            extracted.rename(dest)
        except OSError:
            if not _has_photos(dest):
                raise


def _apt_download(folder: str) -> None:
    cmd = ["apt-get", "download", "-q", "opencv-doc"]
    try:
        subprocess.run(cmd, cwd=folder, check=True, capture_output=True, timeout=300)
    except subprocess.CalledProcessError:
        # A fresh machine has empty package lists; as root we can fill them once.
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise
        print("apt-get download failed; running `apt-get update` once...", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, timeout=300)
        subprocess.run(cmd, cwd=folder, check=True, capture_output=True, timeout=300)


def class_names() -> list[str] | None:
    """The 1000 ImageNet class names (short form) shipped by opencv-doc, or None."""
    path = photos_dir() / CLASS_NAMES_FILE
    if not path.is_file():
        return None
    names = [line.split(",")[0].strip() for line in path.read_text().splitlines() if line.strip()]
    return names if len(names) == 1000 else None


def _load_rgb(path: Path):
    """The image as an RGB PIL image, or None if it is grey-only or too small."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("1", "L", "LA", "I", "I;16", "F"):
            return None
        if min(im.size) < MIN_PHOTO_SIDE:
            return None
        if im.mode in ("RGBA", "P", "PA"):
            # Transparent pixels have no defined colour: put them on white.
            rgba = im.convert("RGBA")
            rgb = Image.new("RGB", rgba.size, (255, 255, 255))
            rgb.paste(rgba, mask=rgba.split()[3])
        else:
            rgb = im.convert("RGB")
    a = np.asarray(rgb, dtype=np.int16)
    spread = np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean()
    return rgb if spread >= MIN_COLOUR_SPREAD else None


@lru_cache(maxsize=4)
def _photo_list(folder: str) -> tuple[tuple[str, object], ...]:
    out = []
    for p in sorted(Path(folder).iterdir()):
        if p.suffix.lower() in PHOTO_SUFFIXES:
            img = _load_rgb(p)
            if img is not None:
                out.append((p.name, img))
    return tuple(out)


def photos() -> list[tuple[str, object]]:
    """The usable colour photos as (file name, RGB PIL image), sorted by name."""
    return list(_photo_list(str(photos_dir())))


def _resize_shorter(img, side: int):
    from PIL import Image

    w, h = img.size
    s = side / min(w, h)
    return img.resize((max(side, round(w * s)), max(side, round(h * s))), Image.BILINEAR)


def _crop(img, where: str, size: int = EFFNET_SIZE):
    w, h = img.size
    left = {"tl": 0, "br": w - size}.get(where, (w - size) // 2)
    top = {"tl": 0, "br": h - size}.get(where, (h - size) // 2)
    return img.crop((left, top, left + size, top + size))


def preprocess_effnet(img) -> np.ndarray:
    """A 224x224 RGB image -> float32 1 x 3 x 224 x 224, ``(x - 127) / 128``."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    return ((a - 127.0) / 128.0).transpose(2, 0, 1)[None].copy()


# Views per photo. Eval: the classic centre crop, its mirror and a zoomed centre.
# Calib: corner crops at another scale, so calibration never sees an eval input.
EVAL_VIEWS = ((256, "c", False), (256, "c", True), (320, "c", False))
CALIB_VIEWS = ((288, "tl", False), (288, "br", False), (288, "tl", True), (288, "br", True))
# Extra: more views of the same photos at other scales (18 per photo, disjoint from both),
# for measurements that need finer resolution than eval's one flip = 0.72 pp. Views of one
# photo are correlated: report them beside eval, never instead of it.
EXTRA_VIEWS = tuple((side, where, flip) for side in (240, 272, 352) for where in ("c", "tl", "br")
                    for flip in (False, True))


def photo_crops(split: str = "eval", limit: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Deterministic preprocessed crops of the photos for EfficientNet-Lite0.

    Args:
        split: ``"eval"`` (centre crop, mirrored centre crop, zoomed centre crop per
            photo), ``"calib"`` (corner crops at another scale: inputs disjoint from eval)
            or ``"extra"`` (18 further views per photo at three other scales, disjoint from both).
        limit: keep at most this many crops, None for all (view-major order: every
            photo's first view comes before any second view).

    Returns:
        (float32 N x 3 x 224 x 224 in [-127/128, 1], a "file:view" tag per crop).

    Raises:
        ConfigError: unknown ``split`` or a negative ``limit``.
        UserError: the photos cannot be found or fetched.
    """
    views = {"eval": EVAL_VIEWS, "calib": CALIB_VIEWS, "extra": EXTRA_VIEWS}.get(split)
    if views is None:
        raise ConfigError(f"unknown photo split {split!r}; use 'eval', 'calib' or 'extra'")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0 or None, got {limit}")
    from PIL import Image

    # Views vary fastest so that a small limit still spreads over many photos.
    order = [(v, name, img) for name, img in photos() for v in views]
    order.sort(key=lambda t: views.index(t[0]))
    if limit is not None:
        order = order[:limit]
    xs, tags = [], []
    for (side, where, flip), name, img in order:
        crop = _crop(_resize_shorter(img, side), where)
        if flip:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        xs.append(preprocess_effnet(crop))
        tags.append(f"{name}:{side}{where}{'-flip' if flip else ''}")
    if not xs:
        return np.zeros((0, 3, EFFNET_SIZE, EFFNET_SIZE), np.float32), []
    return np.concatenate(xs, axis=0), tags


def load_photo(name: str) -> np.ndarray:
    """One named photo (e.g. ``"squirrel_cls.jpg"``), centre-cropped and preprocessed.

    Raises:
        UserError: no usable photo of that name in ``photos_dir()``.
    """
    for n, img in photos():
        if n == name:
            return preprocess_effnet(_crop(_resize_shorter(img, 256), "c"))
    raise UserError(f"no usable photo {name!r} in {photos_dir()}; pick one of the names from photos()")
