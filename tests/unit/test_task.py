"""How a model's first output is scored: class scores (top-1; exits by max probability) or continuous values
(mean abs error; exits by action consistency). One rule (`evaluate.is_regression`) for the evaluation, the
exits and the planner, and `--task classify|regress` where the data cannot tell.

A model file with one value per sample and unlabelled `--data` was scored by top-1 agreement (always 1.0)
and its exits by max probability: the softmax of one value is 1.0, so every request was answered by the first
exit head, whatever its error, and the report said "metric 1.0".
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgerun.errors import ConfigError

MODELS = '''
import torch
from torch import nn


def _mlp(width):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, width))


def one_value():
    return _mlp(1), torch.randn(1, 8)


def three_values():
    return _mlp(3), torch.randn(1, 8)
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("task")
    (d / "policy.py").write_text(MODELS)
    x = np.random.default_rng(0).standard_normal((400, 8)).astype(np.float32)
    np.savez(d / "unlabelled.npz", inputs=x)
    np.savez(d / "targets.npz", inputs=x, labels=np.random.default_rng(1).standard_normal((400, 3)).astype(np.float32))
    return d


def _report(files, fn, tmp_path, **cfg):
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(f"{files / 'policy.py'}:{fn}", ExportConfig(**cfg), tmp_path / fn)
    return json.loads((b.path / "report.json").read_text())


def test_one_value_per_sample_is_scored_as_a_regression_and_its_exits_by_consistency(files, tmp_path):
    rep = _report(files, "one_value", tmp_path, data=files / "unlabelled.npz", exits="auto")
    assert rep["metric"] == "mae"
    assert rep["exits"]["criterion"] == "consistency" and rep["exits"]["metric"] == "action_mae"
    assert rep["exits"]["budgets"]["accurate"]["local_fraction"] < 1.0  # max_prob answered every request locally


def test_task_regress_scores_a_wide_unlabelled_output_as_continuous_values(files, tmp_path):
    auto = _report(files, "three_values", tmp_path / "auto", data=files / "unlabelled.npz", evaluate=True)
    assert auto["metric"] == "top1_agreement"  # nothing says these three values are not class scores
    rep = _report(files, "three_values", tmp_path / "regress", data=files / "unlabelled.npz", exits="auto",
                  task="regress")
    assert rep["metric"] == "mae" and "mae_vs_whole" in rep
    assert rep["exits"]["criterion"] == "consistency"


def test_the_planner_measures_the_loss_the_task_names(files):
    from edgerun.exporters.pipeline import trace_model
    from edgerun.exporters.planner_loss import LossMeter

    x = np.random.default_rng(2).standard_normal((16, 8)).astype(np.float32)
    spec = f"{files / 'policy.py'}:three_values"
    assert not LossMeter(trace_model(spec), x).regression
    assert LossMeter(trace_model(spec, task="regress"), x).regression


@pytest.mark.parametrize("fn, data, task, message", [
    ("one_value", None, "classify", r"one value per sample, so there is no top-1 to take: use --task regress"),
    ("three_values", "targets.npz", "classify", r"labels of targets.npz are targets, not class ids"),
    ("three_values", None, "guess", r"task 'guess': use one of"),
])
def test_a_task_the_model_or_its_labels_contradict_is_refused_saying_what_to_do(files, fn, data, task, message):
    from edgerun.exporters.pipeline import trace_model

    with pytest.raises(ConfigError, match=message):
        trace_model(f"{files / 'policy.py'}:{fn}", data=None if data is None else files / data, task=task)


def test_a_zoo_model_keeps_its_own_metric(tmp_path):
    from edgerun.exporters.models import resolve_model
    from edgerun.exporters.pipeline import with_task
    from edgerun.exporters.trace import to_onnx

    src = resolve_model("zoo:pendulum-policy")
    model = to_onnx(src.module, src.example, input_name=src.input_names[0], output_name="logits")
    with pytest.raises(ConfigError, match=r"--task classify: zoo:pendulum-policy is scored by action_mae; drop --task"):
        with_task(src, "classify", model)


def test_verify_gives_no_top1_for_one_value_per_sample(files, tmp_path):
    """`edgerun verify` printed "top1_agreement: 1.0" for a regression bundle: always 1.0 there, so None."""
    from edgerun.exporters.pipeline import ExportConfig, export
    from edgerun.verify import verify

    b = export(f"{files / 'policy.py'}:one_value", ExportConfig(), tmp_path / "b")
    wide = export(f"{files / 'policy.py'}:three_values", ExportConfig(), tmp_path / "w")
    assert verify(b).top1_agreement is None and verify(wide).top1_agreement == 1.0


class _ReportOnly:
    """A bundle as `edgerun run` reads its report.json: has() / file()."""

    def __init__(self, path):
        self.path = path

    def has(self, name):
        return (self.path / name).exists()

    def file(self, name):
        return self.path / name


@pytest.mark.parametrize(("report", "task"), [
    # exported on 2026-12-07: every classifier's report said "regress"; its metric was right
    ({"task": "regress", "metric": "top1"}, "classify"),
    ({"task": "regress", "metric": "top1_agreement"}, "classify"),
    ({"task": "regress", "metric": "action_mae"}, "regress"),
    ({"metric": "mae"}, "regress"),                       # before report.json had a task
    ({"task": "classify"}, "classify"),                   # --no-eval: no metric
    ({}, None),
])
def test_run_scores_the_first_output_by_the_reports_metric_before_its_task(tmp_path, report, task):
    from edgerun.cli_run import _task

    (tmp_path / "report.json").write_text(json.dumps(report))
    assert _task(_ReportOnly(tmp_path)) == task
