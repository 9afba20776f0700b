"""`edgerun serve A B`: one process serves the back halves of two bundles (two models on one GPU server,
or two versions of one model while devices update), each on its own topics; one SIGTERM stops both,
and each bundle's stats come out on its own line."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import ServerProc, wait_servers_online
from edgerun.bundle import Bundle
from edgerun.device import Device
from edgerun.engine import make_engine


@pytest.fixture(scope="module")
def second_bundle(tmp_path_factory) -> Bundle:
    """The digits CNN cut elsewhere: another bundle hash, so other topics."""
    from edgerun.exporters.pipeline import ExportConfig, export

    return export("zoo:digits-cnn", ExportConfig(cut="block1", evaluate=False), tmp_path_factory.mktemp("b2") / "b")


def test_one_process_serves_two_bundles_and_stops_them_together(digits_bundle, second_bundle, broker):
    assert digits_bundle.hash != second_bundle.hash
    server = ServerProc(digits_bundle, broker.url, str(second_bundle.path))
    try:
        wait_servers_online(digits_bundle, broker.url, 1, [server])
        wait_servers_online(second_bundle, broker.url, 1, [server])
        for b, n in ((digits_bundle, 3), (second_bundle, 5)):
            x = b.samples()[:n].astype(np.float32)
            want = make_engine("ort", onnx_path=b.path / "whole.onnx").run(x)[b.outputs[0].name]
            with Device(b, broker=broker.url) as dev:
                for i in range(n):
                    got = dev.infer(x[i:i + 1], deadline_ms=10000).output[b.outputs[0].name]
                    np.testing.assert_allclose(got, want[i:i + 1], rtol=1e-5, atol=1e-5)
    finally:
        assert server.stop() == 0, server.stderr[-2000:]
    lines = [json.loads(ln) for ln in server.stdout.splitlines() if ln.startswith("{")]
    assert [(ln["bundle"], ln["served"]) for ln in lines] == [(str(digits_bundle.path), 3), (str(second_bundle.path), 5)]


def test_a_bad_bundle_among_several_stops_before_any_is_served(digits_bundle, broker, cli_argv, tmp_path):
    r = subprocess.run([*cli_argv, "serve", str(digits_bundle.path), str(tmp_path / "missing"), "--broker", broker.url],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*cli_argv, "serve", str(digits_bundle.path), str(digits_bundle.path), "--broker", broker.url],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "are the same bundle" in r.stderr


def test_the_same_bundle_as_a_directory_and_an_archive_is_named_as_the_user_gave_it(digits_bundle, tmp_path):
    """The refusal named the archive's unpacked copy ("/tmp/edgerun-bundle-wbr1v9by/b and b are the same bundle"),
    a directory the user never saw, instead of the archive given."""
    from edgerun.errors import ConfigError
    from edgerun.pack import pack
    from edgerun.multi_server import serve_many

    archive = tmp_path / "b.tar.gz"
    pack(digits_bundle.path, "server", archive)
    with pytest.raises(ConfigError) as err:
        serve_many([str(digits_bundle.path), str(archive)], "mqtt://127.0.0.1:1")
    assert f"{archive} and {digits_bundle.path} are the same bundle" in str(err.value)
