"""`import edgerun` (and the device/server modules) must not pull in torch: a device has no torch."""

import subprocess
import sys


def test_import_edgerun_does_not_import_torch():
    code = (
        "import sys, edgerun, edgerun.bundle, edgerun.wire, edgerun.device, edgerun.server, edgerun.verify, edgerun.cli, edgerun.tools, edgerun.cli_tools,"
        " edgerun.llm, edgerun.llm_device, edgerun.llm_server, edgerun.cli_llm;"
        "bad = [m for m in ('torch', 'edgerun.exporters') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_without_the_compiled_core_frames_and_tsq_fall_back_to_python():
    """A server or device whose C++ core is not built still speaks the wire (Python encoder,
    decoder and tsq decoder: the same bytes and checks)."""
    code = (
        "import sys; sys.modules['edgerun._core'] = None;"  # import edgerun._core now raises ImportError
        "from edgerun import codec, crossing, wire;"
        "assert wire.best_encoder() is wire.encode and wire.best_decoder() is wire.decode;"
        "assert crossing.decoder() is codec.decode;"
        "import numpy as np;"
        "f = wire.Frame(wire.Kind.REQUEST, 1, 0, bytes(16), [np.ones((1, 3), np.float32)], {});"
        "assert wire.best_decoder()(wire.best_encoder()(f)).tensors[0].tolist() == [[1.0, 1.0, 1.0]];"
        "print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
