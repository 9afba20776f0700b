"""A model with several outputs (an actor-critic's action scores and value; a detector's boxes and scores).

forward() may return a dict of tensors (the outputs take its keys) or a tuple (``output_0``, ...). They
were refused ("edgerun expects one output tensor"). The back half gives them all, the reply carries them
all, `verify` checks each against its own scale, and the export's metric names the output it is taken on
(the first).
"""

from __future__ import annotations

import json

import pytest

from edgerun.errors import ExportError

MODELS = '''
import torch
from torch import nn


class Trunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 16)
        self.pi, self.v = nn.Linear(16, 3), nn.Linear(16, 1)

    def h(self, x):
        return torch.relu(self.b(torch.relu(self.a(x))))


class ByName(Trunk):
    def forward(self, x):
        h = self.h(x)
        return {"action": self.pi(h), "value": self.v(h)}


class ByPosition(Trunk):
    def forward(self, x):
        h = self.h(x)
        return self.pi(h), self.v(h)


class Nested(Trunk):
    def forward(self, x):
        h = self.h(x)
        return self.pi(h), [self.v(h)]


class Unbatched(Trunk):
    def forward(self, x):
        h = self.h(x)
        return self.pi(h), self.v(h).mean()


class InternalNames(Trunk):
    def forward(self, x):
        h = self.h(x)
        return {"relu": self.pi(h), "linear": h.sum(-1, keepdim=True)}


def internal_names():
    torch.manual_seed(0)
    return InternalNames(), torch.randn(1, 6)


class Single(Trunk):
    def forward(self, x):
        return self.pi(self.h(x))


def single():
    torch.manual_seed(0)
    return Single(), torch.randn(1, 6)


def by_name():
    torch.manual_seed(0)
    return ByName(), torch.randn(1, 6)


def by_position():
    torch.manual_seed(0)
    return ByPosition(), torch.randn(1, 6)


def nested():
    return Nested(), torch.randn(1, 6)


def unbatched():
    return Unbatched(), torch.randn(1, 6)
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("multi_out") / "heads.py"
    path.write_text(MODELS)
    return str(path)


def test_a_dict_names_the_outputs_and_a_tuple_numbers_them(models):
    from edgerun.exporters.pipeline import trace_model

    assert [o.name for o in trace_model(f"{models}:by_name").model.graph.output] == ["action", "value"]
    assert [o.name for o in trace_model(f"{models}:by_position").model.graph.output] == ["output_0", "output_1"]


@pytest.mark.parametrize("fn, message", [
    ("nested", r"forward\(\) returned a tuple whose element 1 is list \(nested: flatten it\), not a tensor; return a "
               r"tensor, a flat tuple of tensors, or a dict of tensors by name"),
    ("unbatched", r"did not give two answers \(gave shapes \(2, 3\), \(\)\).*keep it in every output"),
])
def test_outputs_the_export_cannot_carry_are_refused_saying_what_to_return(models, fn, message):
    from edgerun.exporters.pipeline import trace_model

    with pytest.raises(ExportError, match=message):
        trace_model(f"{models}:{fn}")


def test_the_bundle_gives_every_output_and_verify_checks_each_on_its_own_scale(models, tmp_path):
    from edgerun.exporters.pipeline import ExportConfig, export
    from edgerun.verify import verify

    b = export(f"{models}:by_name", ExportConfig(), tmp_path / "b")
    assert [s.name for s in b.outputs] == ["action", "value"]
    rep = json.loads((b.path / "report.json").read_text())
    assert rep["metric_output"] == "action" and rep["metric"] == "top1_agreement"
    v = verify(b)
    assert v.ok, v.messages


def test_dict_keys_named_like_internal_tensors_keep_the_graph_whole_and_answer_as_torch(models, tmp_path):
    """Keys "relu" and "linear" are also the names torch gives the model's own ReLU and Linear outputs: the traced
    graph had two tensors named "relu" (and two "linear"), so no cut was found ("this model has no valid cut
    point") and the graph did not compute the model."""
    import runpy

    import numpy as np
    import onnx
    import torch

    from edgerun.exporters.evaluate import session
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model

    traced = trace_model(f"{models}:internal_names")
    g = traced.model.graph
    made = [t for n in g.node for t in n.output]
    assert len(made) == len(set(made)), "a tensor name is produced twice"
    assert [o.name for o in g.output] == ["relu", "linear"] and traced.cuts
    b = export(traced, ExportConfig(evaluate=False), tmp_path / "b")
    onnx.checker.check_model(onnx.load(b.path / "whole.onnx"), full_check=True)
    module, _ = runpy.run_path(models)["internal_names"]()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = module.eval()(x)
    got = session(b.path / "whole.onnx").run(None, {"input": x.numpy()})
    for k, v in zip(["relu", "linear"], got):
        np.testing.assert_allclose(v, want[k].numpy(), rtol=1e-5, atol=1e-5)


def test_each_output_gets_its_own_error_figure_in_the_report_and_the_summary(models, tmp_path):
    """The metric is taken on the first output; an int8 front costs the value head too, and that cost was in
    no figure but the all-outputs max. report.json `per_output` gives each output's error against the whole
    fp32 model (and top-1 agreement where an output has several values), and the export summary prints it."""
    from edgerun.exporters.pipeline import ExportConfig, export
    from edgerun.report import export_summary

    b = export(f"{models}:by_name", ExportConfig(front_precision="int8"), tmp_path / "b")
    rep = json.loads((b.path / "report.json").read_text())
    per = rep["per_output"]
    assert list(per) == ["action", "value"]
    assert "top1_agreement" in per["action"] and "top1_agreement" not in per["value"]  # one value: no argmax
    assert 0 < per["value"]["mean_abs"] <= per["value"]["max_abs"] <= rep["split_vs_whole_max_abs"]
    assert max(e["max_abs"] for e in per.values()) == rep["split_vs_whole_max_abs"]
    text = export_summary(b, rep)
    assert "output   value: mean |split - whole|" in text and "output   action:" in text


def test_a_continuous_output_without_labels_also_gets_its_error_in_the_summary(models, tmp_path):
    """One output of 3 continuous values and no labels: the metric is top-1 agreement with the whole model,
    which says little of a regression; the summary adds the output's mean error (report.json has it for every
    model)."""
    from edgerun.exporters.pipeline import ExportConfig, export
    from edgerun.report import export_summary

    b = export(f"{models}:single", ExportConfig(front_precision="int8"), tmp_path / "b")
    rep = json.loads((b.path / "report.json").read_text())
    assert rep["metric"] == "top1_agreement" and list(rep["per_output"]) == ["logits"]
    assert "output   logits: mean |split - whole|" in export_summary(b, rep)
