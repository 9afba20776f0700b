"""A server started on the server's pack and a device on the device's pack (`edgerun pack`) find
each other (same bundle hash, same topics) and answer as the whole bundle does: real Mosquitto, a
real `serve` process on the archive."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ServerProc, wait_servers_online
from edgerun.device import Device
from edgerun.engine import make_engine
from edgerun.pack import pack

pytestmark = pytest.mark.integration


def test_the_two_packs_serve_and_answer_like_the_whole_bundle(digits_bundle, broker, tmp_path):
    dev = pack(digits_bundle.path, "device", tmp_path / "device.tar.gz")
    srv = pack(digits_bundle.path, "server", tmp_path / "server.tar.gz")
    assert "back.onnx" in dev["left_out"] and "front.erg" in srv["left_out"]
    server = ServerProc(SimpleNamespace(path=srv["out"]), broker.url)
    try:
        wait_servers_online(digits_bundle, broker.url, 1, [server])
        x = digits_bundle.samples()[:4].astype(np.float32)
        with Device(dev["out"], broker=broker.url) as device:
            got = device.infer(x, deadline_ms=30_000)
        assert got.answered_by == "server"
        whole = make_engine("ort", onnx_path=digits_bundle.file("whole.onnx"))
        name = digits_bundle.outputs[0].name
        np.testing.assert_allclose(got.output[name], whole.run({digits_bundle.inputs[0].name: x})[name],
                                   rtol=1e-4, atol=1e-4)
    finally:
        assert server.stop() == 0, server.stderr[-3000:]
