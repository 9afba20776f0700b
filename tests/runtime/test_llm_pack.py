"""The device's copy of a split LLM bundle (`edgerun pack --for device`, here built by hand-linking the
files `pack` keeps): it generates with its front half and tokenizer, and a device asked to answer alone
when no server can (local_fallback) refuses at start without the back half, instead of at the outage."""

from __future__ import annotations

import json
import os

import pytest

from cli_checks import closed_port
from edgerun import llm
from edgerun.bundle import PACK_FORMAT
from edgerun.errors import BundleError
from edgerun.llm_device import LlmDevice
from edgerun.pack import side_files


def _device_copy(src: llm.LlmBundle, out, keep=()):
    out.mkdir()
    kept = side_files(src.manifest, "device", keep)
    for name in ["manifest.json", *kept]:
        os.link(src.path / name, out / name)
    left = sorted(set(src.manifest["files"]) - set(kept))
    (out / "packed.json").write_text(json.dumps({"format": PACK_FORMAT, "for": "device", "omitted": left}))
    return out


def test_the_device_copy_loads_its_front_and_tokenizer(llm_bundle, tmp_path):
    b = llm.LlmBundle.load(_device_copy(llm_bundle, tmp_path / "d"))
    assert b.hash == llm_bundle.hash and b.packed["omitted"] == ["back.onnx"]
    assert llm.Tokenizer(b).encode("hello") == llm.Tokenizer(llm_bundle).encode("hello")
    llm.Half(b, "front")
    with pytest.raises(BundleError, match="leaves out back.onnx.*--keep back.onnx"):
        llm.Half(b, "back")


def test_local_fallback_needs_the_back_half_at_start(llm_bundle, tmp_path):
    d = _device_copy(llm_bundle, tmp_path / "d")
    with pytest.raises(BundleError, match="leaves out back.onnx.*--keep back.onnx"):
        LlmDevice(d, f"mqtt://127.0.0.1:{closed_port()}", local_fallback=True)
    kept = llm.LlmBundle.load(_device_copy(llm_bundle, tmp_path / "k", keep=("back.onnx",)))
    assert kept.packed["omitted"] == [] and kept.file("back.onnx").is_file()


def test_an_llm_export_writes_only_what_a_re_export_may_replace(llm_bundle):
    """`llm export --out` over an old LLM bundle refuses files that are not its own (``out_dir``): every
    file the export writes must count as its own, or a plain re-export would be refused."""
    from edgerun.bundle import LLM_FORMAT_NAME
    from edgerun.exporters.out_dir import check_out_dir, foreign_files

    assert foreign_files(llm_bundle.path, LLM_FORMAT_NAME) == []
    assert check_out_dir(llm_bundle.path, LLM_FORMAT_NAME) == llm_bundle.path.resolve()
