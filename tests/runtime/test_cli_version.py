"""`edgerun --version`: names the package, the formats and the kernels that run here, and says
when the compiled core does not match the Python package (a rebuild was forgotten)."""

from __future__ import annotations

import sys

from typer.testing import CliRunner

from edgerun import __version__, _core, wire
from edgerun.cli import app

PATHS = {"avx512", "avx2", "avx2-fma", "neon", "portable", "amx", "avx512-vnni", "avx-vnni"}


def test_version_names_package_formats_and_kernels():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"edgerun {__version__}"
    assert f"wire {wire.VERSION}" in lines[1]
    core = next(line for line in lines if line.startswith("native core:"))
    assert f"fp32 gemm {_core.gemm_path()}," in core and f"int8 gemm {_core.qgemm_path()}," in core
    assert {_core.gemm_path(), _core.qgemm_path()} <= PATHS
    assert not any(line.startswith("warning") for line in lines)


def test_version_warns_when_the_core_is_stale(monkeypatch):
    monkeypatch.setattr(_core, "WIRE_VERSION", wire.VERSION + 1)
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0
    assert f"wire {wire.VERSION} vs core {wire.VERSION + 1}" in r.output and "pip install ." in r.output


def test_version_without_the_core_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "edgerun._core", None)  # import fails as when the build is missing
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0
    assert "native core: missing" in r.output and "pip install ." in r.output
