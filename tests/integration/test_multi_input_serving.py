"""A robot actor-critic with two inputs (camera image, joint state) and two outputs (action scores, value),
served for real: `edgerun export`, `edgerun serve`, then `edgerun run --input x.npz --json` and
`edgerun.Device.infer({...})`. The joint state passes through the cut to the server; every answer, both
outputs, equals the torch model's."""

from __future__ import annotations

import json
import subprocess

import numpy as np

from edgerun.bundle import Bundle
from robot_policy import POLICY



def test_a_two_input_two_output_policy_is_served_and_answers_as_torch(tmp_path, cli_argv, broker, serve_bundle):
    import torch

    from edgerun.device import Device

    model_py = tmp_path / "policy.py"
    model_py.write_text(POLICY)
    out = tmp_path / "bundle"
    r = subprocess.run([*cli_argv, "export", f"{model_py}:actor_critic", "--cut", "vision.1", "--no-eval",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    bundle = Bundle.load(out)
    assert bundle.passthrough == ["joints"] and [s.name for s in bundle.outputs] == ["action", "value"]
    serve_bundle(bundle)

    namespace: dict = {}
    exec(POLICY, namespace)
    module, _ = namespace["actor_critic"]()
    g = torch.Generator().manual_seed(1)
    image, joints = torch.randn(3, 3, 16, 16, generator=g), torch.randn(3, 5, generator=g)
    with torch.no_grad():
        want = {k: v.numpy() for k, v in module.eval()(image, joints).items()}

    np.savez(tmp_path / "x.npz", image=image.numpy(), joints=joints.numpy())
    r = subprocess.run([*cli_argv, "run", str(out), "--broker", broker.url, "--input", str(tmp_path / "x.npz"),
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rec["answered_by"] for rec in lines] == ["server"] * 3
    for name in ("action", "value"):
        got = np.array([rec["outputs"][name]["output"] for rec in lines])
        np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-5)
    assert [rec["output"] for rec in lines] == [rec["outputs"]["action"]["output"] for rec in lines]

    with Device(bundle, broker=broker.url) as dev:  # the whole batch in one request, inputs by name
        res = dev.infer({"image": image.numpy(), "joints": joints.numpy()}, deadline_ms=10000)
    for name in ("action", "value"):
        np.testing.assert_allclose(res.output[name], want[name], rtol=1e-5, atol=1e-5)


def test_inputs_with_different_batch_sizes_are_refused_before_anything_is_sent(tmp_path, broker):
    """Device.infer({"image": 3 samples, "joints": 2}) was sent: the server refused it saying that "device and
    server disagree on bundle ..." (a bundle mismatch, which it was not); an input the front half does not read
    (unused by the model) with 3 rows beside 2 images was answered without a word."""
    import pytest

    from edgerun.device import Device
    from edgerun.errors import ConfigError
    from edgerun.exporters.pipeline import ExportConfig, export

    model_py = tmp_path / "policy.py"
    model_py.write_text(POLICY)
    bundle = export(f"{model_py}:actor_critic", ExportConfig(cut="vision.1", evaluate=False), tmp_path / "bundle")
    rng = np.random.default_rng(0)
    image, joints = rng.standard_normal((3, 3, 16, 16), np.float32), rng.standard_normal((2, 5), np.float32)
    with Device(bundle, broker=broker.url) as dev:  # no server: a request sent would time out
        with pytest.raises(ConfigError, match=r"inputs hold different numbers of samples \(image: 3, joints: 2\): "
                                              r"give every input the same batch size on axis 0"):
            dev.infer({"image": image, "joints": joints}, deadline_ms=500)


def test_an_empty_batch_is_refused_saying_so(digits_bundle, broker):
    """A batch of 0 samples went to the engine, which said "batch 0 is outside 1..max_batch: split the batch"."""
    import pytest

    from edgerun.device import Device
    from edgerun.errors import ConfigError

    x = np.zeros((0, *digits_bundle.inputs[0].shape[1:]), np.float32)
    with Device(digits_bundle, broker=broker.url) as dev:
        with pytest.raises(ConfigError, match=r"an empty batch \(0 samples\): give at least one sample"):
            dev.infer(x, deadline_ms=500)
