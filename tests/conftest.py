"""Shared fixtures: artifacts are made once per session by edgerun's own exporter.

Tests are grouped by what they need: tests/unit (Python only), tests/runtime
(the compiled core), tests/integration (a real Mosquitto and real processes).
The folder sets the marker, so `pytest -m "not integration"` works.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("EDGERUN_LOG", "warning")

# A hung test (a deadlock in the engine's worker pool, a wait on a process that never answers)
# must fail the run within minutes, not stall CI until its own limit. faulthandler's watchdog
# is a C thread: it fires even when the hang holds the GIL or sits in native code, prints every
# thread's Python stack (the test's file and line among them) and ends the process with exit 1.
# The longest test (a planner sweep over EfficientNet) took 45 s here (`pytest --durations`).
TEST_TIMEOUT_S = float(os.environ.get("EDGERUN_TEST_TIMEOUT_S", "600"))


_watchdog_fd: int | None = None


def pytest_configure(config):
    # Output capture is suspended while pytest configures: fd 2 is the real stderr here. During a
    # test it points at pytest's capture file, which is lost when the watchdog ends the process.
    global _watchdog_fd
    _watchdog_fd = os.dup(sys.stderr.fileno())


def pytest_unconfigure(config):
    if _watchdog_fd is not None:
        os.close(_watchdog_fd)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if TEST_TIMEOUT_S > 0:
        faulthandler.dump_traceback_later(TEST_TIMEOUT_S, exit=True, file=_watchdog_fd)
    try:
        yield
    finally:
        if TEST_TIMEOUT_S > 0:
            faulthandler.cancel_dump_traceback_later()


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "runtime" in parts:
            item.add_marker(pytest.mark.runtime)
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def digits_traced():
    from edgerun.exporters.pipeline import trace_model

    return trace_model("zoo:digits-cnn")


@pytest.fixture(scope="session")
def effnet_traced():
    from edgerun.exporters.pipeline import trace_model

    return trace_model("zoo:efficientnet-lite0")


@pytest.fixture(scope="session")
def digits_bundle(digits_traced, tmp_path_factory):
    """The digits CNN exported at its default cut (evaluated on the full test split)."""
    from edgerun.exporters.pipeline import ExportConfig, export

    return export(digits_traced, ExportConfig(), tmp_path_factory.mktemp("bundles") / "digits")


@pytest.fixture(scope="session")
def llm_bundle(tmp_path_factory):
    """SmolLM2-135M-Instruct split after 15 of its 30 layers (``edgerun llm export``, ~45 s, 650 MB)."""
    from edgerun.exporters.llm_export import export_llm
    from edgerun.llm import LlmBundle

    out = tmp_path_factory.mktemp("llm") / "smollm2"
    export_llm(out, cut=15, max_context=1024)
    return LlmBundle.load(out)


@pytest.fixture(scope="session")
def llm_tsq(llm_bundle, tmp_path_factory):
    """``llm_bundle`` with the tsq codec on its hidden states, calibrated as ``edgerun llm export --codec tsq``
    does but on less text (2 x 48 tokens): (the resealed bundle, the codec's calibration entry)."""
    import json

    from edgerun import llm
    from edgerun.bundle import LLM_FORMAT_NAME, write_manifest
    from edgerun.exporters import llm_codec

    entry = llm_codec.calibrate(llm.Half(llm_bundle, "front", 2), llm.Half(llm_bundle, "back", 2),
                                llm_codec.corpus_chunks(llm.Tokenizer(llm_bundle), 2, 48))
    assert entry["id"] == "tsq", entry["calib"]
    out = tmp_path_factory.mktemp("llm-tsq") / "smollm2-tsq"
    out.mkdir()
    for name in llm_bundle.manifest["files"]:
        os.link(llm_bundle.path / name, out / name)
    manifest = {k: v for k, v in llm_bundle.manifest.items() if k not in ("bundle_hash", "format", "format_version")}
    manifest["codec"] = {"id": "tsq", "params": entry["params"]}
    manifest["files"] = {k: {"role": v["role"]} for k, v in manifest["files"].items()}
    write_manifest(out, json.loads(json.dumps(manifest)), LLM_FORMAT_NAME)
    return llm.LlmBundle.load(out), entry
