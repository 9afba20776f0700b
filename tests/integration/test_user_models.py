"""A user's own model through the commands a user types: `edgerun export model.py:make`, `edgerun serve`,
`edgerun run --input x.npy --json`; the answers equal the torch model's."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from edgerun.bundle import Bundle

MODELS = '''
import torch
import torch.nn as nn

class Regressor(nn.Module):  # one value per sample, output [batch]
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(20, 16), nn.Linear(16, 1)
    def forward(self, x):
        return self.b(torch.relu(self.a(x))).squeeze(1)

class Tagger(nn.Module):  # IMU windows tagged per step, output [batch, T, classes]
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(6, 16, 3, padding=1), nn.Conv1d(16, 5, 1)
    def forward(self, x):
        return self.c2(torch.relu(self.c1(x))).transpose(1, 2)

def regressor():
    torch.manual_seed(0)
    return Regressor(), torch.randn(1, 20)

def steer_throttle():  # two regression targets per sample: [batch, 2]
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 2)), torch.randn(1, 20)

class ActionValue(nn.Module):  # a policy's continuous action [batch, 4] and its value [batch, 1]
    def __init__(self):
        super().__init__()
        self.a, self.act, self.val = nn.Linear(20, 16), nn.Linear(16, 4), nn.Linear(16, 1)
    def forward(self, x):
        h = torch.relu(self.a(x))
        return {"action": self.act(h), "value": self.val(h)}

def action_value():
    torch.manual_seed(0)
    return ActionValue(), torch.randn(1, 20)

def tagger():
    torch.manual_seed(0)
    return Tagger(), torch.randn(1, 6, 32)
'''


@pytest.mark.parametrize("fn", ["regressor", "tagger"])
def test_run_answers_a_file_model_with_its_output_equal_to_torch(tmp_path, cli_argv, broker, serve_bundle, fn):
    """`edgerun run` printed only int(out.argmax(-1)[0]): a traceback for these outputs ([batch]: IndexError,
    [batch, T, classes]: TypeError) after the server had answered. Now each line holds the answer."""
    import torch

    model_py = tmp_path / "model.py"
    model_py.write_text(MODELS)
    out = tmp_path / "bundle"
    r = subprocess.run([*cli_argv, "export", f"{model_py}:{fn}", "--no-eval", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    bundle = Bundle.load(out)
    serve_bundle(bundle)
    namespace: dict = {}
    exec(MODELS, namespace)
    module, example = namespace[fn]()
    x = (example + torch.randn(3, *example.shape[1:], generator=torch.Generator().manual_seed(1))).numpy()
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([*cli_argv, "run", str(out), "--broker", broker.url, "--input", str(tmp_path / "x.npy"),
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rec["i"] for rec in lines] == [0, 1, 2] and all(rec["top1"] is None for rec in lines)
    with torch.no_grad():
        want = module.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.array([rec["output"] for rec in lines]), want, rtol=1e-5, atol=1e-5)


def test_run_prints_no_top1_for_a_model_scored_as_a_regression(tmp_path, cli_argv, broker, serve_bundle):
    """Two targets per sample (steering, throttle), exported with --data float targets: `run` printed "top1": 0
    (the larger of the two) and, without --json, "top1=0" in place of the answer. The report says the task."""
    model_py = tmp_path / "model.py"
    model_py.write_text(MODELS)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", inputs=rng.standard_normal((40, 20)).astype(np.float32),
             labels=rng.standard_normal((40, 2)).astype(np.float32))
    out = tmp_path / "bundle"
    r = subprocess.run([*cli_argv, "export", f"{model_py}:steer_throttle", "--data", str(tmp_path / "d.npz"),
                        "--no-eval", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    bundle = Bundle.load(out)
    assert json.loads(bundle.file("report.json").read_text())["task"] == "regress"
    serve_bundle(bundle)
    np.save(tmp_path / "x.npy", rng.standard_normal((2, 20)).astype(np.float32))
    run = [*cli_argv, "run", str(out), "--broker", broker.url, "--input", str(tmp_path / "x.npy")]
    r = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 2 and all(rec["top1"] is None and len(rec["output"]) == 2 for rec in lines)
    r = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "top1=" not in r.stdout and r.stdout.count("output=[") == 2, r.stdout


def test_run_prints_no_top1_for_the_regression_output_of_a_two_output_model(tmp_path, cli_argv, broker, serve_bundle):
    """A policy's action (4 continuous values, --task regress) beside its value: `run --json` printed "top1": null
    for the first output, and "top1": 2 for the same output under "outputs" on the same line."""
    model_py = tmp_path / "model.py"
    model_py.write_text(MODELS)
    out = tmp_path / "bundle"
    r = subprocess.run([*cli_argv, "export", f"{model_py}:action_value", "--task", "regress", "--no-eval",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    serve_bundle(Bundle.load(out))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((2, 20)).astype(np.float32))
    r = subprocess.run([*cli_argv, "run", str(out), "--broker", broker.url, "--input", str(tmp_path / "x.npy"),
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 2 and all(rec["top1"] is None and rec["outputs"]["action"]["top1"] is None
                                   and rec["outputs"]["action"]["output"] == rec["output"] for rec in lines)
