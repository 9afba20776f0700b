"""`edgerun export path/to/file.py:fn` with a wrong model or example: one clear error, not a traceback
from deep in torch's exporter or onnxruntime."""

from __future__ import annotations

import pytest

from edgerun.errors import ConfigError, ExportError

MODELS = '''
import torch
def needs(n): return None
def boom(): raise ValueError("no weights here")
def chan(): return torch.nn.Conv2d(3, 4, 3), torch.randn(1, 1, 8, 8)
def nobatch(): return torch.nn.Linear(4, 2), torch.randn(4)
def scalar(): return torch.nn.Identity(), torch.tensor(1.0)
'''


@pytest.mark.parametrize(("fn", "error", "match"), [
    ("needs", ConfigError, r"needs\(\) must take no arguments"),              # was a TypeError traceback
    ("boom", ExportError, r"boom\(\) raised ValueError: no weights here"),   # the user's own error, named
    ("chan", ExportError, "fails on its own example input .*to have 3 channels"),  # was cut at 400 chars
    ("nobatch", ExportError, "first dimension must be the batch"),            # was onnxruntime's InvalidArgument
    ("scalar", ExportError, "example input is a scalar"),
])
def test_a_wrong_model_file_says_what_is_wrong(tmp_path, fn, error, match):
    from edgerun.exporters.pipeline import trace_model

    path = tmp_path / "m.py"
    path.write_text(MODELS)
    with pytest.raises(error, match=match):
        trace_model(f"{path}:{fn}")
