"""`edgerun.<Name>` is the public API the package docstring and the README promise. Before, only the
error classes were exported: `edgerun.Device(...)`, as the docstring said, was an AttributeError."""

import subprocess
import sys

import pytest

import edgerun


@pytest.mark.parametrize("name", sorted(edgerun._API))
def test_each_public_name_is_the_object_its_module_defines(name):
    import importlib

    obj = getattr(edgerun, name)
    assert obj is getattr(importlib.import_module(edgerun._API[name]), name)
    assert name in edgerun.__all__ and name in dir(edgerun)


def test_import_edgerun_loads_no_device_server_or_engine_until_a_name_is_used():
    code = ("import sys, edgerun; mods = ('edgerun.device', 'edgerun.server', 'edgerun.engine', 'torch');"
            "before = [m for m in mods if m in sys.modules]; edgerun.Device;"
            "print(before, 'edgerun.device' in sys.modules, 'edgerun.server' in sys.modules, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["[]", "True", "False", "False"], r.stdout + r.stderr


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Devcie'"):
        edgerun.Devcie  # noqa: B018
