"""`edgerun pack`: one side's copy of a bundle. The device's copy holds the front half (and exits,
samples, report), the server's the back half; both keep the manifest byte for byte, so the bundle
hash and the topics are the whole bundle's. Files a copy holds are checked like a whole bundle's;
one it left out is named, with what to do, by the command that needs it."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from cli_checks import closed_port, run_cli
from edgerun.bundle import Bundle
from edgerun.errors import BundleError, ConfigError
from edgerun.pack import pack, side_files
from golden_bundle import golden_copy_at


@pytest.fixture
def golden(tmp_path):
    return golden_copy_at(tmp_path / "b")


def _members(archive):
    with tarfile.open(archive) as tf:
        return sorted(m.name.split("/", 1)[1] for m in tf.getmembers())


@pytest.mark.parametrize("side,kept", [
    ("device", ["front.erg", "front.onnx", "report.json", "samples.npz"]),
    ("server", ["back.onnx", "report.json"]),
])
def test_a_pack_holds_its_sides_files_and_the_whole_bundles_identity(golden, tmp_path, side, kept):
    out = tmp_path / f"{side}.tar.gz"
    s = pack(golden, side, out)
    assert s["kept"] == kept and "whole.onnx" in s["left_out"]
    assert _members(out) == sorted(["manifest.json", "packed.json", *kept])
    b, whole = Bundle.load(out), Bundle.load(golden)
    assert b.hash == whole.hash and b.topic_id == whole.topic_id
    assert b.packed["for"] == side and all(b.has(n) for n in kept) and not b.has("whole.onnx")


def test_a_file_left_out_is_named_with_what_to_do(golden, tmp_path):
    b = Bundle.load(pack(golden, "device", tmp_path / "d.tar")["out"])
    with pytest.raises(BundleError, match=r"d\.tar is the device's copy .* leaves out back\.onnx; .* --keep back\.onnx"):
        b.file("back.onnx")
    assert b.file("front.erg").is_file()


def test_keep_adds_a_file_of_the_other_side(golden, tmp_path):
    s = pack(golden, "device", tmp_path / "d.tar.gz", keep=("back.onnx",))
    assert "back.onnx" in s["kept"] and Bundle.load(tmp_path / "d.tar.gz").file("back.onnx").is_file()


def _unpacked(archive, dest):
    with tarfile.open(archive) as tf:
        tf.extractall(dest, filter="data")
    return next(dest.iterdir())


def test_a_file_a_pack_holds_is_still_checked_against_the_manifest(golden, tmp_path):
    d = _unpacked(pack(golden, "device", tmp_path / "d.tar")["out"], tmp_path / "x")
    (d / "front.erg").write_bytes(b"\0" + (d / "front.erg").read_bytes()[1:])
    with pytest.raises(BundleError, match="front.erg does not match its sha256"):
        Bundle.load(d)


def test_the_marker_excuses_only_the_files_it_names(golden, tmp_path):
    d = _unpacked(pack(golden, "server", tmp_path / "s.tar")["out"], tmp_path / "x")
    m = json.loads((d / "packed.json").read_text())
    m["omitted"].remove("front.erg")
    (d / "packed.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="incomplete: front.erg is missing"):
        Bundle.load(d)


@pytest.mark.parametrize("text", ["{", "[]", '{"format": "edgerun-pack", "for": "phone", "omitted": []}',
                                  '{"format": "edgerun-pack", "for": "device", "omitted": "back.onnx"}'])
def test_a_malformed_marker_is_refused(golden, tmp_path, text):
    (golden / "packed.json").write_text(text)
    with pytest.raises(BundleError, match="packed.json"):
        Bundle.load(golden)


@pytest.mark.parametrize("side,out,keep,match", [
    ("phone", "p.tar.gz", (), "--for 'phone': pack for one of device, server"),
    ("device", "p.zip", (), "a pack is a .tar.gz"),
    ("device", "p.tar.gz", ("nope.onnx",), "--keep nope.onnx: the bundle has no such file"),
    ("device", "missing/p.tar.gz", (), "does not exist"),
])
def test_bad_options_are_refused_and_nothing_is_written(golden, tmp_path, side, out, keep, match):
    with pytest.raises(ConfigError, match=match):
        pack(golden, side, tmp_path / out, keep)
    assert not list(tmp_path.glob("p.*"))


def test_a_pack_is_not_packed_again(golden, tmp_path):
    pack(golden, "device", tmp_path / "d.tar.gz")
    with pytest.raises(BundleError, match="already one side's copy"):
        pack(tmp_path / "d.tar.gz", "device", tmp_path / "e.tar.gz")


def test_a_failed_pack_keeps_the_archive_already_there(golden, tmp_path):
    out = tmp_path / "d.tar.gz"
    pack(golden, "device", out)
    before = out.read_bytes()
    shutil.rmtree(golden / ".." / "b")
    with pytest.raises(BundleError):
        pack(golden, "device", out)
    assert out.read_bytes() == before


def test_split_llm_sides():
    m = {"format": "edgerun-llm", "files": {n: {} for n in ("front.onnx", "back.onnx", "tokenizer.json", "report.json")}}
    assert side_files(m, "device") == ["front.onnx", "report.json", "tokenizer.json"]
    assert side_files(m, "server") == ["back.onnx", "report.json"]
    assert side_files(m, "device", ("back.onnx",)) == ["back.onnx", "front.onnx", "report.json", "tokenizer.json"]


@pytest.mark.parametrize("cmd,side,missing", [("serve", "device", "back.onnx"), ("run", "server", "samples.npz"),
                                              ("verify", "device", "back.onnx, whole.onnx")])
def test_the_cli_names_the_file_a_pack_lacks_before_the_broker(golden, tmp_path, cmd, side, missing):
    out = tmp_path / f"{side}.tar.gz"
    assert run_cli("pack", str(golden), "--for", side, "--out", str(out)).exit_code == 0
    args = [cmd, str(out)] + ([] if cmd == "verify" else ["--broker", f"mqtt://127.0.0.1:{closed_port()}"])
    r = run_cli(*args)
    assert r.exit_code == 2, r.output
    assert f"{out} is the {side}'s copy" in r.output and f"leaves out {missing}" in r.output
    assert "cannot reach the MQTT broker" not in r.output


@pytest.mark.parametrize("name, folder", [("digits-device.tar.gz", "digits-device"), ("v1.2.tgz", "v1.2"),
                                          ("robot.tiny.tar.gz", "robot.tiny"), ("a.t.tar", "a.t"),
                                          (".tar.gz", "bundle")])
def test_the_archive_unpacks_to_a_folder_named_after_it(golden, tmp_path, name, folder):
    # split at the first ".t": robot.tiny.tar.gz unpacked to robot/, a.t.tar to a/
    with tarfile.open(pack(golden, "server", tmp_path / name)["out"]) as tf:
        assert {m.name.split("/", 1)[0] for m in tf.getmembers()} == {folder}


def test_a_file_that_is_a_link_inside_the_bundle_goes_in_as_its_bytes(golden, tmp_path):
    """A bundle whose back.onnx links to store/back.onnx inside it loads (test_bundle_hardening); its pack held
    the link and not store/, and the server's copy was then "incomplete: back.onnx is missing". An absolute
    link was refused by the unpacking's data filter as "not a bundle edgerun export writes"."""
    import os

    (golden / "store").mkdir()
    (golden / "back.onnx").rename(golden / "store" / "back.onnx")
    os.symlink("store/back.onnx", golden / "back.onnx")
    (golden / "front.onnx").rename(golden / "store" / "front.onnx")
    os.symlink(golden / "store" / "front.onnx", golden / "front.onnx")
    whole = Bundle.load(golden)
    for side, name in (("server", "back.onnx"), ("device", "front.onnx")):
        pack(golden, side, tmp_path / f"{side}.tar.gz")
        with tarfile.open(tmp_path / f"{side}.tar.gz") as tf:
            assert tf.getmember(f"{side}/{name}").isfile()
        copy = Bundle.load(tmp_path / f"{side}.tar.gz")
        assert copy.hash == whole.hash and copy.file(name).read_bytes() == whole.file(name).read_bytes()


def test_a_pack_does_not_replace_the_archive_it_packs(golden, tmp_path):
    """`pack b.tar.gz --for device --out b.tar.gz` replaced the whole bundle's only copy with the device's."""
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as tf:
        tf.add(golden, arcname="b")
    before = (tmp_path / "b.tar.gz").read_bytes()
    with pytest.raises(ConfigError, match=r"is the bundle archive being packed.*--out .*b-device\.tar\.gz"):
        pack(tmp_path / "b.tar.gz", "device", tmp_path / "b.tar.gz")
    assert (tmp_path / "b.tar.gz").read_bytes() == before
    assert Bundle.load(tmp_path / "b.tar.gz").packed is None
