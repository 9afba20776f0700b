"""`edgerun export path/to/model.py:make` with a user's own model: a model edgerun cannot carry gets one
error that says what is wrong and what to do (not onnxruntime's traceback, not a bundle that fails later),
and the options a user reads off `--list-cuts` pick the cut they name."""

from __future__ import annotations

import json

import pytest

from edgerun.errors import ExportError

MODELS = '''
import torch
import torch.nn as nn

def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3)), torch.randn(1, 20)

def half():
    m, x = mlp()
    return m.half(), x.half()

def double():
    m, x = mlp()
    return m.double(), x.double()

class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(100, 8), nn.Linear(8, 3)
    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))

def tokens():
    return Tokens(), torch.randint(0, 100, (1, 12))

class FloatTokens(Tokens):
    def forward(self, ids):
        return super().forward(ids.long())

def float_tokens():  # ids 0..99 plus noise of their spread (~29): many leave the vocabulary
    torch.manual_seed(0)
    return FloatTokens(), torch.randint(0, 100, (1, 12)).float()

class ArgMax(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(10, 10), nn.Linear(10, 10)
    def forward(self, x):
        return torch.argmax(self.b(torch.relu(self.a(x))), dim=1)

def argmax():
    return ArgMax(), torch.randn(1, 10)

def meta():
    m, x = mlp()
    return m.to("meta"), x.to("meta")

class TwoIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(7, 2)
    def forward(self, img, feats):
        return self.fc(torch.cat([img.flatten(1), feats], 1))

def two_inputs():
    return TwoIn(), (torch.randn(1, 1, 2, 2), torch.randn(1, 3))

def one_layer():
    return nn.Linear(4, 2), torch.randn(1, 4)

class LogOfRelu(nn.Module):  # log(0) = -inf for every unit the ReLU zeroes: NaN / Inf answers
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 3)
    def forward(self, x):
        return self.b(torch.log(torch.relu(self.a(x))))

def nan_out():
    torch.manual_seed(0)
    return LogOfRelu(), torch.randn(1, 8)

class Regressor(nn.Module):  # one value per sample: output [batch]
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(20, 16), nn.Linear(16, 1)
    def forward(self, x):
        return self.b(torch.relu(self.a(x))).squeeze(1)

def regressor():
    torch.manual_seed(0)
    return Regressor(), torch.randn(1, 20)

class TopK(nn.Module):  # TopK: no native kernel, the front half runs on onnxruntime (--engine ort)
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(10, 10), nn.Linear(4, 3)
    def forward(self, x):
        return self.b(torch.topk(self.a(x), 4, dim=1)[0])

def topk():
    torch.manual_seed(0)
    return TopK(), torch.randn(1, 10)

def exits():
    import sys
    sys.exit("no GPU found, exiting")

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)
    def forward(self, x):
        h = torch.relu(self.a(x))
        if h.sum() > 0:  # BRANCH: data-dependent Python control flow
            h = h * 2
        return self.b(h)

def branchy():
    return Branchy(), torch.randn(1, 4)

class GRUNet(nn.Module):  # ONNX GRU outputs are sequence-major: [steps, directions, batch, hidden]
    def __init__(self):
        super().__init__()
        self.gru, self.fc = nn.GRU(6, 8, batch_first=True), nn.Linear(8, 3)
    def forward(self, x):
        return self.fc(self.gru(x)[0][:, -1])

def gru():
    torch.manual_seed(0)
    return GRUNet(), torch.randn(2, 10, 6)

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)
    def forward(self, x):
        s = torch.relu(self.stem(x))
        y = torch.relu(self.c2(torch.relu(self.c1(s))) + s)
        return self.head(y.mean((2, 3)))

def residual():
    torch.manual_seed(0)
    return Residual(), torch.randn(1, 3, 8, 8)

class FlattensBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)
    def forward(self, x):
        return self.fc(torch.relu(self.c(x)).view(1, -1))

def flattens_batch():
    return FlattensBatch(), torch.randn(1, 3, 8, 8)

def bn_after_linear():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32), nn.BatchNorm1d(32),
                      nn.ReLU(), nn.Linear(32, 3))
    return m, torch.randn(1, 20)
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("usermodels") / "models.py"
    path.write_text(MODELS)
    return path


@pytest.mark.parametrize(("fn", "match"), [
    # each traced, then ended the export with onnxruntime's "Unexpected input data type" traceback
    ("half", r"input is float16; .* return module\.float\(\) and example\.float\(\)"),
    ("double", r"input is float64; .* return module\.float\(\) and example\.float\(\)"),
    ("tokens", r"input is int64; .* integer inputs are not supported: look the embeddings up before the model"),
    # exported and verified; every `edgerun run` then said the server was not an edgerun serve for the bundle
    ("argmax", r"output is int64; .* return float32 scores \(e\.g\. the logits\)"),
])
def test_a_model_whose_input_or_output_is_not_float32_is_refused_saying_what_to_return(models, fn, match):
    from edgerun.exporters.pipeline import trace_model

    with pytest.raises(ExportError, match=match):
        trace_model(f"{models}:{fn}")


def test_weights_on_the_meta_device_are_named_not_an_onnx_pass_error(models):
    # was: "torch.onnx.export could not trace the model (PassError: ... PassManager ...) ... control flow"
    from edgerun.exporters.pipeline import trace_model

    with pytest.raises(ExportError, match=r"meta device and hold no values; load real weights"):
        trace_model(f"{models}:meta")


def test_two_example_inputs_trace_as_two_inputs_named_after_forward_s_arguments(models):
    """They were refused ("edgerun models take one input tensor"); tests/unit/test_multi_input.py
    follows such a model through the whole export."""
    from edgerun.exporters.pipeline import trace_model

    traced = trace_model(f"{models}:two_inputs")
    assert [i.name for i in traced.model.graph.input] == ["img", "feats"]


def test_a_one_layer_model_is_told_why_it_has_no_cut_not_to_export_it_whole(models):
    # "export it whole" named something no command does
    from edgerun.exporters.pipeline import ExportConfig, export

    with pytest.raises(ExportError, match=r"no valid cut point: .*edgerun splits models of two or more layers") as e:
        export(f"{models}:one_layer", ExportConfig(evaluate=False), models.parent / "b")
    assert "whole" not in str(e.value)


def test_a_cut_number_that_is_one_cut_s_index_and_another_s_label_is_refused(models):
    """nn.Sequential labels its cuts "1", "2", "4", "5" (module names): `--cut 2` took the cut labelled
    "2" (index 1) although `--list-cuts` shows index 2 as another cut. Ambiguous numbers are refused
    with both crossing tensors; unambiguous ones, and the tensor names, pick the cut they name."""
    from edgerun.exporters.cuts import resolve_cut
    from edgerun.exporters.pipeline import trace_model

    cuts = trace_model(f"{models}:bn_after_linear").cuts
    assert [c.label for c in cuts] == ["1", "2", "4", "5"]
    with pytest.raises(ExportError, match=r"--cut 2 is ambiguous: cut index 2 is '4', and cut index 1 is labelled '2'"
                                          rf"; give the crossing tensor instead: --cut {cuts[2].tensors[0]} \(index 2\)"):
        resolve_cut(cuts, "2")
    assert resolve_cut(cuts, "0").index == 0  # no cut is labelled "0"
    assert resolve_cut(cuts, "4").index == 2  # no cut has index 4
    assert resolve_cut(cuts, cuts[2].tensors[0]).index == 2


def test_onnxruntime_failing_on_the_synthetic_inputs_is_one_error_and_the_old_bundle_stays(models, tmp_path):
    """Token ids carried as floats: the export's inputs (the example plus noise) leave the vocabulary and
    onnxruntime's Gather raised out of the export; now one ExportError, and the bundle at --out survives."""
    from edgerun.exporters.pipeline import ExportConfig, export

    out = tmp_path / "b"
    old = export(f"{models}:mlp", ExportConfig(evaluate=False), out)
    with pytest.raises(ExportError, match=r"onnxruntime failed running the traced model on synthetic inputs .*"
                                          r"indices element out of data bounds.*token or class ids"):
        export(f"{models}:float_tokens", ExportConfig(evaluate=False), out)
    assert json.loads((out / "manifest.json").read_text())["model_id"] == old.model_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no half-written directory beside it


def test_only_float32_tensors_cross_a_cut(models):
    """The wire carries float32: the cut after `ids.long()` (an int64 tensor) was listed and exported,
    verified, and then every request was refused ("cut tensor is int64 ... device and server disagree")."""
    import onnx

    from edgerun.exporters.pipeline import trace_model

    traced = trace_model(f"{models}:float_tokens")
    types = {vi.name: vi.type.tensor_type.elem_type for vi in traced.model.graph.value_info}
    assert onnx.TensorProto.INT64 in types.values()  # the Cast's output: a cut candidate by liveness
    assert traced.cuts and all(types[t] == onnx.TensorProto.FLOAT for c in traced.cuts for t in c.tensors)


def test_max_abs_diff_and_rel_l2_compare_the_finite_values_and_match_nan_with_nan():
    import numpy as np

    from edgerun.verify import max_abs_diff, rel_l2

    ref = np.array([1.0, np.nan, np.inf, -np.inf, 2.0])
    assert max_abs_diff(ref + [0.5, 0, 0, 0, 0], ref) == 0.5
    assert rel_l2([ref], [ref]) == 0.0
    for other in ([1, 0, np.inf, -np.inf, 2], [1, np.nan, -np.inf, -np.inf, 2], [1, np.nan, np.inf, -np.inf, np.nan]):
        assert max_abs_diff(np.array(other, dtype=float), ref) == np.inf
        assert rel_l2([np.array(other, dtype=float)], [ref]) == np.inf


def test_a_model_that_gives_nan_exports_verifies_and_says_so(models, tmp_path):
    """verify failed with "split vs whole differs by nan > nan: re-export the bundle" on a split that gave
    the whole model's NaN exactly (re-exporting changed nothing), and the export printed
    max |split - whole| = nan without a word about the model."""
    from edgerun.bundle import Bundle
    from edgerun.exporters.pipeline import ExportConfig, export
    from edgerun.report import export_summary
    from edgerun.verify import verify

    b = export(f"{models}:nan_out", ExportConfig(eval_limit=16), tmp_path / "b")
    rep = json.loads((b.path / "report.json").read_text())
    assert rep["whole_nonfinite"] > 0 and rep["split_vs_whole_max_abs"] == 0.0
    assert "warning  the whole model gives NaN or Inf on" in export_summary(Bundle.load(b.path), rep)
    v = verify(b)
    assert v.ok and v.split_vs_whole_max_abs == 0.0, v.messages


def test_a_quantized_back_half_that_nan_breaks_is_refused_and_the_old_bundle_stays(models, tmp_path):
    """int8 scales calibrated on activations that hold -inf: the export wrote the bundle with
    back_calib_rel_err = nan over the old one, and then refused to load it ("the manifest was edited ...")."""
    from edgerun.exporters.pipeline import ExportConfig, export

    out = tmp_path / "b"
    export(f"{models}:mlp", ExportConfig(evaluate=False), out)
    with pytest.raises(ExportError, match=r"the int8 back half gives NaN or Inf where the fp32 one does not.*"
                                          r"--back-precision fp32"):
        export(f"{models}:nan_out", ExportConfig(evaluate=False, back_precision="int8"), out)
    assert json.loads((out / "manifest.json").read_text())["precisions"]["back"] == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize(("out", "top1", "output"), [
    ([[0.1, 0.7, 0.2]], 1, [0.1, 0.7, 0.2]),        # scores: the argmax
    ([0.5], None, 0.5),                              # [batch]: was IndexError "invalid index to scalar variable"
    ([[0.5]], None, [0.5]),                          # one regression value: top1 was always 0
    ([[[1.0, 2.0], [4.0, 3.0]]], None, [[1.0, 2.0], [4.0, 3.0]]),  # [batch, T, classes]: was a TypeError traceback
    ([[float("nan"), 1.0, float("inf")]], None, [None, 1.0, None]),  # NaN answer: top1 was 0; null in strict JSON
])
def test_run_reports_the_answer_itself_and_top1_only_for_a_vector_of_finite_scores(out, top1, output):
    import numpy as np

    from edgerun.cli_run import answer_fields

    got = answer_fields(np.array(out, dtype=np.float32))
    assert got == {"top1": top1, "output": output}
    json.dumps(got, allow_nan=False)


def test_a_regression_model_is_measured_by_its_error_not_a_top1_that_always_agrees(models, tmp_path):
    """One value per sample: the report read "top1_agreement: whole 1.0000, split 1.0000" for an int4 front
    whatever its error (the argmax of one value, or of the batch). Now the mean absolute error vs the whole."""
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(f"{models}:regressor", ExportConfig(front_precision="int4", eval_limit=16), tmp_path / "b")
    rep = json.loads((b.path / "report.json").read_text())
    assert rep["metric"] == "mae" and "top1_agreement" not in rep
    assert rep["metric_whole_fp32"] == 0.0 and rep["metric_split"] == rep["mae_vs_whole"] > 0


def test_layers_on_an_onnxruntime_front_names_the_missing_op_not_a_nonexistent_option(models, tmp_path):
    # said "(exported with --engine ort?); re-export it with the native engine": export has no --engine
    from cli_checks import run_cli

    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(f"{models}:topk", ExportConfig(cut="topk", evaluate=False), tmp_path / "b")
    assert not b.native_ok
    r = run_cli("layers", str(b.path))
    assert r.exit_code == 2
    assert "no native front half to time: the native engine cannot run node" in r.output and "(op TopK)" in r.output
    assert "--engine ort?" not in r.output


ARGPARSE_AT_IMPORT = """
import argparse, torch, torch.nn as nn
parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
{extra}
args = parser.parse_args()
def make():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(1, 4)
"""


def test_a_model_file_with_argparse_at_import_sees_its_own_command_line_not_edgerun_s(tmp_path, monkeypatch):
    """A training script's module-level parse_args() read `edgerun export ...` and printed
    "edgerun: error: unrecognized arguments: export ..." as if edgerun had refused its own options."""
    from edgerun.errors import ConfigError
    from edgerun.exporters.models import resolve_model

    monkeypatch.setattr("sys.argv", ["edgerun", "export", "x.py:make", "--out", "b"])
    ok, needs_arg = tmp_path / "ok.py", tmp_path / "needs_arg.py"
    ok.write_text(ARGPARSE_AT_IMPORT.format(extra=""))
    needs_arg.write_text(ARGPARSE_AT_IMPORT.format(extra='parser.add_argument("data")'))
    assert resolve_model(f"{ok}:make").example.shape == (1, 4)  # imported as `python ok.py` would run
    with pytest.raises(ConfigError, match=r"importing .*needs_arg\.py called sys\.exit\(2\) \(an argparse "
                                          r"parse_args\(\).*put it under `if __name__ == \"__main__\":`"):
        resolve_model(f"{needs_arg}:make")
    import sys
    assert sys.argv[:2] == ["edgerun", "export"]  # put back


def test_make_calling_sys_exit_is_an_error_not_a_silent_exit(models):
    # ended the CLI with the user's text and exit code 1, no edgerun line
    from edgerun.exporters.models import resolve_model

    with pytest.raises(ExportError, match=r"exits\(\) called sys\.exit\('no GPU found, exiting'\)"):
        resolve_model(f"{models}:exits")


def test_an_untraceable_forward_names_torch_s_reason_and_the_model_s_line_in_one_line(models, capfd):
    """The message was the first 400 characters of torch's generic "Next steps" text (with colour codes),
    after 60 lines of traced graph that torch.export printed to stderr."""
    from edgerun.exporters.pipeline import trace_model

    line = next(i for i, text in enumerate(MODELS.splitlines(), 1) if "BRANCH" in text)
    with pytest.raises(ExportError, match=rf"could not trace the model \(GuardOnDataDependentSymNode: Could not "
                                          rf"guard on data-dependent expression .*; at File \"{models}\", line {line}"):
        trace_model(f"{models}:branchy")
    err = capfd.readouterr().err
    assert "def forward" not in err and "\x1b[" not in err


def test_run_refuses_one_sample_saved_without_the_batch_axis_before_the_broker(tmp_path):
    """np.save(path, x[0]) of a [1, 6, 6] sample: each row went out as a sample and the device said
    "input has shape (1, 6, 6) ... the bundle expects (None, 1, 6, 6)", which is the file's own shape."""
    import numpy as np
    from cli_checks import closed_port, run_cli
    from golden_bundle import golden_copy_at

    b = golden_copy_at(tmp_path / "b")
    np.save(tmp_path / "x.npy", np.zeros((1, 6, 6), np.float32))
    r = run_cli("run", str(b), "--broker", f"mqtt://127.0.0.1:{closed_port()}", "--input", str(tmp_path / "x.npy"))
    assert r.exit_code == 2
    assert "holds one sample of shape [1, 6, 6] without the batch axis; save it with np.save(path, x[None])" in r.output


def test_only_batch_first_tensors_cross_a_cut(models):
    """A cut inside a GRU crossed [10 steps, 1, batch, 8]: written as shape [None, 1, 1, 8], it was served
    one sample at a time by luck, and `--codec tsq` died in onnxruntime ("Got: 40 Expected: 20") because the
    codec, like the server's batching, takes axis 0 as the batch."""
    from edgerun.exporters.pipeline import trace_model

    traced = trace_model(f"{models}:gru")
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in traced.model.graph.value_info}
    assert any(d and d[0] != "batch" and "batch" in d for d in dims.values())  # the GRU's own outputs
    assert traced.cuts
    for c in traced.cuts:
        for t in c.tensors:
            assert dims[t][0] == "batch" and all(isinstance(d, int) for d in dims[t][1:]), (c.label, dims[t])


def test_a_model_file_imports_the_modules_beside_it(tmp_path, monkeypatch):
    # `from mylayers import block` in model.py failed with ModuleNotFoundError from any directory, the
    # file's own included (the edgerun script's sys.path[0] is its bin directory)
    import sys

    from edgerun.exporters.models import resolve_model

    (tmp_path / "mylayers_for_edgerun_test.py").write_text(
        "import torch.nn as nn\ndef block(i, o):\n    return nn.Sequential(nn.Linear(i, o), nn.ReLU())\n")
    (tmp_path / "net.py").write_text(
        "import torch\nfrom mylayers_for_edgerun_test import block\n"
        "def make():\n    return torch.nn.Sequential(block(10, 8), torch.nn.Linear(8, 2)), torch.randn(1, 10)\n")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    assert resolve_model(f"{tmp_path / 'net.py'}:make").example.shape == (1, 10)
    assert sys.path == before  # put back


def test_list_cuts_shows_the_shape_of_every_crossing_tensor():
    # a two-tensor cut (a residual skip and the main path) showed one shape beside two tensor names
    from edgerun.report import cuts_table

    row = {"index": 2, "label": "c1", "tensors": ["relu", "conv2d_1"], "shapes": [[1, 8, 16, 16], [1, 4, 16, 16]],
           "crossing_bytes": 12288, "front_fraction": 0.403}
    assert "relu,conv2d_1  1x8x16x16,1x4x16x16  12288" in cuts_table([row])


def test_a_cut_that_needs_more_crossing_tensors_says_which_option_allows_it(models, tmp_path):
    # `--cut c1` read off `--list-cuts --max-cut-tensors 2` was refused as "no valid cut named 'c1'"
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model

    assert "c1" in [c.label for c in trace_model(f"{models}:residual", max_cut_tensors=2).cuts]
    with pytest.raises(ExportError, match=r"cut 'c1' crosses 2 tensors \(.*\), more than --max-cut-tensors 1 allows: "
                                          r"add --max-cut-tensors 2"):
        export(f"{models}:residual", ExportConfig(cut="c1", evaluate=False), tmp_path / "b")
    with pytest.raises(ExportError, match=r"no valid cut named 'nope'"):
        export(f"{models}:residual", ExportConfig(cut="nope", evaluate=False), tmp_path / "b")


def test_a_forward_that_flattens_the_batch_away_is_told_so_not_to_add_a_batch_dimension(models):
    # x.view(1, -1): the message said only "add a batch dimension, e.g. example.unsqueeze(0)" to an
    # example of shape (1, 3, 8, 8), which has one
    from edgerun.exporters.pipeline import trace_model

    with pytest.raises(ExportError, match=r"did not give two answers \(failed: RuntimeError: mat1 and mat2 shapes "
                                          r".*forward\(\) must keep it in every output "
                                          r"\(x\.flatten\(1\) or x\.view\(x\.size\(0\), -1\)"):
        trace_model(f"{models}:flattens_batch")


def test_a_crossing_the_model_itself_makes_nan_names_that_cause_too():
    # log(relu(x)) before the cut: "the input is far outside the range the model was trained on" was the
    # only cause named, for ordinary inputs
    import numpy as np

    from edgerun.bundle import TensorSpec
    from edgerun.device_checks import check_finite_cut
    from edgerun.errors import ConfigError

    with pytest.raises(ConfigError, match=r"NaN or Inf at the cut \('log'\).*or the model computes NaN / Inf for it "
                                          r"before the cut \(a log, sqrt or division"):
        check_finite_cut({"log": np.array([[0.5, -np.inf]], np.float32)}, [TensorSpec("log", (None, 2))])


def test_list_cuts_of_a_model_without_cuts_says_why_not_an_empty_table(models):
    """`--list-cuts` on a one-layer model printed the table's header and nothing else."""
    from cli_checks import run_cli

    r = run_cli("export", f"{models}:one_layer", "--list-cuts")
    assert r.exit_code == 0 and "no valid cut: no tensor between two layers" in r.output
