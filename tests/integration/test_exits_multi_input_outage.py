"""A two-input robot policy (camera image, joint state) with early exits, against a real Mosquitto and a real
`edgerun serve`: while the server is up it answers (the joints crossing the cut beside the image features);
once it is killed the device answers every request alone from its deepest exit, and those answers are what
the exported exit head computes in onnxruntime from the same image AND joints."""

from __future__ import annotations

import json
import signal
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

from edgerun.bundle import Bundle
from robot_policy import export_with_exits

DEADLINE_MS = 400.0     # per request once the server is gone; generous for a loaded 2-core box
SERVER_ATOL = 1e-5      # split (native front + ort back) vs the whole model
HEAD_ATOL = 1e-4        # the device's exit answer (native segments) vs the exported ONNX segments in onnxruntime
N_SAMPLES = 320


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Bundle:
    return export_with_exits(tmp_path_factory.mktemp("policy"), N_SAMPLES)


def _session(bundle: Bundle, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle.file(name)), providers=["CPUExecutionProvider"])


def _deepest_head_in_ort(bundle: Bundle, x: dict[str, np.ndarray]) -> np.ndarray:
    """The exit segments chained in onnxruntime from their ONNX files; the last head's output."""
    cur = head = None
    for p in bundle.manifest["exits"]["points"]:
        s = _session(bundle, p["onnx"])
        run = {i.name: (cur if p["index"] > 0 and i.name == p["input"] else x[i.name]) for i in s.get_inputs()}
        cur, head = s.run([p["tensor"], p["head"]], run)
    return head


def _inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((n, 3, 16, 16)).astype(np.float32),
            "joints": rng.standard_normal((n, 5)).astype(np.float32)}


def test_server_killed_the_device_answers_alone_from_image_and_joints(policy, broker, serve_bundle, cli_argv,
                                                                      tmp_path):
    from edgerun.device import Device

    assert policy.passthrough == ["joints"]
    engine = "native" if all(p["erg"] for p in policy.manifest["exits"]["points"]) else "ort"
    x = _inputs(12, seed=7)
    whole = _session(policy, "whole.onnx").run(None, x)[0]
    deepest = len(policy.manifest["exits"]["points"]) - 1
    server = serve_bundle(policy)
    with Device(policy, broker=broker.url, engine=engine, budget="off") as dev:
        before = [dev.infer({k: v[i: i + 1] for k, v in x.items()}, deadline_ms=DEADLINE_MS * 25) for i in range(4)]
        assert [r.answered_by for r in before] == ["server"] * 4, [r.reason for r in before]
        np.testing.assert_allclose(np.concatenate([r.output["logits"] for r in before]), whole[:4], atol=SERVER_ATOL)

        server.stop(signal.SIGKILL)
        after = [dev.infer({k: v[i: i + 1] for k, v in x.items()}, deadline_ms=DEADLINE_MS) for i in range(len(whole))]
    assert all(r.local and r.answered_by == f"exit:{deepest}" for r in after), [r.reason for r in after]
    assert all(r.reason.startswith(("deadline:", "server unreachable:")) for r in after)
    got = np.concatenate([r.output["logits"] for r in after])
    np.testing.assert_allclose(got, _deepest_head_in_ort(policy, x), atol=HEAD_ATOL)

    # Same image, other joints: the device's own answer follows the joints (its head reads them).
    moved = dict(x, joints=x["joints"][::-1].copy())
    with Device(policy, broker=broker.url, engine=engine, budget="off") as dev:
        other = np.concatenate([dev.infer({k: v[i: i + 1] for k, v in moved.items()}, deadline_ms=DEADLINE_MS)
                                .output["logits"] for i in range(len(whole))])
    np.testing.assert_allclose(other, _deepest_head_in_ort(policy, moved), atol=HEAD_ATOL)
    assert np.abs(other - got).max() > 1e-3

    # The command line's device: `edgerun run --input x.npz` with no server answers from the exits, one line each.
    np.savez(tmp_path / "x.npz", **x)
    r = subprocess.run([*cli_argv, "run", str(policy.path), "--broker", broker.url, "--input", str(tmp_path / "x.npz"),
                        "--budget", "off", "--deadline-ms", str(DEADLINE_MS), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rec["answered_by"] for rec in lines] == [f"exit:{deepest}"] * len(whole)
    np.testing.assert_allclose(np.array([rec["output"] for rec in lines]), got, atol=HEAD_ATOL)


def test_confident_exits_answer_part_of_the_requests_with_the_server_up(policy, broker, serve_bundle):
    from edgerun.device import Device

    x = _inputs(24, seed=8)
    whole = _session(policy, "whole.onnx").run(None, x)[0]
    serve_bundle(policy)
    with Device(policy, broker=broker.url, budget="fast") as dev:
        rs = [dev.infer({k: v[i: i + 1] for k, v in x.items()}, deadline_ms=DEADLINE_MS * 25) for i in range(24)]
    local = [i for i, r in enumerate(rs) if r.local]
    served = [i for i, r in enumerate(rs) if not r.local]
    assert local and served, [r.reason for r in rs]  # the fast budget answers ~half of them on the device
    assert all(rs[i].reason.startswith("confident: max_prob") for i in local)
    for i in served:
        np.testing.assert_allclose(rs[i].output["logits"], whole[i: i + 1], atol=SERVER_ATOL)
