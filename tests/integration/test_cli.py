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
