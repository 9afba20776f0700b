"""Cut points of a DAG: single-tensor cuts exist only where one tensor carries everything."""

import pytest
import torch
import torch.nn as nn

from edgerun.errors import ExportError
from edgerun.exporters.cuts import find_cuts, resolve_cut
from edgerun.exporters.trace import to_onnx


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = torch.relu(self.b(x))
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def chain_model():
    torch.manual_seed(0)
    return to_onnx(Chain().eval(), torch.randn(1, 1, 6, 6))


def test_chain_has_a_cut_between_every_pair_of_ops(chain_model):
    cuts = find_cuts(chain_model)
    non_const = [n for n in chain_model.graph.node if n.op_type != "Constant"]
    # every op but the last has a single-tensor cut after it (minus constant-only nodes)
    assert len(cuts) == len(non_const) - 1
    assert all(len(c.tensors) == 1 for c in cuts)
    assert [c.index for c in cuts] == list(range(len(cuts)))


def test_residual_blocks_have_no_single_tensor_cut_inside(digits_traced):
    labels = [c.label for c in digits_traced.cuts]
    assert "block1" in labels and "block2" in labels and "down" in labels
    # inside a residual block the skip tensor is live next to the main path
    assert not any(lbl.startswith("block1.") for lbl in labels)
    two = find_cuts(digits_traced.model, max_tensors=2)
    inside = [c for c in two if len(c.tensors) == 2]
    assert inside, "with two tensors allowed, cuts inside the residual blocks appear"


def test_front_fraction_grows_with_depth(digits_traced):
    fr = [c.front_fraction for c in digits_traced.cuts]
    assert fr == sorted(fr) and 0 < fr[0] < fr[-1] <= 1


def test_resolve_cut_by_index_label_and_tensor(digits_traced):
    cuts = digits_traced.cuts
    c = resolve_cut(cuts, "block1")
    assert resolve_cut(cuts, str(c.index)) == c
    assert resolve_cut(cuts, c.tensors[0]) == c
    default = resolve_cut(cuts, None)
    assert 0.2 <= default.front_fraction <= 0.6


def test_unknown_cut_lists_the_valid_ones(digits_traced):
    with pytest.raises(ExportError, match="block1"):
        resolve_cut(digits_traced.cuts, "no-such-cut")


def test_labels_are_unique(digits_traced):
    labels = [c.label for c in digits_traced.cuts]
    assert len(labels) == len(set(labels))


def test_without_a_cut_in_the_middle_band_the_default_is_nearest_forty_percent():
    """The fallback took the fewest crossing bytes of all cuts: the last ones (100 % on the device)."""
    from edgerun.exporters.cuts import Cut, resolve_cut

    def cut(i, frac, nbytes):
        return Cut(index=i, label=f"c{i}", tensors=(f"t{i}",), shapes=((1, 4),), crossing_bytes=nbytes,
                   front_macs=int(frac * 1000), back_macs=1000 - int(frac * 1000), after_node=i)

    cuts = [cut(0, 0.05, 4000), cut(1, 0.1, 3000), cut(2, 0.9, 2000), cut(3, 0.999, 40)]
    assert resolve_cut(cuts, None).label == "c1"


ENDS = '''
import torch
from torch import nn


class Flat(nn.Module):  # flattens the raw input first: a cut after that computes nothing on the device
    def __init__(self):
        super().__init__()
        self.flat, self.fc1, self.act, self.fc2 = nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.flat(x))))


class Heads(nn.Module):  # two outputs: "action" is made before "value"
    def __init__(self):
        super().__init__()
        self.a, self.pi, self.v = nn.Linear(6, 16), nn.Linear(16, 3), nn.Linear(3, 1)

    def forward(self, x):
        action = self.pi(torch.relu(self.a(x)))
        return {"action": action, "value": self.v(torch.relu(action))}


def flat():
    return Flat(), torch.randn(1, 1, 8, 8)


def heads():
    return Heads(), torch.randn(1, 6)
'''


@pytest.fixture(scope="module")
def ends(tmp_path_factory):
    from edgerun.exporters.pipeline import trace_model

    path = tmp_path_factory.mktemp("ends") / "ends.py"
    path.write_text(ENDS)
    return {fn: trace_model(f"{path}:{fn}") for fn in ("flat", "heads")}


@pytest.mark.parametrize("spec", ["fc", "logits"])
def test_a_cut_at_the_model_s_output_says_nothing_would_be_left_for_the_server(digits_traced, tmp_path, spec):
    """`--cut fc` (the last layer) or `--cut logits` said only "no valid cut named 'fc'"."""
    from edgerun.exporters.pipeline import ExportConfig, export

    with pytest.raises(ExportError, match=rf"--cut {spec}: that is at the model's output.*leave nothing for the "
                                          r"server\. Choose an earlier cut \(`--list-cuts`; the deepest is 'flatten'\)"
                                          r", or, to run the model whole on the device, split nothing"):
        export(digits_traced, ExportConfig(cut=spec, evaluate=False), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_a_cut_after_one_of_several_outputs_names_it(ends, tmp_path):
    from edgerun.exporters.pipeline import ExportConfig, export

    for spec in ("pi", "action"):
        with pytest.raises(ExportError, match=r"'action' is made before it|that is a model output: it would be "
                                              r"computed on the device, and the server gives every output; choose a "
                                              r"cut before 'action' is made"):
            export(ends["heads"], ExportConfig(cut=spec, evaluate=False), tmp_path / "b")
    with pytest.raises(ExportError, match=r"--cut v: that is at the model's output 'value': .*nothing for the server"):
        export(ends["heads"], ExportConfig(cut="v", evaluate=False), tmp_path / "b")


def test_a_cut_at_the_input_is_no_split_and_a_reshape_of_the_input_is_no_cut(digits_traced, ends, tmp_path):
    """`--cut image` was told it "crosses every cut before the model reads it to the end" (words for an input
    passing through beside another); a model that flattens its input first had a cut after the Flatten
    ("2.6 % of MACs on the device": the raw input sent reshaped), and `--exits auto` put a head there, on the
    raw input."""
    from edgerun.exporters.exits import choose_points
    from edgerun.exporters.pipeline import ExportConfig, export

    with pytest.raises(ExportError, match=r"--cut image: that is at the model's input: the device would compute "
                                          r"nothing and send the raw input, which is all on the server, not a split.*"
                                          r"Choose a later cut \(`--list-cuts`; the first is 'stem\.1'\)"):
        export(digits_traced, ExportConfig(cut="image", evaluate=False), tmp_path / "b")
    flat = ends["flat"]
    assert [c.label for c in flat.cuts] == ["fc1", "act"]
    for spec in ("flat", "input"):
        with pytest.raises(ExportError, match=rf"--cut {spec}: that is at the model's input: the device would compute "
                                              r"nothing.* Choose a later cut \(`--list-cuts`; the first is 'fc1'\)"):
            export(flat, ExportConfig(cut=spec, evaluate=False), tmp_path / "b")
    assert [p.label for p in choose_points(flat.cuts, flat.cuts[0], 3)] == ["fc1"]  # no head on the raw input
    with pytest.raises(ExportError, match=r"no valid cut named '9'\. Valid cuts \(indices 0\.\.1\)"):
        export(flat, ExportConfig(cut=9, evaluate=False), tmp_path / "b")
    assert not (tmp_path / "b").exists()
