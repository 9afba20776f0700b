"""The int8 kernels give bit-identical outputs on every path and architecture.

tests/cross/kernels_check.cpp (plain C++ against the core's sources, no Python) runs
int8 convs (1x1 and 3x3 stride 2, fused ReLU6, odd shapes) and the int8/int4
dequantization on fixed data and prints a hash of each output. It is built for this
machine (every x86 path: AMX, AVX-512 VNNI, AVX-VNNI, AVX2, portable, chosen by environment)
and cross-built for aarch64 and run under qemu-aarch64 (the NEON micro-kernel and the
portable one). All hashes must match: the exporter's rounding emulation and a device
of either architecture then compute the same front half.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.runtime, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(str(p) for p in (ROOT / "cpp" / "src").glob("*.cpp")) + [str(ROOT / "tests" / "cross" / "kernels_check.cpp")]
FLAGS = ["-std=c++17", "-O2", "-pthread", f"-I{ROOT / 'cpp' / 'include'}", f"-I{ROOT / 'cpp' / 'src'}"]
ENV_PATHS = {"best": {}, "no-amx": {"EDGERUN_NO_AMX": "1"}, "no-avx512": {"EDGERUN_NO_AVX512": "1"}, "no-vnni": {"EDGERUN_NO_VNNI": "1"},
             "portable": {"EDGERUN_FORCE_PORTABLE": "1"}}


def _build(cxx: str, out: Path, extra: list[str]) -> None:
    r = subprocess.run([cxx, *FLAGS, *extra, *SOURCES, "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def _run(cmd: list[str], env_add: dict) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERUN_")}
    r = subprocess.run(cmd, env={**env, **env_add}, capture_output=True, text=True, timeout=300, check=True)
    return dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())


@pytest.fixture(scope="module")
def host_results(tmp_path_factory) -> dict[str, dict[str, str]]:
    exe = tmp_path_factory.mktemp("cross") / "kernels_check"
    _build(shutil.which("g++") or "c++", exe, [])
    return {name: _run([str(exe)], env) for name, env in ENV_PATHS.items()}


PATH_KEYS = ("path", "crcpath")


def test_every_host_path_gives_the_same_bits(host_results):
    assert host_results["portable"]["path"] == "portable" and host_results["portable"]["crcpath"] == "table"
    ref = {k: v for k, v in host_results["portable"].items() if k not in PATH_KEYS}
    for name, res in host_results.items():
        got = {k: v for k, v in res.items() if k not in PATH_KEYS}
        assert got == ref, f"{name} ({res['path']}) differs from portable"


@pytest.mark.skipif(platform.machine() != "x86_64" or not shutil.which("aarch64-linux-gnu-g++")
                    or not shutil.which("qemu-aarch64"),
                    reason="needs g++-aarch64-linux-gnu and qemu-user (bash scripts/setup.sh --test installs them)")
def test_neon_under_qemu_gives_the_x86_bits(host_results, tmp_path):
    exe = tmp_path / "kernels_check_aarch64"
    _build("aarch64-linux-gnu-g++", exe, ["-static"])
    neon = _run(["qemu-aarch64", str(exe)], {})
    portable = _run(["qemu-aarch64", str(exe)], {"EDGERUN_FORCE_PORTABLE": "1"})
    assert neon.pop("path") == "neon" and portable.pop("path") == "portable"
    assert neon.pop("crcpath") == "arm-crc" and portable.pop("crcpath") == "table"
    x86 = {k: v for k, v in host_results["best"].items() if k not in PATH_KEYS}
    assert neon == portable == x86
