"""A model file measured on the user's own data: `edgerun export model.py:make --data samples.npz`.

Without --data a model file was calibrated (int8 ranges, GPTQ, the codec's budget) and measured on its
example plus Gaussian noise, the report's accuracy said nothing about real inputs, and --exits was
refused (no inputs to train the heads on). With it, a seeded split of the user's samples calibrates and
another, disjoint part is held out for the report, with labels when the file has them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgerun.errors import ConfigError, ExportError

MODEL = '''
import numpy as np
import torch
from torch import nn


def digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def make():
    torch.manual_seed(0)
    x, y = digits()
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                      nn.Linear(32, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x[:1000]), torch.from_numpy(y[:1000])
    for _ in range(120):
        opt.zero_grad()
        nn.functional.cross_entropy(m(xt), yt).backward()
        opt.step()
    return m.eval(), torch.from_numpy(x[:1])


class TwoIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(16 + 3, 2)

    def forward(self, x, z):
        return self.b(torch.cat([torch.relu(self.a(x)), z], 1))


def two_in():
    torch.manual_seed(0)
    return TwoIn(), (torch.randn(1, 6), torch.randn(1, 3))


class Skip(nn.Module):  # the input is read again at the end: every cut carries it through
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.skip = nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 10), nn.Linear(64, 10)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x))))) + self.skip(x)


def skip():
    torch.manual_seed(0)
    return Skip(), torch.randn(1, 64)


def seg(channels_last=False):  # a segmentation: class scores per pixel, [N, 4, 8, 8]
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    return (PixelsLast(m) if channels_last else m), torch.randn(1, 3, 8, 8)


class PixelsLast(nn.Module):  # the same scores as [N, 8, 8, 4]
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x).permute(0, 2, 3, 1)


def seg_last():
    return seg(channels_last=True)


def reg():  # three continuous values per sample: a regression
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).eval(), \
        torch.rand(1, 64)
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import runpy

    d = tmp_path_factory.mktemp("user_data")
    (d / "model.py").write_text(MODEL)
    x, y = runpy.run_path(str(d / "model.py"))["digits"]()
    np.savez(d / "digits.npz", inputs=x[1000:], labels=y[1000:])  # never seen in training
    return d


def test_the_report_is_measured_on_the_held_out_samples_with_their_labels(files, tmp_path):
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(f"{files}/model.py:make", ExportConfig(front_precision="int8", data=files / "digits.npz"),
               tmp_path / "b")
    rep = json.loads((b.path / "report.json").read_text())
    n = 1797 - 1000
    assert rep["metric"] == "top1" and rep["n_eval"] == n - min(256, n // 2)  # the rest calibrated
    assert "held-out samples of digits.npz (--data)" in rep["eval_inputs"]
    assert rep["metric_whole_fp32"] > 0.8  # real accuracy on real digits, not agreement on noise
    assert abs(rep["metric_whole_fp32"] - rep["metric_split"]) <= 0.02
    samples = b.samples()  # verify runs on real held-out digits too
    assert samples.shape == (8, 64) and samples.max() <= 1.0


def test_calibration_and_evaluation_samples_never_overlap(files):
    from edgerun.exporters.pipeline import trace_model

    data = trace_model(f"{files}/model.py:make", data=files / "digits.npz").source.zoo
    calib, (held, _) = data.calib_data(10_000), data.eval_data()
    rows = {r.tobytes() for r in calib}
    assert len(calib) + len(held) == 797 and not any(r.tobytes() in rows for r in held)


def test_with_exits_more_samples_train_the_heads_and_none_of_them_is_held_out(files):
    """The heads trained on the calibration samples only (at most 256, 192 after the thresholds' share): a
    two-input pendulum policy's deepest head was 0.15 N·m off its whole model, 0.02 with 4000 samples."""
    from edgerun.exporters.pipeline import trace_model
    from edgerun.exporters.user_data import UserData

    src = trace_model(f"{files}/model.py:make").source
    plain = UserData(files / "digits.npz", src.input_names, [src.example_inputs()])
    both = UserData(files / "digits.npz", src.input_names, [src.example_inputs()], exits=True)
    assert (plain.n_calib, plain.n_exit_train, plain.n_eval) == (256, 0, 541)
    assert (both.n_calib, both.n_exit_train, both.n_eval) == (256, 270, 271)
    np.testing.assert_array_equal(both.eval_data()[0], plain.eval_data()[0][270:])  # a subset, same order
    data = both.exit_data()
    train = {r.tobytes() for r in data["x_train"]}
    assert len(train) == 256 + 270 and not any(r.tobytes() in train for r in data["x_test"])
    assert plain.exit_data()["x_train"].shape[0] == 256


def test_exits_of_a_model_file_train_on_its_data(files, tmp_path):
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(f"{files}/model.py:make", ExportConfig(cut=2, exits="auto", data=files / "digits.npz"),
               tmp_path / "exits")
    assert b.manifest["exits"]["points"]
    with pytest.raises(ExportError, match=r"early exits need training inputs .* give the model file's samples with "
                                          r"--data samples.npz"):
        export(f"{files}/model.py:make", ExportConfig(cut=2, exits="auto"), tmp_path / "no-data")


def test_exits_at_a_cut_that_the_input_passes_through_read_it_beside_the_cut(files, tmp_path):
    """The exit segments chained one tensor: at a cut crossed by the input too, the heads were trained on the
    input itself (the cut's first tensor) and a device with the exits off died on a KeyError; then such a cut
    was refused. Now each head reads its point's tensor and the input passing through, and the device sends
    the input beside the cut tensor."""
    from edgerun.exits import ExitController
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(f"{files}/model.py:skip", ExportConfig(cut=1, exits="auto", data=files / "digits.npz"), tmp_path / "b")
    pts = b.manifest["exits"]["points"]
    assert all(p["head_inputs"] == ["input"] for p in pts) and pts[-1]["tensor"] != "input"
    x = b.samples()[:2]
    step = ExitController(b, engine="ort", budget="off").run(x)
    assert sorted(step.cut) == sorted(s.name for s in b.cut)
    np.testing.assert_array_equal(step.cut["input"], x)


def test_several_inputs_read_their_own_arrays_and_without_labels_agreement_is_the_metric(files, tmp_path):
    from edgerun.exporters.pipeline import ExportConfig, export

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "two.npz", **{"inputs.x": rng.standard_normal((40, 6)), "inputs.z": rng.standard_normal((40, 3))})
    b = export(f"{files}/model.py:two_in", ExportConfig(data=tmp_path / "two.npz"), tmp_path / "b")
    rep = json.loads((b.path / "report.json").read_text())
    assert rep["metric"] == "top1_agreement" and rep["n_eval"] == 20 and "(--data)" in rep["eval_inputs"]


def test_float_targets_are_scored_by_mean_absolute_error(files, tmp_path):
    from edgerun.exporters.pipeline import ExportConfig, export

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "reg.npz", **{"inputs.x": rng.standard_normal((40, 6)), "inputs.z": rng.standard_normal((40, 3)),
                                      "labels": rng.standard_normal((40, 2)).astype(np.float32)})
    b = export(f"{files}/model.py:two_in", ExportConfig(data=tmp_path / "reg.npz"), tmp_path / "b")
    rep = json.loads((b.path / "report.json").read_text())
    assert rep["metric"] == "mae" and rep["metric_whole_fp32"] > 0.1 and rep["mae_vs_whole"] < 1e-5


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((20, 64))}, r"has arrays \['x'\], not \['inputs.input'\]; save it with np.savez"),
    ({"inputs": np.zeros((20, 8, 8))}, r"samples of shape \[8, 8\], but the model's example has \[64\]"),
    ({"inputs": np.zeros((5, 64))}, r"holds 5 samples: give at least 8"),
    ({"inputs": np.zeros((20, 64)), "labels": np.zeros(19, np.int64)}, r"19 labels for 20 samples"),
    ({"inputs": np.full((20, 64), np.nan)}, r"inputs sample 0 holds NaN"),
    ({"inputs": np.zeros((20, 64)), "labels": np.zeros((20, 3), np.int64)}, r"labels of shape \[.*, 3\] do not fit"),
])
def test_a_data_file_that_does_not_fit_the_model_says_what_to_save(files, tmp_path, arrays, message):
    from edgerun.exporters.pipeline import ExportConfig, export

    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match=message):
        export(f"{files}/model.py:make", ExportConfig(data=tmp_path / "bad.npz"), tmp_path / "b")


def test_a_zoo_model_brings_its_own_data(tmp_path):
    from edgerun.exporters.pipeline import trace_model

    np.savez(tmp_path / "d.npz", inputs=np.zeros((20, 1, 8, 8)))
    with pytest.raises(ConfigError, match=r"--data is for a model file; zoo:digits-cnn comes with its own data"):
        trace_model("zoo:digits-cnn", data=tmp_path / "d.npz")


def _user_data(path, names=("input",), shapes=((64,),)):
    from edgerun.exporters.user_data import UserData

    return UserData(path, list(names), [np.zeros((1, *s), np.float32) for s in shapes])


def test_an_npy_of_inputs_is_read_for_a_one_input_model(tmp_path):
    """An .npy (what `edgerun run --input` takes) died on "TypeError: 'numpy.ndarray' object does not support the
    context manager protocol" with a traceback; it is the inputs of a one-input model now."""
    x = np.random.default_rng(0).random((20, 64), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    data = _user_data(tmp_path / "x.npy")
    assert (data.n_calib, data.n_eval, data.metric) == (10, 10, "top1_agreement")
    with pytest.raises(ConfigError, match=r"holds one array, and the model takes 2 inputs; save it with np.savez"):
        _user_data(tmp_path / "x.npy", ("x", "z"), ((64,), (3,)))


def test_one_hot_labels_are_refused_saying_to_save_class_ids(tmp_path):
    """Float one-hot labels made a classifier's report "metric mae: whole 0.21" (its logits against 0 / 1), and
    integer ones were refused with "labels of shape [100, 10] do not fit the model's output [100, 10]"."""
    y = np.eye(10)[np.arange(20) % 10]
    for labels in (y, y.astype(np.int64)):
        np.savez(tmp_path / "d.npz", inputs=np.zeros((20, 64)), labels=labels)
        with pytest.raises(ConfigError, match=r"labels of shape \[20, 10\] look one-hot .* labels=y.argmax\(1\)"):
            _user_data(tmp_path / "d.npz")


def test_integer_labels_are_class_ids_as_a_vector_or_a_column_and_targets_otherwise(tmp_path):
    """Integer targets shaped like a regression output ([N, 3] counts) were read as class ids and refused with
    "labels of shape [100, 3] do not fit the model's output [100, 3]"; class ids saved as a column [N, 1] too."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "col.npz", inputs=np.zeros((20, 64)), labels=rng.integers(0, 10, (20, 1)))
    col = _user_data(tmp_path / "col.npz")
    assert col.metric == "top1" and col.eval_data()[1].shape == (10,)
    np.savez(tmp_path / "counts.npz", inputs=np.zeros((20, 64)), labels=rng.integers(0, 5, (20, 3)))
    assert _user_data(tmp_path / "counts.npz").metric == "mae"


def test_integer_targets_of_a_regression_model_are_scored_by_mean_absolute_error(files, tmp_path):
    from edgerun.exporters.pipeline import ExportConfig, export

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "reg.npz", **{"inputs.x": rng.standard_normal((40, 6)), "inputs.z": rng.standard_normal((40, 3)),
                                      "labels": rng.integers(0, 3, (40, 2))})
    b = export(f"{files}/model.py:two_in", ExportConfig(data=tmp_path / "reg.npz", cut=0), tmp_path / "b")
    assert json.loads((b.path / "report.json").read_text())["metric"] == "mae"


def test_a_large_file_is_converted_once_and_its_other_arrays_are_not_read(tmp_path):
    """uint8 images were read whole, with every other array of the file, converted to one float32 copy of
    all samples, then copied again into the calibration and held-out parts: 1.9 GB of peak memory for
    240 MB of images. Now each part is converted from the stored samples, a chunk at a time."""
    import tracemalloc

    x = np.random.default_rng(0).integers(0, 256, (3000, 3, 32, 32), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", inputs=x, unrelated=np.zeros((3000, 3, 32, 32)))
    tracemalloc.start()
    try:
        data = _user_data(tmp_path / "img.npz", shapes=((3, 32, 32),))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data.n_calib + data.n_eval == 3000
    assert peak < x.nbytes + 4 * x.nbytes + 2 * x.nbytes  # the stored samples + their float32 parts (+ slack)


def test_a_nan_is_named_by_its_index_in_the_file(tmp_path):
    x = np.zeros((30, 64))
    x[17, 3] = np.inf
    np.savez(tmp_path / "d.npz", inputs=x)
    with pytest.raises(ConfigError, match=r"inputs sample 17 holds NaN, Inf"):
        _user_data(tmp_path / "d.npz")


def test_plan_on_a_two_input_model_files_data_plans_without_crashing(files, tmp_path):
    """`edgerun plan two_in.py:make --data two.npz` (and export --device/--server/--link) died on "TypeError: float()
    argument must be a string or a real number, not 'dict'": the planner's loss meter took one input array. Its
    lossy candidates are not measured for several inputs; the plan says so."""
    from edgerun.exporters.pipeline import trace_model
    from edgerun.exporters.planner import plan

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "two.npz", **{"inputs.x": rng.standard_normal((40, 6)), "inputs.z": rng.standard_normal((40, 3))})
    p = plan(trace_model(f"{files}/model.py:two_in", data=tmp_path / "two.npz"), "rpi4", "gpu-a100", "wifi")
    assert p.chosen is not None and {c.front_precision for c in p.candidates} == {"fp32"}
    assert any("several inputs" in n for n in p.notes)


def test_the_planner_scores_float_targets_of_a_data_file_as_a_regression(files, tmp_path):
    """With float targets (metric mae) for a model of three outputs per sample, the planner measured a lossy
    candidate's loss as top-1 disagreement of the argmax of three continuous values."""
    from edgerun.exporters.pipeline import trace_model
    from edgerun.exporters.planner_loss import LossMeter

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "reg.npz", inputs=rng.random((40, 64)), labels=rng.random((40, 3)))
    traced = trace_model(f"{files}/model.py:reg", data=tmp_path / "reg.npz")
    assert LossMeter(traced, traced.source.zoo.calib_data(16)).regression


def test_labels_that_do_not_fit_the_output_fail_at_the_trace_not_after_the_export(files, tmp_path):
    """The mismatch was found by the evaluation at the very end of the export (minutes for a big model)."""
    from edgerun.exporters.pipeline import trace_model

    np.savez(tmp_path / "bad.npz", inputs=np.zeros((20, 64)), labels=np.zeros((20, 3), np.int64))
    with pytest.raises(ConfigError, match=r"labels of shape \[N, 3\] do not fit the model's output \[N, 10\]"):
        trace_model(f"{files}/model.py:make", data=tmp_path / "bad.npz")


def test_samples_far_off_the_examples_range_get_a_note(files, tmp_path, capsys):
    """uint8 images (0..255) for a model whose example is 0..1 were taken without a word, and everything was
    calibrated and measured on inputs the model never sees."""
    from edgerun.exporters.pipeline import trace_model

    np.savez(tmp_path / "raw.npz", inputs=np.full((20, 64), 255, np.uint8))
    trace_model(f"{files}/model.py:make", data=tmp_path / "raw.npz")
    assert "input 'input' reaches |255|, its example |0.9375|: is the data preprocessed" in capsys.readouterr().err
    trace_model(f"{files}/model.py:make", data=files / "digits.npz")
    assert "preprocessed" not in capsys.readouterr().err


@pytest.mark.parametrize("labels, message", [
    # scored as always wrong for class 10: "top1: whole 0.2000" for a model right on most samples, no word said
    (np.where(np.arange(20) % 2, 10, 1), r"labels hold class ids 1\.\.10, but the model's first output scores "
                                          r"10 classes \(ids 0\.\.9\): 1-based\? save labels=y - 1"),
    (np.where(np.arange(20) % 2, 11, 0), r"class ids 0\.\.11, but the model's first output scores 10 classes "
                                          r"\(ids 0\.\.9\): give the index of each sample's class"),
    (np.where(np.arange(20) % 2, 8, -1), r"class ids -1\.\.8"),
    # class ids saved as floats: "labels of shape [N, ] do not fit the model's output [N, 10]"
    ((np.arange(20) % 10).astype(np.float32), r"labels of shape \[N\] do not fit the model's output \[N, 10\] .*"
                                              r"class ids saved as floats: save them as integers"),
])
def test_class_ids_the_output_has_no_score_for_are_refused_at_the_trace(files, tmp_path, labels, message):
    from edgerun.exporters.pipeline import trace_model

    np.savez(tmp_path / "ids.npz", inputs=np.zeros((20, 64)), labels=labels)
    with pytest.raises(ConfigError, match=message):
        trace_model(f"{files}/model.py:make", data=tmp_path / "ids.npz")


def test_task_regress_with_class_id_labels_is_refused_before_the_export(files, tmp_path):
    """--task regress with class ids [N] for an output [N, 10] ended the whole export with a ValueError traceback
    ("cannot reshape array of size 50 into shape (50,10)") from the evaluation; the trace checked the labels as
    class ids, not as the targets --task said they were."""
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model

    np.savez(tmp_path / "ids.npz", inputs=np.zeros((20, 64)), labels=np.arange(20) % 10)
    match = r"labels of shape \[N\] do not fit the model's output \[N, 10\] .*--task regress scores them as targets"
    with pytest.raises(ConfigError, match=match):
        trace_model(f"{files}/model.py:make", data=tmp_path / "ids.npz", task="regress")
    with pytest.raises(ConfigError, match=match):
        export(f"{files}/model.py:make", ExportConfig(data=tmp_path / "ids.npz", task="regress"), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_class_ids_per_pixel_are_scored_by_top1_and_scores_on_axis_1_are_told_to_move(files, tmp_path):
    """Integer labels [N, H, W] were read as regression targets: refused against scores [N, H, W, C] ("give targets
    shaped like it, or integer class ids [N]"), and against a segmentation's [N, C, H, W] with the same words."""
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "px.npz", inputs=rng.standard_normal((24, 3, 8, 8)), labels=rng.integers(0, 4, (24, 8, 8)))
    with pytest.raises(ConfigError, match=r"labels of shape \[N, 8, 8\] do not fit the model's output "
                                          r"\[N, 4, 8, 8\] .*class ids per position, with the output's class scores "
                                          r"on axis 1.*return out\.permute\(0, 2, 3, 1\) from forward\(\) "
                                          r"\(shape \[N, 8, 8, 4\]\)"):
        trace_model(f"{files}/model.py:seg", data=tmp_path / "px.npz")
    b = export(f"{files}/model.py:seg_last", ExportConfig(data=tmp_path / "px.npz"), tmp_path / "b")
    rep = json.loads((b.path / "report.json").read_text())
    assert rep["metric"] == "top1" and rep["task"] == "classify" and 0 < rep["metric_whole_fp32"] < 1


@pytest.mark.parametrize("labelled", [True, False])
def test_a_classifier_of_n_class_scores_is_reported_as_classify(files, tmp_path, labelled):
    """A [N, 10] classifier (class ids, or no labels) was written as "task": "regress": the report took the first
    output's shape without the batch ([10]) for a one-value [batch] output, so `edgerun run` printed "top1": null
    for every classifier exported from a model file (the export itself scored it by top-1)."""
    from edgerun.exporters.pipeline import ExportConfig, export

    d = np.load(files / "digits.npz")
    np.savez(tmp_path / "d.npz", inputs=d["inputs"][:40], **({"labels": d["labels"][:40]} if labelled else {}))
    b = export(f"{files}/model.py:make", ExportConfig(data=tmp_path / "d.npz", evaluate=False), tmp_path / "b")
    assert json.loads((b.path / "report.json").read_text())["task"] == "classify"
