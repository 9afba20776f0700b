"""Shared fixtures: artifacts are made once per session by edgerun's own exporter.

Tests are grouped by what they need: tests/unit (Python only), tests/runtime
(the compiled core), tests/integration (a real Mosquitto and real processes).
The folder sets the marker, so `pytest -m "not integration"` works.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("EDGERUN_LOG", "warning")


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
