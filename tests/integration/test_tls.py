"""Split inference over MQTT with TLS and client certificates, with real processes: a Mosquitto that
requires certificates of its CA, `edgerun serve` and `edgerun run` given mqtts:// URLs. Every answer
equals the whole model; a device without a client certificate is told what to add, and nothing is sent."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from conftest import ServerProc, wait_servers_online
from edgerun.broker import Mosquitto
from edgerun.engine import make_engine

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="openssl makes the test certificates")


def test_serve_and_run_over_mutual_tls_answer_as_the_whole_model(digits_bundle, cli_argv):
    with Mosquitto(tls=True, require_client_cert=True) as broker:
        server = ServerProc(digits_bundle, broker.url)
        try:
            wait_servers_online(digits_bundle, broker.url, 1, [server])
            r = subprocess.run([*cli_argv, "run", str(digits_bundle.path), "--broker", broker.url, "--limit", "4",
                                "--json"], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr[-2000:]
            got = np.array([json.loads(line)["output"] for line in r.stdout.splitlines()], dtype=np.float32)
            x = digits_bundle.samples()[:4].astype(np.float32)
            want = make_engine("ort", onnx_path=digits_bundle.path / "whole.onnx").run(x)[digits_bundle.outputs[0].name]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

            bad = subprocess.run([*cli_argv, "run", str(digits_bundle.path), "--broker", broker.url_without_client_cert,
                                  "--limit", "1"], capture_output=True, text=True, timeout=120)
            assert bad.returncode != 0
            assert "does it require a client certificate? then add &cert=CLIENT.pem&key=CLIENT.key" in bad.stderr
            assert "Traceback" not in bad.stderr
        finally:
            assert server.stop() == 0, server.stderr[-2000:]
    assert server.stats()["served"] == 4  # the refused device sent nothing
