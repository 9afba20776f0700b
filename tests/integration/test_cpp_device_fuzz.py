"""What reaches the C++ device from outside (reply frames, manifests, .npy inputs, broker URLs) gives a
clear error, never an exception, a crash or a half-checked accept.

The fuzzer (cpp/device/fuzz/device_fuzz.cpp, target edgerun_device_fuzz) runs here briefly with a fixed
seed, and its ``known`` mode replays the inputs it found, each with the error it must give. The same
inputs go through the ``edgerun_device`` program (a bad .npy, a resealed manifest, a server's reply)
to check the exit code and the message. With EDGERUN_CPP_SANITIZE=1 all of it runs under ASan + UBSan;
longer runs: ``edgerun_device_fuzz all SEED 100000 /tmp/w``."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgerun import wire
from edgerun.bundle import compute_bundle_hash

from test_cpp_device import EXIT_BAD_REPLY, EXIT_BUNDLE, EXIT_SERVER_ERROR, EXIT_USAGE, answered_by_responder, run_cpp

FUZZ_ITERATIONS = 3000  # per area: ~1 s here, ~10 s under the sanitizers


@pytest.fixture(scope="module")
def fuzzer(cpp_device) -> Path:
    from cpp_device_build import extra_program

    return extra_program(cpp_device, "edgerun_device_fuzz")


def test_the_inputs_the_fuzzer_found_give_their_clear_errors(fuzzer, tmp_path):
    r = run_cpp(fuzzer, "known", 0, 0, tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "0 bugs" in r.stdout


@pytest.mark.parametrize("seed", [1, 2])
def test_a_fixed_seed_fuzz_of_replies_manifests_npy_and_urls_finds_nothing(fuzzer, tmp_path, seed):
    r = run_cpp(fuzzer, "all", seed, FUZZ_ITERATIONS, tmp_path)
    assert r.returncode == 0, r.stderr[-6000:] + r.stdout
    assert f"{FUZZ_ITERATIONS} iterations, 0 bugs (" in r.stdout


def npy_with_shape(path: Path, shape: str, data: bytes = b"") -> Path:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data)
    return path


@pytest.mark.parametrize("shape,words", [
    ("(4611686018427387904, 4)", "not a dim in 0..2147483647"),  # its product wrapped to 0 elements: accepted
    ("(65536, 65536, 65536, 65536)", "data bytes"),               # the same wrap with small dims
    ("(abc, 64)", "not a dim"),                                   # std::stoll threw: exit 1
    ("(1, , 64)", "empty item"),
])
def test_a_npy_whose_shape_is_garbage_is_refused_as_a_bad_input(cpp_device, digits_bundle, tmp_path, shape, words):
    x = npy_with_shape(tmp_path / "x.npy", shape)
    r = run_cpp(cpp_device, digits_bundle.path, "--broker", "mqtt://127.0.0.1:1", "--input", x)
    assert r.returncode == EXIT_USAGE, r.stderr
    assert words in r.stderr, r.stderr


def resealed(src: Path, dst: Path, edit) -> Path:
    """A copy of the bundle with its manifest edited and its hash redone (as anyone can)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    m["bundle_hash"] = compute_bundle_hash(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _set(path: tuple, value):
    def edit(m: dict) -> None:
        *parents, last = path
        node = m
        for k in parents:
            node = node[k]
        node[last] = value
    return edit


def _add_file(name: str):
    def edit(m: dict) -> None:
        m["files"][name] = m["files"]["front.erg"]
    return edit


@pytest.mark.parametrize("edit,words", [
    (_set(("native", "ok"), "yes"), "'native.ok'"),                     # nlohmann type_error: exit 1
    (_set(("split",), 5), "'split' is not an object"),                 # type_error
    (_set(("codec",), {"id": 3}), "codec.id"),                         # type_error
    (_set(("files", "front.erg", "bytes"), "12"), "lacks bytes / sha256"),  # type_error
    (_add_file("../elsewhere/front.erg"), "a path with '..'"),      # was hashed and accepted
    (_add_file("/etc/hostname"), "an absolute path"),
    (_set(("inputs", 0, "shape"), [None, 1, 0, 8]), "not a size in 1..2147483647"),
])
def test_a_resealed_manifest_with_garbage_is_refused_as_a_bad_bundle(cpp_device, digits_bundle, tmp_path, edit, words):
    x = tmp_path / "x.npy"
    np.save(x, digits_bundle.samples()[:1].astype(np.float32))
    b = resealed(digits_bundle.path, tmp_path / "b", edit)
    r = run_cpp(cpp_device, b, "--broker", "mqtt://127.0.0.1:1", "--input", x)
    assert r.returncode == EXIT_BUNDLE, r.stderr
    assert words in r.stderr, r.stderr


def test_a_manifest_nested_100000_deep_is_refused_not_a_stack_overflow(cpp_device, digits_bundle, tmp_path):
    b = tmp_path / "deep"
    shutil.copytree(digits_bundle.path, b)
    text = (b / "manifest.json").read_text().rstrip()
    (b / "manifest.json").write_text(text[:-1] + ', "x": ' + "[" * 100000 + "]" * 100000 + "}")
    np.save(tmp_path / "x.npy", digits_bundle.samples()[:1].astype(np.float32))
    r = run_cpp(cpp_device, b, "--broker", "mqtt://127.0.0.1:1", "--input", tmp_path / "x.npy")
    assert r.returncode == EXIT_BUNDLE, (r.returncode, r.stderr)  # was -11 (SIGSEGV)
    assert "nests deeper than 64 levels" in r.stderr


def _meta_frame(kind: wire.Kind, request_id: int, hash16: bytes, meta: dict, placeholder: bytes, literal: bytes,
                tensors=()) -> bytes:
    """A frame whose meta holds ``literal`` (JSON Python cannot write, as 1e400) in place of ``placeholder``."""
    raw = wire.encode(wire.Frame(kind, request_id, 0, hash16, list(tensors), meta))
    assert len(placeholder) == len(literal) and raw.count(placeholder) == 1
    raw = raw[:-4].replace(placeholder, literal)
    return raw + zlib.crc32(raw).to_bytes(4, "little")


@pytest.mark.parametrize("case", ["code_number", "server_us_1e400"])
def test_a_reply_whose_meta_has_the_wrong_types_is_told_apart_without_a_crash(
        cpp_device, digits_bundle, broker, tmp_path, case):
    def make(req: wire.Frame) -> bytes:
        if case == "code_number":  # threw nlohmann type_error: exit 1, and the control loop died
            return wire.encode(wire.Frame(wire.Kind.ERROR, req.request_id, 0, digits_bundle.hash16, [],
                                          {"code": 5, "message": ["busy"]}))
        logits = np.zeros((2, 10), np.float32)  # was accepted with server_us 0
        return _meta_frame(wire.Kind.REPLY, req.request_id, digits_bundle.hash16, {"server_us": 12345},
                           b"12345", b"1e400", [logits])

    r = answered_by_responder(cpp_device, digits_bundle, broker.url, tmp_path, make)
    if case == "code_number":
        assert r.returncode == EXIT_SERVER_ERROR, r.stderr
        assert 'the server refused the request (5): ["busy"]' in r.stderr
    else:
        assert r.returncode == EXIT_BAD_REPLY, r.stderr
        assert "malformed reply: its meta is not a JSON object this device can read" in r.stderr


def test_a_fuzzed_front_half_is_refused_or_run_inside_its_buffers(fuzzer, digits_bundle, tmp_path):
    """A resealed bundle can carry any front.erg: the core's loader and engine get mutated ones."""
    r = run_cpp(fuzzer, "erg", 1, FUZZ_ITERATIONS, tmp_path, digits_bundle.path / "front.erg")
    assert r.returncode == 0, r.stderr[-6000:] + r.stdout
    assert f"{FUZZ_ITERATIONS} iterations, 0 bugs (" in r.stdout
