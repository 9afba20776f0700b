"""Builds the C++-only device programs (cpp/examples: edgerun_device, edgerun_control_loop, on the
library cpp/device) for the tests, once per session.

It links the core the pip build already compiled (``build/<wheel tag>/libedgerun_core.a``, the very
library inside ``edgerun._core``, so its front half is bit-identical to the Python device's) and
compiles only the program's own files (~20 s on 2 cores); without that library it builds the core
too from the top-level CMakeLists.txt (-DEDGERUN_EXAMPLES=ON).

EDGERUN_CPP_SANITIZE=1 builds core, library and programs with AddressSanitizer and
UndefinedBehaviorSanitizer instead (from the top-level CMakeLists.txt, several minutes on 2 cores), so the
C++ device tests run against that build; a sanitizer report ends the program with a non-zero exit code.
EDGERUN_CPP_SANITIZE=/some/folder does the same in that folder, kept between sessions (rebuilt incrementally)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 900
_BUILT: list[Path] = []  # one build per test session, shared by the test files of the C++ device
_OUT: dict[Path, Path] = {}  # executable -> its cmake build folder
SANITIZE_FLAGS = "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"


def sanitized() -> bool:
    """True when EDGERUN_CPP_SANITIZE asks for the ASan + UBSan build."""
    return os.environ.get("EDGERUN_CPP_SANITIZE", "") not in ("", "0")


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
    # Only a wheel tag's folder (cp311-cp311-linux_x86_64): a sanitizer build kept in build/asan
    # (EDGERUN_CPP_SANITIZE=build/asan) was the newest, and the plain build failed to link it.
    libs = sorted((p for p in ROOT.glob("build/*/libedgerun_core.a") if p.parent.name.startswith(("cp", "pp"))),
                  key=lambda p: p.stat().st_mtime)
    return libs[-1] if libs else None


def build(out: Path) -> Path:
    """Configure and build edgerun_device into ``out``; returns the executable."""
    core = prebuilt_core()
    if sanitized():
        cfg = ["cmake", "-S", str(ROOT), "-B", str(out), "-DEDGERUN_EXAMPLES=ON", f"-DCMAKE_CXX_FLAGS={SANITIZE_FLAGS}",
               "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined", "-DCMAKE_BUILD_TYPE=Debug"]
    elif core is not None:
        cfg = ["cmake", "-S", str(ROOT / "cpp" / "examples"), "-B", str(out), f"-DEDGERUN_CORE_LIB={core}",
               "-DCMAKE_BUILD_TYPE=Release"]
    else:
        cfg = ["cmake", "-S", str(ROOT), "-B", str(out), "-DEDGERUN_EXAMPLES=ON", "-DCMAKE_BUILD_TYPE=Release"]
    for cmd in (cfg, ["cmake", "--build", str(out), "--target", "edgerun_device", "edgerun_control_loop",
                      "-j", "2"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    exe = next(out.rglob("edgerun_device"))
    _OUT[exe] = out
    return exe


def extra_program(device_exe: Path, target: str) -> Path:
    """Builds ``target`` (one built only on request, e.g. edgerun_device_fuzz) in ``device_exe``'s build folder."""
    out = _OUT[device_exe]
    cmd = ["cmake", "--build", str(out), "--target", target, "-j", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return next(p for p in out.rglob(target) if p.is_file())


def control_loop(device_exe: Path) -> Path:
    """edgerun_control_loop, built next to ``device_exe`` by ``build``."""
    return device_exe.with_name("edgerun_control_loop")


def built_once(tmp_path_factory) -> Path:
    """``build`` into a session temp folder the first time a test file asks; the same executable after."""
    if not _BUILT:
        keep = os.environ.get("EDGERUN_CPP_SANITIZE", "")
        out = Path(keep) if "/" in keep else tmp_path_factory.mktemp("cpp_device_build")
        _BUILT.append(build(out))
    return _BUILT[0]


def same_words(why: str) -> str:
    """A device's message with its request id and device id (in the request topic) left out: what the C++ and
    the Python device must both say."""
    import re

    return re.sub(r"/req/\S+", "/req/DEVICE", re.sub(r"request \d+", "request N", why))
