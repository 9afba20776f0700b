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
