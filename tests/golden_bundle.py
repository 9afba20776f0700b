"""The golden model bundle (tests/golden/bundle_v1) and edits of its manifest, for the tests that
check what the runtime and the CLI make of a damaged or hand-edited bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from edgerun.bundle import compute_bundle_hash

GOLDEN = Path(__file__).resolve().parent / "golden" / "bundle_v1"


def golden_copy_at(dst: Path) -> Path:
    shutil.copytree(GOLDEN, dst)
    return dst


def reseal(directory: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Edit the manifest and fix up its hash, as a careless (or hostile) tool would."""
    mf = directory / "manifest.json"
    m = json.loads(mf.read_text())
    edit(m)
    m["bundle_hash"] = compute_bundle_hash(m)
    mf.write_text(json.dumps(m))
    return directory
