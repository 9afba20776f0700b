"""The golden bundle (format 1, fp32 engine graph) must keep loading and verifying in every later edgerun."""

import json
from pathlib import Path

from edgerun.bundle import Bundle
from edgerun.verify import verify

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "bundle_v1"


def test_golden_bundle_v1_loads_with_its_recorded_hash():
    b = Bundle.load(GOLDEN)
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    assert b.hash == manifest["bundle_hash"]
    assert b.model_id == "tiny-golden" and b.cut_label == "conv1"
    assert [t.shape for t in b.cut] == [(None, 4, 6, 6)]


def test_golden_bundle_v1_verifies_on_this_engine():
    rep = verify(GOLDEN)
    assert rep.ok, rep.messages
    assert rep.native == "ok"
