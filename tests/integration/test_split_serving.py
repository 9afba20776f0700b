"""Split answers over a real broker and a real `edgerun serve` equal the whole model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgerun.device import Device

pytestmark = pytest.mark.integration

# fp32 front (native or ORT) + fp32 back half vs the whole fp32 graph on ORT: only
# summation-order differences remain.
SPLIT_VS_WHOLE_ATOL = 1e-4
SPLIT_VS_WHOLE_RTOL = 1e-4


def whole_model(bundle, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(bundle.file("whole.onnx")), providers=["CPUExecutionProvider"])
    return sess.run(None, {bundle.inputs[0].name: x})[0]


@pytest.mark.parametrize("engine", ["native", "ort"])
def test_split_answers_equal_the_whole_model(digits_bundle, digits_test_set, broker, start_servers, engine):
    if engine == "native" and not digits_bundle.native_ok:
        pytest.skip(f"native engine cannot run this front half: {digits_bundle.native_reason}")
    x, y = digits_test_set
    ref = whole_model(digits_bundle, x)
    start_servers(1)
    out_name = digits_bundle.outputs[0].name
    with Device(digits_bundle, broker=broker.url, engine=engine) as dev:
        singles = [dev.infer(x[i : i + 1]) for i in range(len(x))]
        batch = dev.infer(x[:16])
    got = np.concatenate([r.output[out_name] for r in singles])
    np.testing.assert_allclose(got, ref, atol=SPLIT_VS_WHOLE_ATOL, rtol=SPLIT_VS_WHOLE_RTOL)
    np.testing.assert_allclose(batch.output[out_name], ref[:16], atol=SPLIT_VS_WHOLE_ATOL, rtol=SPLIT_VS_WHOLE_RTOL)
    assert (got.argmax(1) == ref.argmax(1)).all()
    # the digits CNN is a real model: it must actually classify the held-out digits
    assert (got.argmax(1) == y).mean() >= 0.9
    r = singles[0]
    assert r.answered_by == "server" and r.reason == "server replied" and r.worker.startswith("server-")
    assert set(r.timings_ms) == {"device", "encode", "network", "server", "decode", "total"}
    assert all(v >= 0 for v in r.timings_ms.values())
    # the stages partition the request: the reply's hand-over from paho's thread was in none of them
    for one in singles:
        t = one.timings_ms
        stages = t["device"] + t["encode"] + t["network"] + t["server"] + t["decode"]
        assert stages == pytest.approx(t["total"], abs=1e-6)
    assert len({r.request_id for r in singles}) == len(singles)
    assert dev.dropped_replies == 0


def test_wrong_input_shape_is_a_config_error_before_anything_is_sent(digits_bundle, broker):
    from edgerun.errors import ConfigError

    with Device(digits_bundle, broker=broker.url, engine="ort") as dev:
        with pytest.raises(ConfigError, match="shape"):
            dev.infer(np.zeros((8, 8), np.float32))
        with pytest.raises(ConfigError, match="float32"):
            dev.infer(np.zeros((1, *digits_bundle.inputs[0].shape[1:]), np.float64))
