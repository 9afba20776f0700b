"""A damaged, hand-edited or hostile bundle is refused with one message that says what to do.

Each test builds its bad bundle from a copy of the golden bundle (no export, no torch), and
expects a UserError subclass: never a traceback, never a message that contradicts itself.
"""

import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgerun.bundle import Bundle, sha256_file
from edgerun.errors import BundleError, ConfigError

from golden_bundle import GOLDEN, golden_copy_at, reseal as _reseal


@pytest.fixture
def golden_copy(tmp_path):
    return golden_copy_at(tmp_path / "b")


def _entry(path: Path) -> dict:
    return {"role": "x", "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _tar(src: Path, arc: Path, mode: str = "w") -> Path:
    with tarfile.open(arc, mode) as tf:
        tf.add(src, arcname="bundle")
    return arc


# -- 1. file entries must stay inside the bundle -------------------------------------------------

def test_an_absolute_file_entry_is_refused(golden_copy, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of the bundle\n")
    _reseal(golden_copy, lambda m: m["files"].__setitem__(str(outside), _entry(outside)))
    with pytest.raises(BundleError, match=r"names the file .*outside\.txt.*absolute"):
        Bundle.load(golden_copy)
    with pytest.raises(BundleError, match="absolute"):  # also when the hashes are not checked
        Bundle.load(golden_copy, verify_hashes=False)


def test_a_file_entry_with_dotdot_is_refused(golden_copy, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of the bundle\n")
    _reseal(golden_copy, lambda m: m["files"].__setitem__("../outside.txt", _entry(outside)))
    with pytest.raises(BundleError, match=r"\.\./outside\.txt.*'\.\.'"):
        Bundle.load(golden_copy)


def test_a_file_entry_that_is_a_symlink_out_of_the_bundle_is_refused(golden_copy, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copy(golden_copy / "back.onnx", outside)
    (golden_copy / "back.onnx").unlink()
    os.symlink(outside, golden_copy / "back.onnx")  # same bytes, same sha256: only the path is wrong
    with pytest.raises(BundleError, match=r"back\.onnx.*outside the bundle"):
        Bundle.load(golden_copy)


def test_a_symlink_inside_the_bundle_and_a_symlinked_bundle_still_load(golden_copy, tmp_path):
    link = tmp_path / "linked"
    os.symlink(golden_copy, link)
    assert Bundle.load(link).model_id == "tiny-golden"
    (golden_copy / "store").mkdir()
    (golden_copy / "back.onnx").rename(golden_copy / "store" / "back.onnx")
    os.symlink("store/back.onnx", golden_copy / "back.onnx")
    assert Bundle.load(golden_copy).model_id == "tiny-golden"


# -- 2. damaged archives say so ------------------------------------------------------------------

def test_a_gzip_archive_with_a_bad_crc_is_called_damaged(golden_copy, tmp_path):
    arc = _tar(golden_copy, tmp_path / "b.tar.gz", "w:gz")
    data = bytearray(arc.read_bytes())
    data[-8] ^= 0xFF  # the gzip trailer's CRC-32
    arc.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"b\.tar\.gz is damaged or truncated.*copy it again"):
        Bundle.load(arc)


def test_a_gzip_archive_with_corrupted_data_is_called_damaged(golden_copy, tmp_path):
    arc = _tar(golden_copy, tmp_path / "b.tar.gz", "w:gz")
    data = bytearray(arc.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arc.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="is damaged or truncated"):
        Bundle.load(arc)


def test_a_tar_with_a_damaged_member_header_is_called_damaged(golden_copy, tmp_path):
    arc = _tar(golden_copy, tmp_path / "b.tar")
    with tarfile.open(arc) as tf:
        offsets = [m.offset for m in tf.getmembers()]
    raw = arc.read_bytes()
    for k, off in enumerate(offsets[1:], 1):  # the first header's damage is "not a tar"; any later one too
        data = bytearray(raw)
        data[off + 148 : off + 156] = b"XXXXXXXX"  # the header checksum
        bad = tmp_path / f"hdr{k}.tar"
        bad.write_bytes(bytes(data))
        with pytest.raises(BundleError, match="is damaged or truncated"):
            Bundle.load(bad)


@pytest.mark.parametrize("keep", [1000, 2000, 5000, 0.5])
def test_a_truncated_tar_is_called_damaged(golden_copy, tmp_path, keep):
    arc = _tar(golden_copy, tmp_path / "b.tar")
    raw = arc.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else keep
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[:n])
    with pytest.raises(BundleError, match=r"cut\.tar is damaged or truncated"):
        Bundle.load(cut)


def test_a_file_that_is_no_archive_is_still_called_that(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello, not a tar at all\n" * 100)
    with pytest.raises(BundleError, match="neither a bundle directory nor a tar archive"):
        Bundle.load(junk)


def test_an_archive_without_a_manifest_still_says_so(tmp_path):
    arc = tmp_path / "empty.tar"
    with tarfile.open(arc, "w") as tf:
        info = tarfile.TarInfo("b/readme.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(BundleError, match="exactly one manifest.json, found 0"):
        Bundle.load(arc)


def test_plain_and_gzip_archives_still_load(golden_copy, tmp_path):
    for name, mode in (("b.tar", "w"), ("b.tar.gz", "w:gz")):
        assert Bundle.load(_tar(golden_copy, tmp_path / name, mode)).model_id == "tiny-golden"


# -- 3. format_version must be an integer -------------------------------------------------------

@pytest.mark.parametrize("version", ["1", 1.0, True, None, [1]])
def test_a_format_version_that_is_not_an_integer_is_named_so(golden_copy, version):
    _reseal(golden_copy, lambda m: m.__setitem__("format_version", version))
    with pytest.raises(BundleError, match=r"format_version must be an integer, not " + repr(version).replace("[", r"\[")
                       .replace("]", r"\]").replace(".", r"\.")):
        Bundle.load(golden_copy)


def test_a_missing_format_version_is_named_so(golden_copy):
    _reseal(golden_copy, lambda m: m.pop("format_version"))
    with pytest.raises(BundleError, match="lacks 'format_version'"):
        Bundle.load(golden_copy)


# -- 4. EDGERUN_MAX_BUNDLE_MB --------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", "1e400", "0", "-1", "1e-300", "lots", "1 MiB"])
def test_a_max_bundle_mb_that_is_not_a_positive_number_is_refused(golden_copy, tmp_path, monkeypatch, raw):
    arc = _tar(golden_copy, tmp_path / "b.tar")
    monkeypatch.setenv("EDGERUN_MAX_BUNDLE_MB", raw)
    with pytest.raises(ConfigError, match=r"EDGERUN_MAX_BUNDLE_MB=.* positive.*MiB.*unset it"):
        Bundle.load(arc)


def test_a_fractional_max_bundle_mb_is_printed_as_it_is(golden_copy, tmp_path, monkeypatch):
    arc = tmp_path / "big.tar"
    with tarfile.open(arc, "w") as tf:
        for name, data in (("b/manifest.json", b"{}"), ("b/front.onnx", bytes(200 * 1024))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("EDGERUN_MAX_BUNDLE_MB", "0.1")
    with pytest.raises(BundleError, match=r"unpacks to 204802 bytes, over the 104857 bytes \(0\.1 MiB\) limit"):
        Bundle.load(arc)
    monkeypatch.setenv("EDGERUN_MAX_BUNDLE_MB", "0.5")  # fits: unpacked, then refused as not a bundle
    with pytest.raises(BundleError, match="not an edgerun bundle manifest"):
        Bundle.load(arc)


@pytest.mark.parametrize("raw", ["", "  "])
def test_an_empty_max_bundle_mb_means_the_default(golden_copy, tmp_path, monkeypatch, raw):
    monkeypatch.setenv("EDGERUN_MAX_BUNDLE_MB", raw)
    assert Bundle.load(_tar(golden_copy, tmp_path / "b.tar")).model_id == "tiny-golden"


# -- 5. samples.npz ------------------------------------------------------------------------------

def test_samples_load_from_a_good_bundle():
    from edgerun.bundle import load_samples

    b = Bundle.load(GOLDEN)
    x = b.samples()
    assert isinstance(x, np.ndarray) and x.shape[0] >= 1
    assert np.array_equal(x, load_samples(GOLDEN / "samples.npz"))


@pytest.mark.parametrize("damage", ["truncated", "flipped", "not-a-zip", "npy", "no-inputs", "pickled"])
def test_a_resealed_damaged_samples_npz_is_named(golden_copy, damage):
    p = golden_copy / "samples.npz"
    raw = p.read_bytes()
    if damage == "truncated":
        p.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped":  # inside the stored array: the zip member's CRC-32 no longer matches
        data = bytearray(raw)
        data[len(data) // 3] ^= 0xFF
        p.write_bytes(bytes(data))
    elif damage == "not-a-zip":
        p.write_bytes(b"garbage" * 100)
    elif damage == "npy":
        np.save(open(p, "wb"), np.zeros(3, np.float32))
    elif damage == "no-inputs":
        np.savez(open(p, "wb"), other=np.zeros(3, np.float32))
    elif damage == "pickled":
        np.savez(open(p, "wb"), inputs=np.array([{"a": 1}], dtype=object))
    _reseal(golden_copy, lambda m: m["files"]["samples.npz"].update(_entry(p)))
    b = Bundle.load(golden_copy)  # the manifest vouches for the damaged file: only reading it can tell
    with pytest.raises(BundleError, match=r"samples\.npz .*(damaged|no 'inputs').*re-export"):
        b.samples()


def test_an_archive_of_two_bundles_says_which_and_what_to_do(golden_copy, tmp_path):
    """An archive of a folder holding two bundles (or a bundle with an old copy inside) was refused as "must hold
    exactly one manifest.json, found 2", not saying where they are or what to do."""
    shutil.copytree(golden_copy, tmp_path / "two" / "old")
    shutil.copytree(golden_copy, tmp_path / "two" / "new")
    arc = _tar(tmp_path / "two", tmp_path / "two.tar.gz", "w:gz")
    with pytest.raises(BundleError, match=r"found 2; it holds 2 \(bundle/new/manifest\.json, bundle/old/manifest\.json"
                                          r"\): archive each bundle alone, or unpack it \(tar -xf\) and pass"):
        Bundle.load(arc)
