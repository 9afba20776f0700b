"""Early exits on a model with several inputs: a robot policy's camera image and joint state.

The joint state joins the image features after the vision trunk, so it passes through every exit point and
the cut. Each exit head reads the pooled point tensor AND the joints (a policy's head must see the joints to
choose an action); the segments take the model inputs they read by name; the device sends the joints to the
server beside the front's tensor when no exit answers. Before, `--exits` refused such a model ("early exits
need a cut that one tensor crosses").
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import robot_policy
from edgerun.bundle import Bundle
from edgerun.errors import ExportError

HEAD_ATOL = 1e-4        # native engine vs onnxruntime on the same fp32 segment
JOINTS_MOVE = 1e-3      # a head that reads the joints moves by more than this when only the joints change
N_SAMPLES = 320

MODELS = robot_policy.POLICY + '''

class Residual(nn.Module):
    """A skip connection over the second conv: a cut there is crossed by two computed tensors."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.head = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1), nn.Linear(8 + 5, 4)

    def forward(self, image, joints):
        h = torch.relu(self.c1(image))
        h = torch.relu(self.c2(h)) + h
        return self.head(torch.cat([h.mean(dim=(2, 3)), joints], dim=1))


class Depth(nn.Module):
    """A second image (depth) only the back half reads: it passes through every cut in the camera trunk."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 2, 1)
        self.d, self.head = nn.Conv2d(1, 4, 3, 2, 1), nn.Linear(16 + 4, 4)

    def forward(self, image, depth):
        f = torch.relu(self.c2(torch.relu(self.c1(image)))).mean(dim=(2, 3))
        return self.head(torch.cat([f, torch.relu(self.d(depth)).mean(dim=(2, 3))], dim=1))


def depth():
    torch.manual_seed(0)
    return Depth(), (torch.randn(1, 3, 16, 16), torch.randn(1, 1, 16, 16))


class Scan(nn.Module):
    """A lidar scan of 5000 ranges only the back half reads."""

    def __init__(self):
        super().__init__()
        self.c1, self.head = nn.Conv2d(3, 8, 3, 2, 1), nn.Linear(8 + 5000, 4)

    def forward(self, image, scan):
        return self.head(torch.cat([torch.relu(self.c1(image)).mean(dim=(2, 3)), scan], dim=1))


def scan():
    torch.manual_seed(0)
    return Scan(), (torch.randn(1, 3, 16, 16), torch.randn(1, 5000))


def residual():
    torch.manual_seed(0)
    return Residual(), (torch.randn(1, 3, 16, 16), torch.randn(1, 5))
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("policy")
    (d / "policy.py").write_text(MODELS)
    rng = np.random.default_rng(0)
    np.savez(d / "samples.npz", **{"inputs.image": rng.standard_normal((N_SAMPLES, 3, 16, 16)).astype(np.float32),
                                   "inputs.joints": rng.standard_normal((N_SAMPLES, 5)).astype(np.float32)})
    return d


@pytest.fixture(scope="module")
def policy(files, tmp_path_factory) -> Bundle:
    from edgerun.exporters.pipeline import ExportConfig, export

    return export(f"{files}/policy.py:make", ExportConfig(cut="vision.3", exits="auto", data=files / "samples.npz"),
                  tmp_path_factory.mktemp("b") / "policy")


def _ort(bundle: Bundle, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle.file(name)), providers=["CPUExecutionProvider"])


def _heads_in_ort(bundle: Bundle, image: np.ndarray, joints: np.ndarray) -> list[np.ndarray]:
    """Every exit head's output, the segments chained in onnxruntime straight from their ONNX files."""
    heads, cur = [], None
    for p in bundle.manifest["exits"]["points"]:
        s = _ort(bundle, p["onnx"])
        feeds = {"image": image, "joints": joints}
        run = {i.name: (cur if i.name == p["input"] and p["index"] > 0 else feeds[i.name]) for i in s.get_inputs()}
        cur, head = s.run([p["tensor"], p["head"]], run)
        heads.append(head)
    return heads


def test_every_head_reads_the_joints_that_pass_through(policy):
    pts = policy.manifest["exits"]["points"]
    assert [p["label"] for p in pts] == ["vision.0", "vision.1", "vision.3"]
    assert all(p["head_inputs"] == ["joints"] for p in pts)
    assert pts[0]["model_inputs"] == ["image", "joints"]  # segment 0 reads the image; its head the joints
    assert all(p["model_inputs"] == ["joints"] for p in pts[1:])
    assert policy.manifest["exits"]["cut_tensors"] == ["joints", "relu_1"]


def test_an_exit_answer_changes_when_only_the_joints_change(policy):
    rng = np.random.default_rng(1)
    image = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    j1, j2 = rng.standard_normal((2, 4, 5)).astype(np.float32)
    for a, b in zip(_heads_in_ort(policy, image, j1), _heads_in_ort(policy, image, j2)):
        assert np.abs(a - b).max() > JOINTS_MOVE


def test_the_native_segments_compute_what_onnxruntime_does(policy):
    from edgerun.exits import Segments

    assert all(p["erg"] for p in policy.manifest["exits"]["points"])
    rng = np.random.default_rng(2)
    x = {"image": rng.standard_normal((6, 3, 16, 16)).astype(np.float32),
         "joints": rng.standard_normal((6, 5)).astype(np.float32)}
    native = Segments(policy, "native").run_all(x, batch=3)
    want = _heads_in_ort(policy, x["image"], x["joints"])
    for got, ref in zip(native, want):
        np.testing.assert_allclose(got, ref, atol=HEAD_ATOL)


def test_without_a_confident_exit_the_cut_carries_the_joints_to_the_server(policy):
    from edgerun.exits import ExitController

    rng = np.random.default_rng(3)
    x = {"image": rng.standard_normal((2, 3, 16, 16)).astype(np.float32),
         "joints": rng.standard_normal((2, 5)).astype(np.float32)}
    step = ExitController(policy, engine="native", budget="off").run(x)
    assert step.exited is None and sorted(step.cut) == sorted(s.name for s in policy.cut)
    np.testing.assert_array_equal(step.cut["joints"], x["joints"])
    back = _ort(policy, "back.onnx")
    whole = _ort(policy, "whole.onnx")
    got = back.run(None, {i.name: step.cut[i.name] for i in back.get_inputs()})[0]
    np.testing.assert_allclose(got, whole.run(None, x)[0], atol=HEAD_ATOL)


def test_the_report_measures_the_exits_on_the_held_out_samples(policy):
    import json

    rep = json.loads(policy.file("report.json").read_text())["exits"]
    # half the samples calibrate; with --exits half of the rest train the heads too; the others are held out
    assert rep["metric"] == "top1_agreement" and rep["n_test"] == N_SAMPLES - N_SAMPLES // 2 - N_SAMPLES // 4
    assert rep["metric_no_exits"] == 1.0 and set(rep["budgets"]) == {"fast", "balanced", "accurate"}


def test_a_front_that_reads_the_joints_part_way_gives_them_to_its_segment(files, tmp_path):
    from edgerun.exits import Segments
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(f"{files}/policy.py:gated", ExportConfig(cut="relu_1", exits=2, data=files / "samples.npz"),
               tmp_path / "gated")
    pts = b.manifest["exits"]["points"]
    assert [p["label"] for p in pts] == ["c1", "relu_1"] and all(p["head_inputs"] == ["joints"] for p in pts)
    # Segment 1 (c1 -> relu_1) gates the image features with the joints: its backbone reads them, not only its head.
    seg1 = onnx.load(b.file(pts[1]["onnx"]))
    readers = [n.name for n in seg1.graph.node if "joints" in n.input]
    assert pts[1]["model_inputs"] == ["joints"] and any(not r.startswith("exit1_") for r in readers), readers
    rng = np.random.default_rng(4)
    x = {"image": rng.standard_normal((3, 3, 16, 16)).astype(np.float32),
         "joints": rng.standard_normal((3, 5)).astype(np.float32)}
    engine = "native" if pts[0]["erg"] else "ort"
    for got, ref in zip(Segments(b, engine).run_all(x), _heads_in_ort(b, x["image"], x["joints"])):
        np.testing.assert_allclose(got, ref, atol=HEAD_ATOL)


def test_a_cut_that_two_computed_tensors_cross_is_still_refused(files, tmp_path):
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model

    traced = trace_model(f"{files}/policy.py:residual", max_cut_tensors=2)
    skip = next(c for c in traced.cuts if len([t for t in c.tensors if t not in ("image", "joints")]) == 2)
    with pytest.raises(ExportError, match=r"early exits need a cut that one tensor crosses \(model inputs may pass "
                                          r"through beside it\); .* crosses .*, all computed by the front \(a skip "
                                          r"connection\): choose a cut with one"):
        export(traced, ExportConfig(cut=skip.label, max_cut_tensors=2, exits="auto", data=files / "samples.npz"),
               tmp_path / "b")


def test_an_image_passing_through_is_pooled_for_the_heads_and_a_huge_input_refused(files, tmp_path):
    """A second camera only the back half reads crosses every cut: the heads pool it to <= 4x4 like a point
    tensor (a flattened 96x96 image would have made each head's first Gemm ~300k weights)."""
    from edgerun.exits import Segments
    from edgerun.exporters.pipeline import ExportConfig, export

    rng = np.random.default_rng(5)
    np.savez(tmp_path / "d.npz", **{"inputs.image": rng.standard_normal((64, 3, 16, 16)).astype(np.float32),
                                    "inputs.depth": rng.standard_normal((64, 1, 16, 16)).astype(np.float32)})
    b = export(f"{files}/policy.py:depth", ExportConfig(cut="relu_1", exits=2, data=tmp_path / "d.npz"), tmp_path / "b")
    pts = b.manifest["exits"]["points"]
    assert all(p["head_inputs"] == ["depth"] for p in pts)
    seg = onnx.load(b.file(pts[0]["onnx"]))
    w1 = next(i for i in seg.graph.initializer if i.name == "exit0_w1")
    assert w1.dims[1] == 8 * 4 * 4 + 1 * 4 * 4  # conv1's 8 channels and depth's 1, each pooled to 4x4
    x = {"image": rng.standard_normal((2, 3, 16, 16)).astype(np.float32),
         "depth": rng.standard_normal((2, 1, 16, 16)).astype(np.float32)}
    engine = "native" if pts[0]["erg"] else "ort"
    got = Segments(b, engine).run_all(x)
    sess = [_ort(b, p["onnx"]) for p in pts]
    cur, want0 = sess[0].run([pts[0]["tensor"], pts[0]["head"]], {"image": x["image"], "depth": x["depth"]})
    np.testing.assert_allclose(got[0], want0, atol=HEAD_ATOL)

    np.savez(tmp_path / "scan.npz", **{"inputs.image": rng.standard_normal((16, 3, 16, 16)).astype(np.float32),
                                       "inputs.scan": rng.standard_normal((16, 5000)).astype(np.float32)})
    with pytest.raises(ExportError, match=r"the model input 'scan' passes through the exit point relu with 5000 values "
                                          r"per sample \(shape \[5000\]\), over the 4096 an exit head reads beside its "
                                          r"point tensor: choose a cut after the model reads it"):
        export(f"{files}/policy.py:scan", ExportConfig(cut="relu", exits=1, data=tmp_path / "scan.npz"),
               tmp_path / "scan")
