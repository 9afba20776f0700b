"""The bundle contract: a device and a server refuse a bundle they cannot trust, with a clear message."""

import json
import shutil
import tarfile

import pytest

from edgerun.bundle import FORMAT_VERSION, Bundle, compute_bundle_hash
from edgerun.errors import BundleError, ConfigError


@pytest.fixture
def bundle_copy(digits_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(digits_bundle.path, dst)
    return dst


def test_exported_bundle_loads_with_its_parts(digits_bundle):
    b = Bundle.load(digits_bundle.path)
    assert b.hash == digits_bundle.hash and len(b.hash16) == 16
    for name in ("whole.onnx", "front.onnx", "back.onnx", "front.erg", "samples.npz", "report.json"):
        assert b.file(name).is_file()
    assert b.manifest["format_version"] == FORMAT_VERSION
    assert b.cut[0].shape[0] is None  # dynamic batch on the crossing tensor
    assert b.native_ok


def test_report_has_the_measured_split(digits_bundle):
    rep = json.loads(digits_bundle.file("report.json").read_text())
    for key in ("cut", "front_precision", "codec", "bytes_per_request", "bytes_per_request_fp32",
                "metric", "metric_whole_fp32", "metric_split"):
        assert key in rep
    assert rep["metric"] == "top1" and rep["metric_whole_fp32"] >= 0.95
    assert abs(rep["metric_split"] - rep["metric_whole_fp32"]) < 1e-9


def test_corrupted_file_is_refused(bundle_copy):
    p = bundle_copy / "back.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="back.onnx.*sha256"):
        Bundle.load(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "front.erg").unlink()
    with pytest.raises(BundleError, match="front.erg is missing"):
        Bundle.load(bundle_copy)


def test_edited_manifest_is_refused(bundle_copy):
    mf = bundle_copy / "manifest.json"
    m = json.loads(mf.read_text())
    m["split"]["label"] = "somewhere-else"
    mf.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="edited or corrupted"):
        Bundle.load(bundle_copy)


def test_future_version_is_refused_with_what_to_do(bundle_copy):
    mf = bundle_copy / "manifest.json"
    m = json.loads(mf.read_text())
    m["format_version"] = 99
    m["bundle_hash"] = compute_bundle_hash(m)
    mf.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format version 99.*Upgrade edgerun"):
        Bundle.load(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.load(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(tmp_path)


def test_archive_round_trip_and_truncated_archive(digits_bundle, tmp_path):
    arc = tmp_path / "b.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(digits_bundle.path, arcname="digits")
    assert Bundle.load(arc).hash == digits_bundle.hash
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(arc.read_bytes()[: arc.stat().st_size // 2])
    with pytest.raises(BundleError):
        Bundle.load(cut)


def test_a_wrong_input_shape_gets_a_hint_that_fits_it():
    """The batch dimension is suggested only when it is what is missing; otherwise the message
    names the dims that differ (a (1, 3, 8, 8) image for a (None, 1, 8, 8) bundle has its batch)."""
    from edgerun.bundle import TensorSpec
    from edgerun.device_checks import shape_hint as _shape_hint

    spec = TensorSpec("image", (None, 1, 8, 8), "float32")
    assert _shape_hint((1, 8, 8), spec) == "add the batch dimension (x[None])"
    assert _shape_hint((1, 3, 8, 8), spec) == "reshape or re-preprocess it (dim 1: 3 != 1)"
    assert _shape_hint((8, 8), spec) == "it has 2 dimensions, the bundle 4"


def _bomb(tmp_path, mib: int):
    """A .tar.gz of a few KB that unpacks to `mib` MiB of zeros, next to a manifest."""
    import io

    arc = tmp_path / "bomb.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        for name, data in (("b/manifest.json", b"{}"), ("b/front.onnx", bytes(mib * 2**20))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return arc


def test_an_archive_that_unpacks_too_large_is_refused_before_it_is_written(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    arc = _bomb(tmp_path, 3)
    assert arc.stat().st_size < 64 * 1024
    monkeypatch.setenv("EDGERUN_MAX_BUNDLE_MB", "2")
    with pytest.raises(BundleError, match=r"unpacks to 3 MiB, over the 2 MiB limit.*EDGERUN_MAX_BUNDLE_MB"):
        Bundle.load(arc)
    assert list(scratch.iterdir()) == []  # nothing unpacked, no directory left behind
    monkeypatch.setenv("EDGERUN_MAX_BUNDLE_MB", "lots")
    with pytest.raises(ConfigError, match="is not a positive number of MiB"):
        Bundle.load(arc)
    assert list(scratch.iterdir()) == []


def test_an_archive_larger_than_the_free_space_names_the_disk(tmp_path, monkeypatch):
    import shutil
    import tempfile
    from collections import namedtuple

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    with pytest.raises(BundleError, match=r"unpacks to 3 MiB but .* has 1 MiB free.*TMPDIR"):
        Bundle.load(_bomb(tmp_path, 3))
    assert list(scratch.iterdir()) == []
