"""`edgerun serve A B`: one process serves the back halves of two bundles (two models on one GPU server,
or two versions of one model while devices update), each on its own topics; one SIGTERM stops both,
and each bundle's stats come out on its own line."""

from __future__ import annotations

import json
import signal
import subprocess
import threading

import numpy as np
import pytest

from conftest import ServerProc, wait_servers_online
from edgerun import transport, wire
from edgerun.bundle import Bundle
from edgerun.device import Device
from edgerun.engine import make_engine

from test_bad_frames import good_frame  # noqa: E402 - same folder

WAIT_S = 60.0


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


class _Flood:
    """A device that sends requests as fast as its client takes them and counts what comes back."""

    def __init__(self, b, url: str, name: str) -> None:
        self.b, self.lock = b, threading.Condition()
        self.req = transport.request_topic(b.model_id, b.topic_id, name)
        self.resp = transport.response_topic(b.model_id, b.topic_id, name)
        self.answers: dict[int, int] = {}
        self.refused: set[int] = set()
        self.refusals = transport.Refusals(self._refused)
        self.c = transport.MqttClient(url, f"edgerun-{name}", on_message=self._on, max_queued=0,
                                      refusals=self.refusals)
        self.c.connect()
        self.c.subscribe(self.resp)
        self.sent: list = []

    def _refused(self, rid: int, why: str) -> None:
        with self.lock:
            self.refused.add(rid)

    def _on(self, msg) -> None:
        with self.lock:
            rid = transport.correlation_id(msg.properties.CorrelationData)
            self.answers[rid] = self.answers.get(rid, 0) + 1
            self.lock.notify_all()

    def send(self, n: int) -> None:
        payload = wire.encode(good_frame(self.b, 1))  # the request id a server answers is the correlation's
        for rid in range(1, n + 1):
            info = self.c.publish(self.req, payload, response_topic=self.resp,
                                  correlation=transport.correlation_bytes(rid))
            self.refusals.watch(info.mid, rid)
            self.sent.append(info)



def test_serve_a_b_stopped_mid_flood_sends_every_answer_it_counts(digits_bundle, second_bundle, broker):
    """Requests that reached a stopping worker after its drain were refused ("stopping") and counted as answered,
    but their ERROR frames went out after its final presence and it disconnected with them unsent: with two
    bundles flooded (3,000 requests each) up to 312 of one bundle's got no answer, and the stats said they had."""
    server = ServerProc(digits_bundle, broker.url, str(second_bundle.path), "--max-batch", "4")
    floods = []
    try:
        wait_servers_online(digits_bundle, broker.url, 1, [server])
        wait_servers_online(second_bundle, broker.url, 1, [server])
        floods = [_Flood(b, broker.url, f"flood-{i}") for i, b in enumerate((digits_bundle, second_bundle))]
        sending = [threading.Thread(target=f.send, args=(3000,)) for f in floods]
        for s in sending:
            s.start()
        for f in floods:  # a backlog at the broker: requests still come after the worker's drain
            with f.lock:
                assert f.lock.wait_for(lambda: len(f.answers) >= 100 and len(f.sent) >= 1500, WAIT_S)
        rc: list[int] = []
        stopper = threading.Thread(target=lambda: rc.append(server.stop(signal.SIGTERM)))
        stopper.start()  # while requests still come
        for s in sending:
            s.join()
        stopper.join()
        assert rc == [0], server.stderr[-2000:]
        lines = [json.loads(ln) for ln in server.stdout.splitlines() if ln.startswith("{")]
        for f, line in zip(floods, lines):
            for info in f.sent:
                info.wait_for_publish(WAIT_S)
            stats = line["stats"]
            answered = stats["served"] + sum(stats["errors"].values())
            with f.lock:
                f.lock.wait_for(lambda: sum(f.answers.values()) >= answered, 10)
                got = sum(f.answers.values())
            assert got == answered, f"{line['bundle']}: the server counted {answered} answers, the device got {got}"
            assert all(n == 1 for n in f.answers.values())
            assert stats["received"] == answered + sum(stats["dropped"].values()) + sum(stats["undelivered"].values())
    finally:
        for f in floods:
            f.c.close()
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL)
