"""A bundle whose files were swapped or damaged and then sealed again (a copy tool, a hand edit, a bug)
passes the sha256 check; each command must still refuse it with one clear error naming the file,
not a KeyError, an onnxruntime traceback or a crash of `edgerun serve`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from edgerun.bundle import write_manifest

pytestmark = pytest.mark.integration


def resealed(bundle, tmp_path, name: str, data: bytes):
    d = tmp_path / "b"
    shutil.copytree(bundle.path, d)
    (d / name).write_bytes(data)
    manifest = json.loads((d / "manifest.json").read_text())
    write_manifest(d, {k: v for k, v in manifest.items() if k != "bundle_hash"})
    return d


@pytest.mark.parametrize(("name", "source", "match"), [
    ("back.onnx", "whole.onnx", "back.onnx' takes .* is from another export"),   # was "missing inputs ['image']"
    ("front.onnx", "whole.onnx", "front.onnx' takes .* is from another export"),
    ("back.onnx", None, "onnxruntime cannot load"),                              # garbage protobuf
    ("samples.npz", None, "samples.npz"),                                       # was BadZipFile
])
def test_verify_names_the_swapped_or_damaged_file(digits_bundle, tmp_path, cli_argv, name, source, match):
    data = (digits_bundle.path / source).read_bytes() if source else b"\x08\x07garbage" * 100
    d = resealed(digits_bundle, tmp_path, name, data)
    p = subprocess.run([*cli_argv, "verify", str(d)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert re.search(match, p.stderr), p.stderr


def test_serve_refuses_a_garbage_back_half_with_one_line(digits_bundle, tmp_path, cli_argv, broker):
    d = resealed(digits_bundle, tmp_path, "back.onnx", b"\x08\x07garbage" * 100)
    p = subprocess.run([*cli_argv, "serve", str(d), "--broker", broker.url], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "onnxruntime cannot load the back half" in p.stderr


def test_a_front_erg_from_another_cut_is_named_by_verify_and_run(digits_bundle, digits_traced, tmp_path, cli_argv,
                                                                  broker):
    """It failed as KeyError: 'relu_2' (verify) or in the middle of a request (run)."""
    from edgerun.exporters.pipeline import ExportConfig, export

    other = export(digits_traced, ExportConfig(cut="block1", evaluate=False), tmp_path / "other")
    assert other.cut_label != digits_bundle.cut_label
    d = resealed(digits_bundle, tmp_path, "front.erg", (other.path / "front.erg").read_bytes())
    for argv in (["verify", str(d)], ["run", str(d), "--broker", broker.url]):
        p = subprocess.run([*cli_argv, *argv], capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert "front.erg' takes" in p.stderr and "from another export" in p.stderr, p.stderr
