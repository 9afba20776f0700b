"""A model with several inputs (a robot policy: a camera image and the joint state) through the export.

The joint state joins the image features deep in the model, so every cut in the vision trunk has it
live: it crosses the cut as it came ("passes through"), the front half neither takes nor gives it,
and it does not count towards --max-cut-tensors. Before, two example inputs were refused and such a
model had to be rewritten to take one concatenated tensor.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import robot_policy
from edgerun.bundle import Bundle
from edgerun.errors import ConfigError, ExportError

POLICY = robot_policy.POLICY + '''

class Star(Policy):
    def forward(self, *xs):
        return super().forward(*xs)


def star():
    torch.manual_seed(0)
    return Star(), (torch.randn(1, 3, 16, 16), torch.randn(1, 5))


def ragged_batch():
    return Policy(), (torch.randn(2, 3, 16, 16), torch.randn(1, 5))
'''


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("policy") / "policy.py"
    path.write_text(POLICY)
    return str(path)


@pytest.fixture(scope="module")
def traced(policy):
    from edgerun.exporters.pipeline import trace_model

    return trace_model(f"{policy}:make")


@pytest.fixture(scope="module")
def bundle(policy, traced, tmp_path_factory) -> Bundle:
    from edgerun.exporters.pipeline import ExportConfig, export

    return export(traced, ExportConfig(cut="vision.1"), tmp_path_factory.mktemp("b") / "policy")


def test_the_inputs_are_named_after_forward_s_arguments_and_share_the_batch(traced):
    ins = traced.model.graph.input
    assert [i.name for i in ins] == ["image", "joints"]
    assert {i.type.tensor_type.shape.dim[0].dim_param for i in ins} == {"batch"}


def test_cuts_in_the_vision_trunk_carry_the_joint_state_through_without_counting_it(traced):
    by_label = {c.label: c for c in traced.cuts}
    assert by_label["vision.1"].tensors == ("joints", "relu")  # one computed tensor: a single-tensor cut
    assert by_label["vision.1"].crossing_bytes == 4 * (5 + 8 * 8 * 8)  # the joint state's bytes count
    assert by_label["cat"].tensors == ("cat",)  # after the inputs meet nothing passes through
    assert all(c.tensors != ("joints",) for c in traced.cuts)  # a cut with nothing computed is no cut


def test_the_front_half_takes_only_the_image_and_the_back_half_the_joint_state_too(bundle):
    front = onnx.load(bundle.path / "front.onnx")
    back = onnx.load(bundle.path / "back.onnx")
    assert [i.name for i in front.graph.input] == ["image"]
    assert [o.name for o in front.graph.output] == ["relu"]
    assert sorted(i.name for i in back.graph.input) == ["joints", "relu"]
    assert [s.name for s in bundle.inputs] == ["image", "joints"]
    assert bundle.passthrough == ["joints"]


def test_the_bundle_keeps_samples_per_input_and_verifies(bundle):
    from edgerun.verify import verify

    x = bundle.samples()
    assert sorted(x) == ["image", "joints"] and len(x["image"]) == len(x["joints"]) == 8
    rep = verify(bundle)
    assert rep.ok, rep.messages
    assert rep.samples == 8 and rep.split_vs_whole_max_abs <= 1e-5


def test_the_split_answers_as_the_torch_model_on_new_inputs(bundle, policy):
    """front (native engine) + the joint state passed through + back (onnxruntime) = the torch model."""
    import runpy

    import torch

    from edgerun.device import _make_front
    from edgerun.engine import make_engine

    module, _ = runpy.run_path(policy)["make"]()
    g = torch.Generator().manual_seed(3)
    image, joints = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 5, generator=g)
    with torch.no_grad():
        want = module.eval()(image, joints).numpy()
    front = _make_front(bundle, "native", 1)
    mid = front.run({"image": image.numpy(), "joints": joints.numpy()})
    mid["joints"] = joints.numpy()
    got = make_engine("ort", onnx_path=bundle.path / "back.onnx").run(mid)[bundle.outputs[0].name]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_int8_fronts_that_read_one_input_or_both_are_calibrated_and_verify(traced, tmp_path):
    """GPTQ and the sensitivity runs feed the front half every input it reads (it was one array)."""
    from edgerun.exporters.pipeline import ExportConfig, export
    from edgerun.verify import verify

    one = export(traced, ExportConfig(cut="vision.1", front_precision="int8"), tmp_path / "one")
    assert one.manifest["precisions"]["front"] == "int8" and one.passthrough == ["joints"]
    both = export(traced, ExportConfig(cut="head.1", front_precision="int8"), tmp_path / "both")
    assert both.passthrough == [] and sorted(onnx.load(both.path / "front.onnx").graph.input[i].name
                                             for i in range(2)) == ["image", "joints"]
    assert set(both.manifest["precisions"]["front_layers"].values()) == {"int8"}
    for b in (one, both):
        rep = verify(b)
        assert rep.ok and rep.quantized, rep.messages


def test_a_codec_codes_the_joint_state_too_and_the_report_counts_its_bytes(traced, tmp_path):
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(traced, ExportConfig(cut="vision.1", codec="tsq"), tmp_path / "tsq")
    assert set(b.manifest["codec"]["params"]) == {"joints", "relu"}
    rep = json.loads((b.path / "report.json").read_text())
    assert rep["bytes_per_request_fp32"] == 4 * (5 + 8 * 8 * 8)
    assert 0 < rep["bytes_per_request"] < rep["bytes_per_request_fp32"]


@pytest.mark.parametrize("fn, message", [
    ("star", r"forward\(\*xs\) cannot be exported with a dynamic batch: name its arguments"),
    ("ragged_batch", r"different batch sizes .* give every input the same first dimension"),
])
def test_inputs_the_export_cannot_take_are_refused_saying_what_to_change(policy, fn, message):
    from edgerun.exporters.pipeline import trace_model

    with pytest.raises(ExportError, match=message):
        trace_model(f"{policy}:{fn}")


def test_run_reads_several_inputs_from_an_npz_by_name_and_says_what_it_needs(bundle, tmp_path):
    from edgerun.cli_run import _load_inputs

    rng = np.random.default_rng(0)
    image, joints = rng.standard_normal((3, 3, 16, 16)), rng.standard_normal((3, 5))
    np.savez(tmp_path / "x.npz", image=image, joints=joints)
    got = _load_inputs(tmp_path / "x.npz", 2, bundle.inputs)
    assert sorted(got) == ["image", "joints"] and got["joints"].dtype == np.float32 and len(got["image"]) == 2
    np.save(tmp_path / "one.npy", image)
    with pytest.raises(ConfigError, match=r"takes 2 inputs \['image', 'joints'\]; pass an .npz file written by "
                                          r"np.savez\(path, image=..., joints=...\)"):
        _load_inputs(tmp_path / "one.npy", None, bundle.inputs)
    np.savez(tmp_path / "short.npz", image=image, joints=joints[:2])
    with pytest.raises(ConfigError, match="different numbers of samples"):
        _load_inputs(tmp_path / "short.npz", None, bundle.inputs)
    np.savez(tmp_path / "wrong.npz", image=image, state=joints)
    with pytest.raises(ConfigError, match=r"not the bundle's inputs \['joints'\]"):
        _load_inputs(tmp_path / "wrong.npz", None, bundle.inputs)


def test_run_refuses_an_npz_whose_inputs_disagree_on_samples_also_with_limit(bundle, tmp_path):
    """With --limit 2, an .npz of 3 images and 2 joint states was cut to 2 of each and run without a word (the
    check compared the counts after --limit): a file whose rows do not pair up was taken as it was."""
    from edgerun.cli_run import _load_inputs

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "short.npz", image=rng.standard_normal((3, 3, 16, 16)), joints=rng.standard_normal((2, 5)))
    with pytest.raises(ConfigError, match=r"different numbers of samples \(\{'image': 3, 'joints': 2\}\)"):
        _load_inputs(tmp_path / "short.npz", 2, bundle.inputs)


def test_run_names_a_0d_array_for_a_vector_input_as_one_sample_without_the_batch_axis(tmp_path):
    """A speed input of shape [batch] saved as np.float32(0.5) was refused as holding "no samples"; it holds one,
    without the batch axis."""
    from edgerun.bundle import TensorSpec
    from edgerun.cli_run import _load_inputs

    specs = [TensorSpec("image", (None, 3, 8, 8), "float32"), TensorSpec("speed", (None,), "float32")]
    np.savez(tmp_path / "x.npz", image=np.zeros((1, 3, 8, 8)), speed=np.float64(0.5))
    with pytest.raises(ConfigError, match=r"\['speed'\] holds one sample of shape \[\] without the batch axis; save "
                                          r"it with np.savez\(path, speed=x\[None\]\) \(shape \[1\]\)"):
        _load_inputs(tmp_path / "x.npz", None, specs)


def test_cut_named_by_an_input_that_passes_through_is_refused_not_the_first_cut_it_crosses(traced):
    """`--cut joints` (the joint state, which crosses every trunk cut as it came) picked the first cut that
    carries it (vision.0) without a word; and the hint for an ambiguous `--cut 2` could name `--cut joints`."""
    from edgerun.exporters.cuts import resolve_cut

    ins = [i.name for i in traced.model.graph.input]
    with pytest.raises(ExportError, match=r"'joints' is a model input: it crosses every cut before the model reads "
                                          r"it to the end, as it came.*`--list-cuts`"):
        resolve_cut(traced.cuts, "joints", inputs=ins)
    assert resolve_cut(traced.cuts, "relu", inputs=ins).label == "vision.1"  # a computed tensor still names its cut


def test_a_cut_over_max_cut_tensors_counts_only_computed_tensors_in_its_advice(policy):
    """The joint state, read early (a gate) and late, passes through the cut `g` beside two computed tensors:
    the refusal said "crosses 3 tensors ... add --max-cut-tensors 3", though 2 is what the cut needs."""
    from edgerun.exporters.pipeline import ExportConfig, _resolve_cut, trace_model

    traced = trace_model(f"{policy}:gated")
    with pytest.raises(ExportError, match=r"cut 'g' crosses 2 tensors \(relu, linear\) besides the inputs passing "
                                          r"through \(joints\), more than "
                                          r"--max-cut-tensors 1 allows: add --max-cut-tensors 2"):
        _resolve_cut(traced, ExportConfig(cut="g"))
    wide = trace_model(f"{policy}:gated", max_cut_tensors=2)
    assert _resolve_cut(wide, ExportConfig(cut="g", max_cut_tensors=2)).tensors == ("joints", "relu", "linear")


def test_an_int8_back_half_is_measured_on_the_samples_too_and_verifies_after_a_clean_export(policy, tmp_path):
    """Static int8 ranges come from 64 calibration draws; a joint state on the samples beyond them was clipped,
    the samples' error was ~20x the calibration one, and `verify` failed right after a clean export. The export
    now measures both, and `verify` bounds the split by the larger."""
    from edgerun.exporters.pipeline import ExportConfig, export
    from edgerun.verify import verify

    b = export(f"{policy}:make", ExportConfig(cut="vision.1", back_precision="int8", evaluate=False), tmp_path / "b")
    prec = b.manifest["precisions"]
    assert prec["back_samples_rel_err"] > 0 and prec["back_calib_rel_err"] > 0
    rep = verify(b)
    assert rep.ok, rep.messages
    assert rep.split_vs_whole_rel_l2 == pytest.approx(prec["back_samples_rel_err"], rel=1e-3)  # the same measure
