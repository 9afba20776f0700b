"""What `edgerun export` promises about the device memory budget and the codec's bytes."""

from __future__ import annotations

import json

import pytest

from edgerun.errors import ConfigError

pytestmark = pytest.mark.runtime


def test_a_fixed_precision_front_is_checked_against_the_memory_budget(digits_traced, tmp_path):
    """A plan can choose int8 under --max-device-mem-mb: the export must take the budget (it
    used to refuse it outside `auto`) and refuse a front half that does not fit, saying what to do."""
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(digits_traced, ExportConfig(front_precision="int8", max_device_mem_mb=1.0, evaluate=False),
               tmp_path / "fits")
    rep = json.loads(b.file("report.json").read_text())
    assert rep["front_arena_bytes"] > 0 and rep["front_weight_bytes"] > 0
    assert rep["front_weight_bytes"] + rep["front_arena_bytes"] <= 1.0 * 2**20
    with pytest.raises(ConfigError, match="--front-precision auto") as exc:
        export(digits_traced, ExportConfig(front_precision="int8", max_device_mem_mb=0.01, evaluate=False),
               tmp_path / "tight")
    assert "over --max-device-mem-mb 0.01" in str(exc.value)
    assert not (tmp_path / "tight").exists()  # nothing half-written is left behind


def test_the_report_names_the_front_layers_rounded_to_nearest_instead_of_gptq(digits_traced, tmp_path,
                                                                            monkeypatch, capsys):
    """A layer whose GPTQ statistics would exceed MAX_H_BYTES is rounded to nearest; the export used
    to say nothing of it. report.json's ``front_rounding`` names those layers, the printed table too."""
    from edgerun.exporters import quant_stats
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(digits_traced, ExportConfig(front_precision="int8", evaluate=False), tmp_path / "fits")
    rep = json.loads(b.file("report.json").read_text())
    layers = sorted(b.manifest["precisions"]["front_layers"])
    assert rep["front_rounding"] == {"method": "gptq", "gptq": len(layers), "rtn_fallback": []}
    assert "rounded to nearest" not in capsys.readouterr().err
    monkeypatch.setattr(quant_stats, "MAX_H_BYTES", 0)  # no layer's statistics fit
    b = export(digits_traced, ExportConfig(front_precision="int8", evaluate=False), tmp_path / "rtn")
    rep = json.loads(b.file("report.json").read_text())
    assert rep["front_rounding"]["gptq"] == 0 and sorted(rep["front_rounding"]["rtn_fallback"]) == layers
    assert f"{len(layers)} layer(s) rounded to nearest, not GPTQ" in capsys.readouterr().err
    fp32 = export(digits_traced, ExportConfig(evaluate=False), tmp_path / "fp32")
    assert json.loads(fp32.file("report.json").read_text())["front_rounding"] is None


def test_without_evaluation_the_codec_bytes_are_measured_on_calibration_data(digits_traced, tmp_path):
    """--no-eval used to report the fp32 size as the tsq bundle's bytes per request (1.00x)."""
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export(digits_traced, ExportConfig(codec="tsq", evaluate=False), tmp_path / "b")
    rep = json.loads(b.file("report.json").read_text())
    assert rep["bytes_per_request"] * 4 < rep["bytes_per_request_fp32"]  # digits: ~9-11x at the default cut
    assert rep["bytes_per_request_on"].startswith("calibration data")


class _LrnNet:
    """A front half the native engine cannot run (local response normalization after the first conv: torch writes it as a 3-D AveragePool)."""

    @staticmethod
    def source():
        import torch

        from edgerun.exporters.models import SourceModel

        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.LocalResponseNorm(2),
                                  torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
        return SourceModel("lrn-net", net.eval(), torch.randn(1, 3, 16, 16))


def test_a_front_the_native_engine_cannot_run_exports_for_onnxruntime_but_not_quantized(tmp_path):
    """fp32: the bundle is written for `--engine ort`, its manifest naming the op the engine
    lacks. int8 / int4 would silently come out fp32 on onnxruntime: refused instead,
    saying what to do, and nothing is left behind."""
    from edgerun.bundle import Bundle
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model

    traced = trace_model(_LrnNet.source())
    lrn_cut = next(c.label for c in traced.cuts if c.label.endswith("1"))  # the LRN's output
    b = export(traced, ExportConfig(cut=lrn_cut, evaluate=False), tmp_path / "fp32")
    b = Bundle.load(b.path)
    assert not b.native_ok and "AveragePool" in b.native_reason and "--engine ort" in b.native_reason
    from edgerun.verify import verify

    native = verify(b)  # for the native engine: not deployable, and it says how to check the other way
    assert not native.ok and native.native == "unsupported" and "edgerun verify --engine ort" in native.messages[0]
    ort = verify(b, engine="ort")
    assert ort.ok and ort.native == "skipped" and not ort.messages
    with pytest.raises(ConfigError, match="'native' or 'ort'"):
        verify(b, engine="tflite")
    for prec in ("int8", "int4"):
        with pytest.raises(ConfigError, match=f"--front-precision {prec} runs on the native engine") as exc:
            export(traced, ExportConfig(cut=lrn_cut, front_precision=prec, evaluate=False), tmp_path / prec)
        assert "AveragePool" in str(exc.value) and "--front-precision fp32" in str(exc.value)
        assert not (tmp_path / prec).exists()


def test_out_dot_inside_an_old_bundle_is_refused_and_the_bundle_kept(digits_traced, tmp_path, monkeypatch):
    """`--out .` inside a bundle made the export build its new bundle *inside* the old one and then
    delete the old one, with the new one in it: both lost, and a traceback."""
    from edgerun.exporters.pipeline import ExportConfig, export

    old = export(digits_traced, ExportConfig(evaluate=False), tmp_path / "b")
    before = sorted(p.name for p in old.path.iterdir())
    monkeypatch.chdir(old.path)
    for out in (".", "", "..", str(tmp_path)):
        with pytest.raises(ConfigError, match="--out"):
            export(digits_traced, ExportConfig(evaluate=False), out)
    assert sorted(p.name for p in old.path.iterdir()) == before


def test_re_export_replaces_the_old_bundle_and_leaves_no_temp_dirs(digits_traced, tmp_path):
    from edgerun.exporters.pipeline import ExportConfig, export

    export(digits_traced, ExportConfig(evaluate=False), tmp_path / "b")
    b = export(digits_traced, ExportConfig(cut="block1", evaluate=False), tmp_path / "b")
    assert b.cut_label == "block1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_an_unwritable_out_fails_before_the_model_is_traced(tmp_path):
    """/proc cannot hold a bundle: the error comes at once, not after tracing (minutes for EfficientNet)."""
    from edgerun.exporters.pipeline import ExportConfig, export

    with pytest.raises(ConfigError, match="choose a writable --out"):
        export("zoo:does-not-matter", ExportConfig(evaluate=False), "/proc/edgerun-bundle")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"group_size": 0}, r"--group-size 0: an int4 group is an even number of weights in 2\.\.4096"),
    ({"group_size": 7}, r"--group-size 7: an int4 group"),  # was refused by the int4 writer, after the trace
    ({"codec_budget": 0.01}, "add --codec tsq"),
])
def test_options_that_would_be_silently_ignored_are_refused(kwargs, match):
    from edgerun.exporters.pipeline import ExportConfig

    with pytest.raises(ConfigError, match=match):
        ExportConfig(**kwargs)


def test_an_out_inside_a_file_names_the_file(tmp_path):
    # said "cannot write the bundle beside .../notes.txt/b/c (File exists)"
    from edgerun.exporters.pipeline import check_out_dir

    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"notes\.txt is a file, not a directory; choose an --out outside it"):
        check_out_dir(tmp_path / "notes.txt" / "b" / "c")
    assert (tmp_path / "notes.txt").read_text() == "x"


def test_an_archive_name_as_out_is_refused():
    from edgerun.exporters.pipeline import check_out_dir

    with pytest.raises(ConfigError, match="not an archive"):
        check_out_dir("bundles/model.tar.gz")


def test_a_model_without_data_is_measured_on_inputs_it_was_not_calibrated_on(tmp_path):
    """Calibration, evaluation and samples.npz were the same 8 inputs: GPTQ was fitted to the inputs it
    was measured on, and a wide int4 MLP printed 100 % agreement where new inputs gave 92 %."""
    import numpy as np

    from edgerun import verify as v
    from edgerun.exporters.evaluate import SEED_CALIB, SEED_EVAL, SEED_SAMPLES, synthetic_inputs
    from edgerun.exporters.pipeline import ExportConfig, export

    path = tmp_path / "m.py"
    path.write_text("import torch\n\ndef mlp():\n    torch.manual_seed(0)\n"
                    "    m = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))\n"
                    "    return m.eval(), torch.randn(1, 256)\n")
    b = export(f"{path}:mlp", ExportConfig(cut=1, front_precision="int8"), tmp_path / "b")
    rep = json.loads(b.file("report.json").read_text())
    assert rep["n_eval"] == 64 and "synthetic" in rep["eval_inputs"]
    assert b.manifest["precisions"]["front_samples_rel_err"] > 0
    assert v.verify(b).ok
    from edgerun.exporters.models import resolve_model

    src = resolve_model(f"{path}:mlp")
    draws = [synthetic_inputs(src, 4, seed) for seed in (SEED_SAMPLES, SEED_CALIB, SEED_EVAL)]
    assert not any(np.array_equal(a, c) for i, a in enumerate(draws) for c in draws[i + 1:])


def test_re_export_refuses_an_out_holding_the_user_s_files_and_keeps_them(digits_traced, tmp_path):
    """A re-export over a bundle directory replaced it whole: the notes, calibration set, archive and folder
    the user had put into it were deleted. Now refused before any work, naming them; the old bundle kept."""
    from edgerun.exporters.pipeline import ExportConfig, export

    old = export(digits_traced, ExportConfig(evaluate=False), tmp_path / "b")
    mine = {"notes.txt": b"cut at block1 next", "calib.npz": b"x", "b-device.tar.gz": b"y",
            "rpi4.toml": b"z", "data/run1.npz": b"w"}
    for name, data in mine.items():
        (old.path / name).parent.mkdir(exist_ok=True)
        (old.path / name).write_bytes(data)
    before = {p.relative_to(old.path): p.read_bytes() for p in old.path.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"holds b-device\.tar\.gz, calib\.npz, data/, notes\.txt and 1 more, "
                                          r"which are not part of the model bundle there.*move them out of b/, "
                                          r"or choose another --out") as exc:
        export(digits_traced, ExportConfig(cut="block1", evaluate=False), tmp_path / "b")
    assert "manifest.json" not in str(exc.value) and "front.onnx" not in str(exc.value)
    assert {p.relative_to(old.path): p.read_bytes() for p in old.path.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no half-written directory beside it
    for name in mine:
        (old.path / name).unlink()
    (old.path / "data").rmdir()
    assert export(digits_traced, ExportConfig(cut="block1", evaluate=False), tmp_path / "b").cut_label == "block1"


def test_a_damaged_old_bundle_is_re_exported_but_not_over_the_user_s_files(tmp_path):
    """A bundle whose manifest does not parse is repaired by exporting over it (`manifest_format` None):
    still so, for the files an export writes, but a file of the user's there is not deleted either."""
    from edgerun.exporters.out_dir import check_out_dir, foreign_files

    b = tmp_path / "b"
    b.mkdir()
    for name in ("manifest.json", "front.onnx", "front.erg", "back.onnx", "whole.onnx", "samples.npz", "report.json",
                 "exit0.onnx", "exit1.erg", "exits.png", "packed.json"):
        (b / name).write_text("{" if name == "manifest.json" else "x")
    assert check_out_dir(b) == b.resolve() and foreign_files(b) == []
    (b / "profile.toml").write_text("mine")
    (b / "front.onnx.bak").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds front\.onnx\.bak, profile\.toml, which are not part of"):
        check_out_dir(b)


def test_a_tool_index_and_an_llm_bundle_keep_the_user_s_files_too(tmp_path):
    """`edgerun tools build --out` and `edgerun llm export --out` replace their directory the same way."""
    import json

    from edgerun.bundle import LLM_FORMAT_NAME, TOOLS_FORMAT_NAME
    from edgerun.exporters.out_dir import check_out_dir

    kinds = {TOOLS_FORMAT_NAME: ("encoder.onnx", "tokenizer.json", "tools.json", "tool_emb.npz", "report.json"),
             LLM_FORMAT_NAME: ("front.onnx", "back.onnx", "tokenizer.json", "report.json")}
    for kind, names in kinds.items():
        d = tmp_path / kind
        d.mkdir()
        for n in names:
            (d / n).write_text("x")
        (d / "manifest.json").write_text(json.dumps({"format": kind, "files": {n: {} for n in names}}))
        assert check_out_dir(d, kind) == d.resolve()
        (d / "whole.onnx").write_text("mine")  # a model bundle's file: not one these write
        with pytest.raises(ConfigError, match=r"holds whole\.onnx, which is not part of the (tool index|LLM bundle) "
                                              r"there.*move it out of"):
            check_out_dir(d, kind)


def test_files_put_into_out_while_the_export_ran_are_kept_and_so_is_the_new_bundle(tmp_path):
    from edgerun.exporters.out_dir import building

    final = tmp_path / "b"
    final.mkdir()
    (final / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds notes\.txt.*changed while the export ran; the new one is kept "
                                          r"at .*b\.new\)"):
        with building(final) as d:
            (d / "manifest.json").write_text("new")
            (final / "notes.txt").write_text("mine")
    assert (final / "notes.txt").read_text() == "mine" and (final / "manifest.json").read_text() == "{}"
    assert (tmp_path / "b.new" / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.new"]


def test_what_the_exporter_writes_is_never_taken_for_the_user_s(digits_traced, tmp_path):
    """``out_dir.WRITTEN`` names what an export writes whatever the old manifest lists: every file of a bundle
    with exits and plots is in it (a new file the exporter writes must be added there)."""
    import tarfile

    from edgerun.exporters.out_dir import WRITTEN, foreign_files
    from edgerun.exporters.pipeline import ExportConfig, export
    from edgerun.pack import pack

    b = export(digits_traced, ExportConfig(cut="block2", exits="auto", evaluate=False), tmp_path / "b")
    assert "exits.png" in b.manifest["files"] and "exit1.erg" in b.manifest["files"]
    assert [n for n in b.manifest["files"] if not WRITTEN["edgerun-bundle"].fullmatch(n)] == []
    assert foreign_files(b.path) == []
    pack(b.path, "device", tmp_path / "d.tar.gz")  # a device's copy unpacked and exported over
    with tarfile.open(tmp_path / "d.tar.gz") as tf:
        tf.extractall(tmp_path / "x", filter="data")
    assert foreign_files(tmp_path / "x" / "d") == []
    assert export(digits_traced, ExportConfig(evaluate=False), tmp_path / "x" / "d").packed is None
