"""Builds the C++-only device programs (cpp/examples: edgerun_device, edgerun_control_loop, on the
library cpp/device) for the tests, once per session.

It links the core the pip build already compiled (``build/<wheel tag>/libedgerun_core.a``, the very
library inside ``edgerun._core``, so its front half is bit-identical to the Python device's) and
compiles only the program's own files (~20 s on 2 cores); without that library it builds the core
too from the top-level CMakeLists.txt (-DEDGERUN_EXAMPLES=ON)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 900
_BUILT: list[Path] = []  # one build per test session, shared by the test files of the C++ device


def missing_tools() -> str:
    """Why the program cannot be built here ("" when it can)."""
    for tool in ("cmake", "pkg-config"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    for mod, pkg in (("libmosquitto", "libmosquitto-dev"), ("libcrypto", "libssl-dev")):
        if subprocess.run(["pkg-config", "--exists", mod]).returncode != 0:
            return f"{pkg} is not installed (bash scripts/setup.sh --test installs it)"
    if not Path("/usr/include/nlohmann/json.hpp").exists() and not list(Path("/usr").glob("**/nlohmann_jsonConfig.cmake")):
        return "nlohmann-json3-dev is not installed (bash scripts/setup.sh --test installs it)"
    return ""


def prebuilt_core() -> Path | None:
    """The core of the installed edgerun._core, when the pip build left it in build/."""
    libs = sorted(ROOT.glob("build/*/libedgerun_core.a"), key=lambda p: p.stat().st_mtime)
    return libs[-1] if libs else None


def build(out: Path) -> Path:
    """Configure and build edgerun_device into ``out``; returns the executable."""
    core = prebuilt_core()
    if core is not None:
        cfg = ["cmake", "-S", str(ROOT / "cpp" / "examples"), "-B", str(out), f"-DEDGERUN_CORE_LIB={core}"]
    else:
        cfg = ["cmake", "-S", str(ROOT), "-B", str(out), "-DEDGERUN_EXAMPLES=ON"]
    for cmd in (cfg + ["-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(out), "--target", "edgerun_device", "edgerun_control_loop", "-j", "2"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    exe = next(out.rglob("edgerun_device"))
    return exe


def control_loop(device_exe: Path) -> Path:
    """edgerun_control_loop, built next to ``device_exe`` by ``build``."""
    return device_exe.with_name("edgerun_control_loop")


def built_once(tmp_path_factory) -> Path:
    """``build`` into a session temp folder the first time a test file asks; the same executable after."""
    if not _BUILT:
        _BUILT.append(build(tmp_path_factory.mktemp("cpp_device_build")))
    return _BUILT[0]
