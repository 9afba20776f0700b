"""A split LLM over a real Mosquitto with real ``edgerun serve`` workers: sessions pinned to a worker,
and replayed when that worker dies, freezes or loses the session. No answer is lost (the generation
is the one the halves give in-process) and none is given twice (each step takes one reply)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest

from edgerun import llm, transport, wire
from edgerun.errors import TransportError
from edgerun.llm_device import LlmDevice

PROMPT = "Name three colours of the rainbow."
N_TOKENS = 14
STEP_TIMEOUT_S = 120  # where a test needs no timeout: a 1018-position prefill takes ~2 s on an idle 2-core machine


@pytest.fixture(scope="module")
def reference(llm_bundle):
    """Greedy tokens for PROMPT through the two halves in this process: what every run must produce."""
    return _greedy(llm_bundle)


def _greedy(b: llm.LlmBundle, code=None) -> list[int]:
    tok = llm.Tokenizer(b)
    front, back = llm.Half(b, "front", 2), llm.Half(b, "back", 2)
    fc, bc, out = front.new_cache(), back.new_cache(), []
    x = np.array([tok.chat(PROMPT)], np.int64)
    for _ in range(N_TOKENS):
        h = front.step(x, fc)
        t = int(back.step(h if code is None else code(h), bc).argmax())
        out.append(t)
        if t == b.spec.eos:
            break
        x = np.array([[t]], np.int64)
    return out


@pytest.fixture(scope="module")
def coded_reference(llm_tsq):
    """Greedy tokens for PROMPT with the hidden states through tsq (encode + decode) in this process."""
    from edgerun import codec

    b, _ = llm_tsq
    p = codec.TSQParams.from_bytes(bytes.fromhex(b.codec["params"]["hidden"]))
    return _greedy(b, lambda h: codec.decode_native(codec.encode_native(h, p), h.shape, p))


@pytest.fixture
def workers(llm_bundle, broker, wait_online):
    from tests.integration.conftest import ServerProc

    started: list[ServerProc] = []

    def start(n: int, *extra: str, first: int = 0, bundle: llm.LlmBundle | None = None,
              wait: bool = True) -> list[ServerProc]:
        b = bundle or llm_bundle
        ps = [ServerProc(b, broker.url, "--worker-id", f"w{first + i}", *extra) for i in range(n)]
        started.extend(ps)
        if wait:
            wait_online(b, broker.url, n, ps)
        return ps

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.send(signal.SIGCONT)
            p.stop(signal.SIGKILL)


def _after_step(dev: LlmDevice, n: int, action) -> None:
    """Run ``action(generation)`` once, before the device sends step ``n`` (chains an earlier hook)."""
    prev, done = dev.before_step, []

    def hook(g):
        if prev is not None:
            prev(g)
        if len(g.steps) == n and not done:
            done.append(True)
            action(g)

    dev.before_step = hook


def _check_each_position_answered_once(g, prompt_tokens: int) -> None:
    pos = [s.position for s in g.steps]
    assert pos == [0] + list(range(prompt_tokens, prompt_tokens + len(g.steps) - 1))


def test_a_session_stays_on_one_worker_and_decodes_like_the_halves_in_process(llm_bundle, broker, workers, reference):
    workers(2)
    with LlmDevice(llm_bundle, broker.url, step_timeout_s=STEP_TIMEOUT_S) as dev:
        g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
    assert g.tokens == reference and g.replays == 0 and len(g.workers) == 1
    _check_each_position_answered_once(g, g.prompt_tokens)
    assert g.steps[0].positions == g.prompt_tokens and all(s.positions == 1 for s in g.steps[1:])
    # up: the prompt's hidden states once, then one position per token (plus frame headers)
    assert 576 * 4 * (g.prompt_tokens + len(g.steps) - 1) < g.bytes_up < 576 * 4 * (g.prompt_tokens + len(g.steps)) + 400 * len(g.steps)


def test_when_the_pinned_worker_is_killed_the_session_is_replayed_on_another(llm_bundle, broker, workers, reference):
    procs = workers(2)
    with LlmDevice(llm_bundle, broker.url, step_timeout_s=30) as dev:
        _after_step(dev, 4, lambda g: procs[int(g.steps[-1].worker[1:])].send(signal.SIGKILL))
        g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
    assert g.tokens == reference
    assert g.replays == 1 and len(g.workers) == 2
    replayed = next(s for s in g.steps if s.replays)
    assert "went offline" in replayed.why  # its last will, not the 30 s timeout
    assert replayed.positions == replayed.position + 1  # the whole session so far, in one request
    _check_each_position_answered_once(g, g.prompt_tokens)


def test_a_replay_after_the_last_worker_died_waits_for_its_replacement_to_come_online(
        llm_bundle, broker, workers, reference):
    """The broker drops a request no one subscribes to: the replay goes out once the new worker says online."""
    procs = workers(1)

    def replace(g):
        procs[0].send(signal.SIGKILL)
        workers(1, first=1, wait=False)  # loads its back half for a few seconds

    with LlmDevice(llm_bundle, broker.url, step_timeout_s=120) as dev:
        _after_step(dev, 4, replace)
        g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
    assert g.tokens == reference
    assert g.workers == ["w0", "w1"] and g.replays == 1  # not a lost replay, then a timeout and another
    assert "went offline" in next(s.why for s in g.steps if s.replays)
    _check_each_position_answered_once(g, g.prompt_tokens)


def test_a_frozen_worker_is_replayed_around_and_its_late_answer_is_not_taken(llm_bundle, broker, workers, reference):
    procs = workers(2)
    frozen = []

    def freeze(g):
        p = procs[int(g.steps[-1].worker[1:])]
        p.send(signal.SIGSTOP)
        frozen.append(p)
        dev.step_timeout_s = 3  # only while it is frozen: a slow step elsewhere is not a replay

    def thaw(g):
        frozen[0].send(signal.SIGCONT)  # it then answers the request it held
        dev.step_timeout_s = STEP_TIMEOUT_S

    with LlmDevice(llm_bundle, broker.url, step_timeout_s=STEP_TIMEOUT_S) as dev:
        _after_step(dev, 3, freeze)
        _after_step(dev, 6, thaw)
        g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
    assert g.tokens == reference
    # the broker's shared subscription may hand the replay to the frozen worker once more: 1 or 2 replays
    assert 1 <= g.replays <= 2 and "no reply within 3 s" in next(s.why for s in g.steps if s.replays)
    _check_each_position_answered_once(g, g.prompt_tokens)


def test_a_session_evicted_by_the_worker_is_replayed(llm_bundle, broker, workers, reference):
    workers(1, "--max-sessions", "1")
    other = _RawClient(llm_bundle, broker.url)
    try:
        with LlmDevice(llm_bundle, broker.url, step_timeout_s=STEP_TIMEOUT_S) as dev:
            # another session takes the worker's only slot between two of ours
            _after_step(dev, 5, lambda g: other.ask("ab" * 16, 0, np.zeros((1, 2, 576), np.float32)))
            g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
    finally:
        other.close()
    assert g.tokens == reference
    assert g.replays == 1 and next(s.why for s in g.steps if s.replays).startswith("session_lost")


def test_no_worker_is_a_transport_error_after_the_replays(llm_bundle, broker):
    with LlmDevice(llm_bundle, broker.url, step_timeout_s=0.5, max_replays=1) as dev:
        with pytest.raises(TransportError, match="no server worker answered position 0 .* `edgerun serve` workers"):
            dev.generate(PROMPT, max_new_tokens=2)


class _RawClient:
    """Sends hand-made request frames to the shared topic and returns the decoded answer."""

    def __init__(self, b: llm.LlmBundle, url: str) -> None:
        self.b, self.inbox, self.rid = b, queue.Queue(), 100
        self.resp = transport.response_topic(b.model_id, b.topic_id, "raw")
        self.c = transport.MqttClient(url, f"raw-{os.getpid()}", on_message=self.inbox.put)
        self.c.connect()
        self.c.subscribe(self.resp)

    def ask(self, session, seq: int, h, **meta) -> wire.Frame:
        self.send(session, seq, h, **meta)
        return wire.decode(self.inbox.get(timeout=30).payload)

    def send(self, session, seq: int, h, **meta) -> int:
        self.rid += 1
        frame = wire.encode(wire.Frame(kind=wire.Kind.REQUEST, request_id=self.rid, seq=seq,
                                       bundle_hash=self.b.hash16, tensors=[h], meta={"session": session, **meta}))
        self.c.publish(transport.request_topic(self.b.model_id, self.b.topic_id, "raw"), frame,
                       response_topic=self.resp, correlation=transport.correlation_bytes(self.rid))
        return self.rid

    def close(self) -> None:
        self.c.close()


def test_the_server_answers_bad_session_requests_with_clear_error_codes(llm_bundle, broker, workers):
    procs = workers(1)
    raw = _RawClient(llm_bundle, broker.url)
    h = np.random.default_rng(0).normal(size=(1, 3, 576)).astype(np.float32)
    sid = "0123456789abcdef" * 2
    try:
        def code(f):
            return f.meta.get("code") if f.kind == wire.Kind.ERROR else "ok"

        assert code(raw.ask(sid, 5, h)) == "session_lost"
        first = raw.ask(sid, 0, h)
        assert code(first) == "ok" and first.meta["session_len"] == 3
        assert first.tensors[0].shape == (1, 8) and first.tensors[1].dtype == np.float32
        assert code(raw.ask(sid, 7, h[:, :1])) == "session_gap"
        again = raw.ask(sid, 0, h)  # a resend: the same answer, the cache cut back first
        assert again.meta["session_len"] == 3 and np.array_equal(again.tensors[0], first.tensors[0])
        assert np.array_equal(again.tensors[1], first.tensors[1])
        assert code(raw.ask("not-hex", 0, h)) == "bad_meta"
        assert code(raw.ask(sid, 0, h, topk=0)) == "bad_meta"
        bad = h.copy()
        bad[0, 1, 7] = np.nan
        assert code(raw.ask(sid, 0, bad)) == "bad_tensors"
        assert code(raw.ask(sid, 0, np.zeros((2, 1, 576), np.float32))) == "bad_tensors"
        assert code(raw.ask(sid, 0, np.zeros((1, 3, 100), np.float32))) == "bad_tensors"
        too_long = raw.ask(sid, 1023, h)
        assert code(too_long) == "too_long" and "context of 1024" in too_long.meta["message"]
        assert code(raw.ask(sid, 3, h[:, :1])) == "ok"  # the session survived every refusal
    finally:
        raw.close()
    procs[0].stop()
    stats = procs[0].stats()
    assert stats["errors"] == {"session_lost": 1, "session_gap": 1, "bad_meta": 2, "bad_tensors": 3, "too_long": 1}


def test_llm_run_prints_the_answer(llm_bundle, broker, workers, cli_argv, reference):
    workers(1)
    out = subprocess.run([*cli_argv, "llm", "run", str(llm_bundle.path), PROMPT, "--broker", broker.url,
                          "--max-new-tokens", str(N_TOKENS), "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    g = json.loads(out.stdout)
    assert g["tokens"] == reference and g["replays"] == 0 and g["text"] == llm.Tokenizer(llm_bundle).decode(reference)


def test_a_worker_with_max_batch_answers_waiting_decode_steps_of_sessions_of_different_lengths_in_one_call(
        llm_bundle, broker, workers):
    """Three sessions' next steps wait while the worker is stopped; it runs them as one call (their
    caches padded and masked) and each answer is the one the back half gives that session alone."""
    procs = workers(1, "--max-batch", "3", "--batch-wait-ms", "1000")  # a full batch ends the wait
    tok, front, back = llm.Tokenizer(llm_bundle), llm.Half(llm_bundle, "front", 2), llm.Half(llm_bundle, "back", 2)
    raw, steps = _RawClient(llm_bundle, broker.url), []
    try:
        for i, prompt in enumerate(("Hi", PROMPT, "What is the capital of France? Answer in one word.")):
            fc, bc = front.new_cache(), back.new_cache()
            h = front.step(np.array([tok.chat(prompt)], np.int64), fc)
            first = raw.ask(f"{i:032x}", 0, h)  # the prompt: alone
            assert first.kind == wire.Kind.REPLY and first.meta["batch"] == 1
            back.step(h, bc)
            h1 = front.step(np.array([[int(first.tensors[0][0, 0])]], np.int64), fc)
            steps.append((f"{i:032x}", h.shape[1], h1, back.step(h1, bc)))
        procs[0].send(signal.SIGSTOP)
        rids = [raw.send(sid, n, h1) for sid, n, h1, _ in steps]
        procs[0].send(signal.SIGCONT)
        got = {f.request_id: f for f in (wire.decode(raw.inbox.get(timeout=60).payload) for _ in rids)}
    finally:
        procs[0].send(signal.SIGCONT)
        raw.close()
    assert len({n for _, n, _, _ in steps}) == 3  # three different cache lengths
    for rid, (sid, n, _, alone) in zip(rids, steps):
        f = got[rid]
        assert f.kind == wire.Kind.REPLY and f.meta["batch"] == 3 and f.meta["session_len"] == n + 1
        ids, vals = f.tensors
        want_ids, want_vals = llm.top_k(alone, 8)
        assert ids[0, 0] == want_ids[0, 0] and np.allclose(vals, want_vals, atol=1e-3)


def test_devices_decoding_at_once_through_a_batching_worker_get_their_own_answers(llm_bundle, broker, workers,
                                                                                 reference):
    import threading

    workers(1, "--max-batch", "4", "--batch-wait-ms", "5")
    gens, errors = {}, []

    def run(i):
        try:
            with LlmDevice(llm_bundle, broker.url, step_timeout_s=STEP_TIMEOUT_S, threads=1) as dev:
                gens[i] = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert not errors and len(gens) == 3
    assert all(g.tokens == reference and g.replays == 0 for g in gens.values())
    assert len({g.session for g in gens.values()}) == 3


def test_with_the_codec_the_hidden_states_travel_coded_and_a_replay_rebuilds_the_same_session(
        llm_tsq, broker, workers, coded_reference):
    b, entry = llm_tsq
    procs = workers(2, bundle=b)
    with LlmDevice(b, broker.url, step_timeout_s=30) as dev:
        _after_step(dev, 5, lambda g: procs[int(g.steps[-1].worker[1:])].send(signal.SIGKILL))
        g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
    assert g.tokens == coded_reference and g.replays == 1
    decode_steps = [s for s in g.steps[1:] if not s.replays]
    # one position coded: well under its 2,304 raw bytes (frame header and codec params included)
    assert max(s.up_bytes for s in decode_steps) < 2304 * 0.6


def test_a_prompt_and_a_replay_longer_than_a_frame_go_in_several_frames(llm_bundle, broker, workers, reference):
    procs = workers(2)
    with LlmDevice(llm_bundle, broker.url, step_timeout_s=30, frame_positions=8) as dev:
        _after_step(dev, 3, lambda g: procs[int(g.steps[-1].worker[1:])].send(signal.SIGKILL))
        g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
    assert g.tokens == reference and g.replays == 1
    frames = -(-g.prompt_tokens // 8)  # the prompt's frames, each a few bytes over 8 positions
    assert 8 * 2304 * (frames - 1) < g.steps[0].up_bytes < frames * (8 * 2304 + 400)
    _check_each_position_answered_once(g, g.prompt_tokens)


def test_a_false_offline_for_the_pinned_worker_on_another_topic_changes_nothing(llm_bundle, broker, workers, reference):
    workers(1)
    liar = transport.MqttClient(broker.url, f"liar-{os.getpid()}")
    liar.connect()
    try:  # retained, on a presence topic that is not w0's, in w0's name
        liar.publish(transport.presence_topic(llm_bundle.model_id, llm_bundle.topic_id, "server", "liar"),
                     transport.presence_payload("server", "w0", "offline"), retain=True)
        with LlmDevice(llm_bundle, broker.url, step_timeout_s=STEP_TIMEOUT_S) as dev:
            g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
    finally:
        liar.close()
    assert g.tokens == reference and g.replays == 0 and g.stale_replies == 0


def test_frames_a_server_refuses_as_too_large_are_halved_until_they_pass(llm_bundle, broker, workers, reference):
    workers(1, "--max-frame-mb", "0.05")  # ~21 positions of 2,304 B; the prompt is ~37
    with LlmDevice(llm_bundle, broker.url, step_timeout_s=STEP_TIMEOUT_S) as dev:
        g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
        assert dev.frame_positions <= 21
    # one halving from the refused frame (~37 positions) to 18, not 1024 -> 512 -> ... -> 16
    assert g.tokens == reference and g.steps[0].shrinks == 1 and g.replays == 0 and "too_large" in g.steps[0].why


def test_frames_over_the_brokers_packet_limit_are_halved_until_they_pass(llm_bundle, wait_online, reference):
    """The same halving when the limit is the broker's (its CONNACK's Maximum Packet Size): the frame is not sent,
    so the broker does not drop the connection over it."""
    from edgerun.broker import Mosquitto
    from tests.integration.conftest import ServerProc

    with Mosquitto(max_packet_size=60000) as small:  # ~25 positions of 2,304 B; the prompt is ~37
        w = ServerProc(llm_bundle, small.url, "--worker-id", "w0")
        try:
            wait_online(llm_bundle, small.url, 1, [w])
            with LlmDevice(llm_bundle, small.url, step_timeout_s=STEP_TIMEOUT_S) as dev:
                g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
                assert dev.frame_positions <= 25 and dev._client.connected
        finally:
            w.stop(signal.SIGKILL)
    assert g.tokens == reference and g.steps[0].shrinks == 1 and g.replays == 0
    assert "maximum packet size of 60000 bytes" in g.steps[0].why


def test_a_broker_that_dies_mid_generation_is_a_transport_error_naming_the_broker(llm_bundle, broker, workers):
    workers(1)
    with LlmDevice(llm_bundle, broker.url, step_timeout_s=30) as dev:
        _after_step(dev, 3, lambda g: broker.stop())
        with pytest.raises(TransportError, match="broker"):
            dev.generate(PROMPT, max_new_tokens=N_TOKENS)


@pytest.mark.parametrize("kwargs, match", [({"seed": -1, "prompt": PROMPT}, "seed"),
                                           ({"prompt": "   "}, "prompt is empty"),
                                           ({"prompt": "bad \udcff byte"}, "UTF-8")])
def test_bad_generation_arguments_are_config_errors(llm_bundle, broker, kwargs, match):
    from edgerun.errors import ConfigError

    with LlmDevice(llm_bundle, broker.url, step_timeout_s=STEP_TIMEOUT_S) as dev:
        with pytest.raises(ConfigError, match=match):
            dev.generate(max_new_tokens=2, **kwargs)
    with pytest.raises(ConfigError, match="threads"):
        LlmDevice(llm_bundle, broker.url, threads=0)


def test_the_context_holds_a_prompt_plus_new_tokens_up_to_one_past_it(llm_bundle, broker, workers):
    """The last new token is never sent: a 1024-position bundle takes 1018 prompt tokens + 7 new ones."""
    from edgerun.errors import ConfigError

    workers(1)
    with LlmDevice(llm_bundle, broker.url, step_timeout_s=STEP_TIMEOUT_S) as dev:
        ids = [198] * 1018
        g = dev.generate(ids=ids, max_new_tokens=7, stop_at_eos=False)
        assert len(g.tokens) == 7 and g.steps[-1].position == 1023
        with pytest.raises(ConfigError, match="context of 1024"):
            dev.generate(ids=ids, max_new_tokens=8)


def test_serve_takes_an_archive_of_an_llm_bundle(llm_bundle, broker, wait_online, tmp_path, reference):
    import tarfile

    from tests.integration.conftest import ServerProc

    archive = tmp_path / "llm.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(llm_bundle.path, arcname=".")
    p = ServerProc(SimpleNamespace(path=archive), broker.url)  # serves the archive, not the directory
    try:
        wait_online(llm_bundle, broker.url, 1, [p])
        with LlmDevice(llm_bundle, broker.url, step_timeout_s=STEP_TIMEOUT_S) as dev:
            assert dev.generate(PROMPT, max_new_tokens=N_TOKENS).tokens == reference
    finally:
        p.stop()


def test_the_agent_offers_the_llm_only_the_kept_tools_and_reads_the_call(llm_bundle, broker, workers, tmp_path):
    """Tool selection on the device + the split LLM: fewer tools, fewer prompt positions on the link."""
    from edgerun.exporters import tools
    from edgerun.llm_agent import ANSWER_PREFIX, CALL_END, Agent
    from edgerun.tools import Rule, ToolIndex, ToolSelector
    from tests.runtime.test_tool_index import CATALOG, QUERIES

    tools.build_index(CATALOG, tmp_path / "robot", queries=QUERIES, index_id="robot")
    index = ToolIndex.load(tmp_path / "robot")
    workers(1)
    with LlmDevice(llm_bundle, broker.url, step_timeout_s=STEP_TIMEOUT_S) as dev:
        agent = Agent(dev, ToolSelector(index, rule=Rule(index.rule.floor, index.rule.margin, 2)))
        kept = agent.ask("Will it snow in Oslo tomorrow?", max_new_tokens=12)
        every = agent.ask("Will it snow in Oslo tomorrow?", max_new_tokens=12, offer_all=True)
    assert kept.offered == kept.selection.names and 1 <= len(kept.offered) <= 2 and "get_weather" in kept.offered
    assert every.offered == [t["name"] for t in CATALOG]
    assert kept.prompt_positions < every.prompt_positions
    assert kept.generation.bytes_up < every.generation.bytes_up
    assert kept.call.startswith(ANSWER_PREFIX) and (kept.tool is None or kept.tool in kept.offered)
    assert CALL_END not in kept.call or not kept.call.split(CALL_END, 1)[1].strip()  # stops at the call's end


def test_wait_ready_returns_once_a_worker_answers_and_fails_without_one(llm_bundle, broker, workers):
    with LlmDevice(llm_bundle, broker.url, step_timeout_s=30, max_replays=3) as dev:
        with pytest.raises(TransportError, match="no server worker answered"):
            dev.wait_ready(timeout_s=1)  # each try gets the time left, no replays
        assert (dev.step_timeout_s, dev.max_replays) == (30, 3)
        workers(1)
        dev.wait_ready()
        broker.stop()
        with pytest.raises(TransportError, match="broker"):
            dev.wait_ready(timeout_s=60)  # at once: no worker can answer without a broker


def test_tool_options_without_tools_are_refused(llm_bundle, broker, cli_argv):
    out = subprocess.run([*cli_argv, "llm", "run", str(llm_bundle.path), "hi", "--broker", broker.url, "--k-max", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "give --tools" in out.stderr


def test_llm_demo_answers_through_a_killed_worker(llm_bundle, cli_argv, reference):
    """`edgerun llm demo`: its own broker and two workers; the pinned one is killed mid-answer."""
    out = subprocess.run([*cli_argv, "llm", "demo", "--bundle", str(llm_bundle.path), "--prompt", PROMPT,
                          "--max-new-tokens", str(N_TOKENS), "--kill-at", "4", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["killed"] in s["workers"] and len(s["workers"]) == 2 and s["replays"] == 1
    assert s["answer"] == llm.Tokenizer(llm_bundle).decode(reference)


# -- local fallback: the device finishes the answer itself when no server can ----------------------
def test_with_local_fallback_the_device_finishes_an_answer_its_only_worker_died_in(llm_bundle, broker, workers,
                                                                                    reference):
    procs = workers(1)
    with LlmDevice(llm_bundle, broker.url, step_timeout_s=30, local_fallback=True) as dev:
        _after_step(dev, 4, lambda g: procs[0].send(signal.SIGKILL))
        g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
        assert g.tokens == reference  # the same answer, no step lost or answered twice
        assert g.workers == ["w0", "local"] and g.local_steps == len(g.steps) - 4
        first = g.steps[4]
        # at once (the presences came long ago: none is online), not after the 30 s timeout
        assert "no server worker of this bundle is online" in first.why
        # it went to w0 (its last will arrived), was replayed on the shared topic with no one there, then answered here
        assert g.replays == first.replays == 1 and first.up_bytes > 0
        assert first.positions == first.position + 1  # its cache rebuilt from every hidden state kept
        assert all(s.positions == 1 and not s.why for s in g.steps[5:])
        _check_each_position_answered_once(g, g.prompt_tokens)
        workers(1, first=1)  # the next generation goes to the servers again
        # once the device has read w1's presence: the watcher above saw it on its own connection, and
        # a device that has none online answers here at once
        dev.wait_ready()
        again = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
    assert again.tokens == reference and again.workers == ["w1"] and again.local_steps == 0


def test_with_local_fallback_a_broker_that_dies_mid_generation_leaves_the_answer_to_the_device(
        llm_bundle, broker, workers, reference):
    workers(1)
    with LlmDevice(llm_bundle, broker.url, step_timeout_s=30, local_fallback=True, preload_back=True) as dev:
        assert dev._back is not None  # preloaded: the first local step only rebuilds the cache
        _after_step(dev, 3, lambda g: broker.stop())
        g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
    assert g.tokens == reference and g.workers == ["w0", "local"]
    assert "broker" in g.steps[3].why and g.local_steps == len(g.steps) - 3


def test_a_step_deadline_with_no_replay_is_kept_by_answering_here_when_the_worker_stalls(
        llm_bundle, broker, workers, reference):
    # the robot's recipe for a hard deadline per token: a short step timeout, no replay, the back half
    # preloaded; a frozen (SIGSTOP) worker costs one timeout, then the device answers alone
    procs = workers(1)

    def freeze(g):
        procs[0].send(signal.SIGSTOP)
        dev.step_timeout_s = 2  # only while it is frozen: the prompt's step may be slow on a loaded machine

    try:
        with LlmDevice(llm_bundle, broker.url, step_timeout_s=STEP_TIMEOUT_S, max_replays=0, local_fallback=True,
                       preload_back=True) as dev:
            _after_step(dev, 3, freeze)
            g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
    finally:
        procs[0].send(signal.SIGCONT)
    assert g.tokens == reference and g.workers == ["w0", "local"]
    assert "no reply within 2 s" in g.steps[3].why and g.steps[3].positions == g.steps[3].position + 1
    assert g.local_steps == len(g.steps) - 3 and g.replays == 0


def test_a_device_with_local_fallback_starts_with_the_broker_down_and_connects_later(llm_bundle, reference):
    from edgerun.broker import Mosquitto, free_port

    url = f"mqtt://127.0.0.1:{free_port()}"
    with pytest.raises(TransportError, match="broker"):
        LlmDevice(llm_bundle, url)  # without the fallback: nothing could answer
    with LlmDevice(llm_bundle, url, local_fallback=True) as dev:
        g = dev.generate(PROMPT, max_new_tokens=N_TOKENS)
        assert g.tokens == reference and g.workers == ["local"] and g.bytes_up == 0
        with pytest.raises(TransportError):
            dev.wait_ready(timeout_s=1)  # only a server's answer makes it ready, fallback or not
        assert dev.local_fallback
        with Mosquitto(port=int(url.rsplit(":", 1)[1])):
            for _ in range(100):
                if dev._client.connected:
                    break
                time.sleep(0.1)
            assert dev._client.connected, "the device did not connect once the broker came up"
