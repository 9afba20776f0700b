"""`import edgerun` (and the device/server modules) must not pull in torch: a device has no torch."""

import subprocess
import sys


def test_import_edgerun_does_not_import_torch():
    code = (
        "import sys, edgerun, edgerun.bundle, edgerun.wire, edgerun.device, edgerun.server, edgerun.verify, edgerun.cli;"
        "bad = [m for m in ('torch', 'edgerun.exporters') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
