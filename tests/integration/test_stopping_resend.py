"""A request a stopping server refused (ERROR code `stopping`: it was not run) is sent again, under a new id.

A rolling restart of a shared-subscription group, or a supervisor restarting a lone server: `edgerun serve`
drains on SIGTERM and refuses what still reaches it with `stopping` ("send it again"). The Python and the
C++ device took that like any error (an exception, exit code 6; with exits the deepest exit answered, "server
error: ..."), so requests another worker would have run were lost. Now the device sends the copy at once; the
shared subscription hands it to the group's next worker (`Result.resent`). With nobody subscribed any more the
copy's PUBACK (no matching subscribers) ends the request at once saying the server stopped; a group whose
workers all stop ends it after `RESENDS_MAX` copies (docs/TOPICS.md, "A stopping server").

The stopping worker runs in this process, as `serve()` wires it, with its drain begun (`_Worker.drain(0)`, what
`serve()` does once stopped): every request that reaches it is refused with `stopping`, deterministically. Its
live peer is a real `edgerun serve` process. Nothing here asserts on time: deadlines are generous bounds."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest

from cpp_device_build import same_words
from edgerun import server, transport, wire
from edgerun.device import RESENDS_MAX, Device
from edgerun.errors import FrameError, TransportError

pytestmark = pytest.mark.integration

DEADLINE_MS = 60_000  # a refusal and a resend take a round trip each: a request that waited it out would miss
LOOP_DEADLINE_MS = 500  # a control loop's tick: with exits the exit's answer must come within it
REQUESTS = 4
EXIT_DEADLINE, EXIT_SERVER_ERROR = 5, 6


@contextlib.contextmanager
def stopping_worker(bundle, url: str, *, unsubscribes: bool) -> Iterator[server._Worker]:
    """A worker of the group "edgerun" that is stopping: each request that reaches it is refused with `stopping`.
    ``unsubscribes``: as a lone `serve` that unsubscribed before it refused what it still held, it drops its
    subscription when its first request comes, before it refuses it (on its one connection the broker takes the
    UNSUBSCRIBE first), so the device's copy finds nothing subscribed."""
    w = server._Worker(bundle, 1, wire.DEFAULT_MAX_FRAME_BYTES, "stopping-worker")
    group = transport.shared_request_filter(bundle.model_id, bundle.topic_id, "edgerun")

    def on_message(msg) -> None:
        if unsubscribes:
            w.client.unsubscribe(group)
        w.offer(msg)

    w.client = transport.MqttClient(url, "edgerun-stopping-worker", on_message=on_message, max_queued=0)
    w.client.connect()
    try:
        w.client.subscribe(group)
        w.drain(0)  # nothing was waiting: from now on every request is refused with "stopping"
        yield w
    finally:
        w.client.close()
        w.count_refused()


@pytest.fixture(scope="module")
def exits_bundle(tmp_path_factory):
    from edgerun.exporters import ExportConfig, export

    return export("zoo:digits-cnn", ExportConfig(cut="block1", exits="auto", evaluate=False),
                  tmp_path_factory.mktemp("stopping") / "exits")


def _x(bundle) -> np.ndarray:
    return np.asarray(bundle.samples()[:1], np.float32)


def _cpp(exe, bundle, url: str, tmp_path, *args) -> subprocess.CompletedProcess:
    np.save(tmp_path / "x.npy", _x(bundle))
    return subprocess.run([str(exe), str(bundle.path), "--broker", url, "--input", str(tmp_path / "x.npy"),
                           "--deadline-ms", str(DEADLINE_MS), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


# ------------------------------------------------------------------------------------- a group of two --
def test_a_request_a_stopping_worker_refused_is_answered_by_the_groups_other_worker(digits_bundle, broker,
                                                                                   start_servers, device_engine):
    (live,) = start_servers(1, "--worker-id", "live")
    x = _x(digits_bundle)
    with stopping_worker(digits_bundle, broker.url, unsubscribes=False) as w, \
            Device(digits_bundle, broker=broker.url, engine=device_engine) as dev:
        results = [dev.infer(x, deadline_ms=DEADLINE_MS) for _ in range(REQUESTS)]
    # Mosquitto hands the group's messages out in turn: a request that met the stopping worker has its copy
    # answered by the live one (before, it raised FrameError "stopping")
    resent = [r for r in results if r.resent]
    assert resent, "no request met the stopping worker: the test proves nothing"
    assert all(r.answered_by == "server" and r.worker == "live" for r in results)
    assert all(r.resent == 1 and r.reason == "server replied (resent 1x: a worker was stopping)" for r in resent)
    assert all(not r.hedged for r in results) and dev.resent == len(resent)
    assert all(np.array_equal(r.output["logits"], results[0].output["logits"]) for r in results)
    assert w.stats.errors == {"stopping": len(resent)} and w.stats.served == 0
    assert dev.dropped_replies == 0
    assert live.stop() == 0


def test_a_group_whose_workers_all_stop_gets_a_bounded_number_of_copies(digits_bundle, broker, device_engine):
    """Each copy meets a stopping worker (here the same one, still subscribed): no loop, the request ends with the
    `stopping` error saying how often it was sent."""
    with stopping_worker(digits_bundle, broker.url, unsubscribes=False) as w, \
            Device(digits_bundle, broker=broker.url, engine=device_engine) as dev:
        with pytest.raises(FrameError, match=rf"\(stopping\): this server is stopping.*this device sent it "
                                             rf"{RESENDS_MAX + 1} times: each copy met a stopping worker") as e:
            dev.infer(_x(digits_bundle), deadline_ms=DEADLINE_MS)
        assert e.value.code == "stopping" and dev.resent == RESENDS_MAX
    assert w.stats.errors == {"stopping": RESENDS_MAX + 1}


# ------------------------------------------------------------------------------------- a lone server --
def test_a_lone_stopped_server_ends_the_request_at_the_copys_puback_saying_it_stopped(digits_bundle, broker,
                                                                                     device_engine):
    with stopping_worker(digits_bundle, broker.url, unsubscribes=True) as w, \
            Device(digits_bundle, broker=broker.url, engine=device_engine) as dev:
        with pytest.raises(TransportError) as e:
            dev.infer(_x(digits_bundle), deadline_ms=DEADLINE_MS)
        assert dev.resent == 1
    why = str(e.value)
    assert why.startswith("no server took request ") and "answered `stopping` (shut down or restarting)" in why
    assert "nothing subscribes to" in why and "any more (No matching subscribers)" in why
    assert "is back, or run two workers in one --group" in why and digits_bundle.topic_id in why
    assert w.stats.errors == {"stopping": 1}


def test_with_exits_a_lone_stopped_server_leaves_the_answer_to_the_exit_within_the_loops_deadline(exits_bundle,
                                                                                                 broker):
    deepest = f"exit:{len(exits_bundle.manifest['exits']['points']) - 1}"
    with stopping_worker(exits_bundle, broker.url, unsubscribes=True) as w, \
            Device(exits_bundle, broker=broker.url, budget="off") as dev:
        r = dev.infer(_x(exits_bundle), deadline_ms=LOOP_DEADLINE_MS)
        # ended at the copy's PUBACK, not by the deadline; later requests stay local for a while, then try again
        assert r.answered_by == deepest and r.resent == 1
        assert r.reason.startswith("server unreachable: no server took request ")
        assert "answered `stopping`" in r.reason and "deadline" not in r.reason
        again = dev.infer(_x(exits_bundle), deadline_ms=LOOP_DEADLINE_MS)
        assert again.answered_by == deepest and "; retrying in" in again.reason and again.resent == 0
    assert w.stats.errors == {"stopping": 1}


# ------------------------------------------------------------------------------------- the C++ device --
def test_the_cpp_device_sends_a_refused_request_to_the_groups_other_worker(cpp_device, digits_bundle, broker,
                                                                          start_servers, tmp_path):
    (live,) = start_servers(1, "--worker-id", "live")
    with stopping_worker(digits_bundle, broker.url, unsubscribes=False) as w:
        r = _cpp(cpp_device, digits_bundle, broker.url, tmp_path, "--repeat", REQUESTS)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["worker"] == "live" and got["repeat"]["hedged"] == 0
    resent = got["repeat"]["resent"]
    assert 1 <= resent <= REQUESTS and w.stats.errors == {"stopping": resent}  # at most one copy each
    assert got["resent"] in (0, 1)
    if got["resent"]:
        assert got["reason"] == "server replied (resent 1x: a worker was stopping)"
    assert live.stop() == 0


def test_the_cpp_device_ends_a_request_every_worker_refuses_as_the_python_device(cpp_device, digits_bundle,
                                                                                broker, tmp_path):
    with stopping_worker(digits_bundle, broker.url, unsubscribes=False) as w:
        r = _cpp(cpp_device, digits_bundle, broker.url, tmp_path)
        with Device(digits_bundle, broker=broker.url, engine="ort") as dev, pytest.raises(FrameError) as e:
            dev.infer(_x(digits_bundle), deadline_ms=DEADLINE_MS)
    assert r.returncode == EXIT_SERVER_ERROR, r.stderr
    why = r.stderr.split("error: ", 1)[1].strip()
    assert f"this device sent it {RESENDS_MAX + 1} times" in why and same_words(why) == same_words(str(e.value))
    assert w.stats.errors == {"stopping": 2 * (RESENDS_MAX + 1)}


@pytest.mark.parametrize("with_exits", [False, True])
def test_the_cpp_device_tells_a_lone_stopped_server_as_the_python_device(cpp_device, digits_bundle, exits_bundle,
                                                                         broker, tmp_path, with_exits):
    b = exits_bundle if with_exits else digits_bundle
    extra = ("--budget", "off", "--deadline-ms", LOOP_DEADLINE_MS) if with_exits else ()
    with stopping_worker(b, broker.url, unsubscribes=True):
        r = _cpp(cpp_device, b, broker.url, tmp_path, *extra)
    with stopping_worker(b, broker.url, unsubscribes=True), \
            Device(b, broker=broker.url, engine="ort" if not with_exits else "native",
                   budget="off" if with_exits else None) as dev:
        if with_exits:
            want = dev.infer(_x(b), deadline_ms=LOOP_DEADLINE_MS).reason
        else:
            with pytest.raises(TransportError) as e:
                dev.infer(_x(b), deadline_ms=DEADLINE_MS)
            want = str(e.value)
    if with_exits:
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert got["answered_by"] == f"exit:{len(b.manifest['exits']['points']) - 1}" and got["resent"] == 1
        why = got["reason"]
    else:
        assert r.returncode == EXIT_DEADLINE, r.stderr
        why = r.stderr.split("error: ", 1)[1].strip()
    assert "answered `stopping` (shut down or restarting)" in why and same_words(why) == same_words(want)
