"""The CLI interfaces users script against: `edgerun demo --json`, `edgerun verify --json`, export errors."""

from __future__ import annotations

import json
import subprocess
import sys

STAGES = ("device", "encode", "network", "server", "decode", "total")


def _edgerun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgerun", *args], capture_output=True, text=True, timeout=timeout)


def test_demo_json_last_line_has_the_promised_fields():
    r = _edgerun("demo", "--json", "--limit", "40")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["requests"] == out["answered"] == 40
    assert out["accuracy_split"] == out["accuracy_whole"] >= 0.95
    for stage in STAGES:
        assert {"p50", "p95"} <= set(out["stages_ms"][stage])


def test_verify_json_ok_on_a_fresh_bundle_and_fails_on_a_corrupted_one(digits_bundle, tmp_path):
    r = _edgerun("verify", str(digits_bundle.path), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] and rep["native_vs_ort_max_abs"] <= rep["native_vs_ort_limit"]
    assert rep["split_vs_whole_max_abs"] <= rep["split_vs_whole_limit"]
    r = _edgerun("verify", str(digits_bundle.path), "--engine", "ort", "--json")  # the onnxruntime deployment
    assert r.returncode == 0 and json.loads(r.stdout)["native"] == "skipped", r.stderr
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(digits_bundle.path, bad)
    erg = bad / "front.erg"
    erg.write_bytes(erg.read_bytes()[:-100])
    r = _edgerun("verify", str(bad), "--json")
    assert r.returncode == 2 and "front.erg" in r.stderr and "sha256" in r.stderr


def test_export_names_the_valid_cuts_when_the_cut_is_wrong(tmp_path):
    r = _edgerun("export", "zoo:digits-cnn", "--cut", "nope", "--out", str(tmp_path / "b"))
    assert r.returncode == 2
    assert "no valid cut named 'nope'" in r.stderr and "block1" in r.stderr


def test_layers_times_every_layer_of_a_bundle_front(digits_bundle):
    """`edgerun layers BUNDLE --json`: one entry per engine step, in run order, with the
    kernel that ran; the per-kernel totals add up to the total. A residual Add (and its Relu) run in
    the producing conv's epilogue show as kernel "(fused)" with 0 us: their time is the conv's."""
    r = _edgerun("layers", str(digits_bundle.path), "--runs", "3", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    kinds = {s["kernel"] for s in rep["layers"]}
    fused = [s for s in rep["layers"] if s["kernel"] == "(fused)"]
    assert rep["layers"] and all(s["us"] > 0 for s in rep["layers"] if s["kernel"] != "(fused)")
    assert all(s["us"] == 0 and s["op"] in ("Add", "Relu") for s in fused)
    assert kinds <= {"conv", "conv-implicit", "conv-1x1", "conv-dw", "conv-s8", "conv-w8", "(fused)"} | \
        {s["op"] for s in rep["layers"]}
    assert abs(sum(rep["by_kernel_us"].values()) - rep["total_us"]) <= 1e-6 * rep["total_us"]


def test_layers_says_what_to_do_with_a_missing_bundle(tmp_path):
    r = _edgerun("layers", str(tmp_path / "nope"))
    assert r.returncode == 2 and "edgerun export" in r.stderr


def test_export_front_act_fp32_marks_the_int8_convs(tmp_path):
    """`--front-act fp32`: int8 weights, fp32 activations; the manifest names the layers, the
    report says so, and `edgerun layers` shows them running on the int8 weights in fp32."""
    out = tmp_path / "b"
    r = _edgerun("export", "zoo:digits-cnn", "--front-precision", "int8", "--front-act", "fp32", "--no-eval",
                 "--json", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["front_act"] == "fp32" and rep["front_precision"] == "int8"
    man = json.loads((out / "manifest.json").read_text())
    acts = man["precisions"]["front_fp32_acts"]
    assert acts and set(acts) <= set(man["precisions"]["front_layers"])
    r = _edgerun("layers", str(out), "--runs", "1", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "conv-s8" not in {s["kernel"] for s in json.loads(r.stdout)["layers"]}
    r = _edgerun("export", "zoo:digits-cnn", "--front-act", "int4", "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "front_act" in r.stderr


def test_verify_bounds_a_quantized_front_by_its_measured_error(tmp_path, monkeypatch):
    """An int8 front differs from onnxruntime's fp32 front by its quantization error: verify
    passes it when that error is within 2x what the export measured (+ slack) and fails, saying
    what to do, when it is not (here: a zero allowance)."""
    from edgerun import verify as v
    from edgerun.exporters.pipeline import ExportConfig, export

    b = export("zoo:digits-cnn", ExportConfig(front_precision="int8", evaluate=False), tmp_path / "b")
    prec = b.manifest["precisions"]
    calib = max(prec["front_calib_rel_err"], prec["front_samples_rel_err"])  # the larger of the two bounds
    assert 0 < prec["front_calib_rel_err"] < 0.05 and 0 < prec["front_samples_rel_err"] < 0.05
    rep = v.verify(b)
    assert rep.ok and rep.quantized and rep.native_vs_ort_limit is None
    assert rep.native_vs_ort_rel_l2 <= rep.native_vs_ort_rel_l2_limit == v.QUANT_REL_FACTOR * calib + v.QUANT_REL_SLACK
    monkeypatch.setattr(v, "QUANT_REL_FACTOR", 0.0)
    monkeypatch.setattr(v, "QUANT_REL_SLACK", 1e-6)
    bad = v.verify(b)
    assert not bad.ok and bad.native == "mismatch" and "re-export the bundle" in bad.messages[0]


def test_verify_bounds_a_quantized_back_half_by_its_measured_error(tmp_path, monkeypatch):
    """An fp16 / int8 back half differs from the fp32 whole model by its own rounding: the
    export measures that error on the calibration crossings, and verify passes the split when
    it is within 2x that (+ slack) instead of refusing every such bundle with fp32 tolerances
    ("re-export the bundle" on a bundle just exported); a zero allowance still fails."""
    from edgerun import verify as v
    from edgerun.exporters.pipeline import ExportConfig, export

    for prec in ("fp16", "int8"):
        b = export("zoo:digits-cnn", ExportConfig(back_precision=prec, evaluate=False), tmp_path / prec)
        measured = b.manifest["precisions"]["back_calib_rel_err"]
        assert 0 < measured < 0.1, (prec, measured)
        assert json.loads((b.path / "report.json").read_text())["back_calib_rel_err"] == measured
        rep = v.verify(b)
        assert rep.ok, rep.messages
        assert rep.split_vs_whole_limit is None and rep.split_vs_whole_max_abs > 0
        on_samples = b.manifest["precisions"]["back_samples_rel_err"]  # the larger of the two bounds it
        assert rep.split_vs_whole_rel_l2 <= rep.split_vs_whole_rel_l2_limit == \
            v.QUANT_REL_FACTOR * max(measured, on_samples) + v.QUANT_REL_SLACK
    monkeypatch.setattr(v, "QUANT_REL_FACTOR", 0.0)
    monkeypatch.setattr(v, "QUANT_REL_SLACK", 0.0)
    bad = v.verify(b)
    assert not bad.ok and "int8 back half" in bad.messages[0] and "re-export the bundle" in bad.messages[0]
    fp32 = export("zoo:digits-cnn", ExportConfig(evaluate=False), tmp_path / "fp32")
    assert fp32.manifest["precisions"]["back_calib_rel_err"] == 0.0
    assert v.verify(fp32).split_vs_whole_rel_l2 is None  # fp32: checked to float rounding
