"""The C++ device library (edgerun/device.h) used the wrong ways a robot programmer might, through
edgerun_device_misuse (cpp/device/tests/device_misuse.cpp, one case a run) and the two programs: each
mistake gets one clear error saying what to do (ConfigError, exit code 2), never a read past the
caller's buffer, a hang, a crash or a silent default; a connect() retried until the broker answers
keeps nothing open; a device destroyed while a thread waits in infer ends that wait first. With
EDGERUN_CPP_SANITIZE=1 all of it runs under ASan + UBSan (+ LeakSanitizer)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_cpp_device import EXIT_BUNDLE, EXIT_USAGE, device_copy, free_port, run_cpp

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def misuse(cpp_device) -> Path:
    from cpp_device_build import extra_program

    return extra_program(cpp_device, "edgerun_device_misuse")


@pytest.fixture(scope="module")
def x_npy(digits_bundle, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("misuse") / "x.npy"
    np.save(path, digits_bundle.samples()[:1].astype(np.float32))
    return path


def case(exe: Path, name: str, bundle, x: Path, *broker: str) -> dict:
    r = run_cpp(exe, name, bundle.path, x, *broker)
    assert r.returncode == 0, r.stderr[-4000:]  # a sanitizer report ends it non-zero
    return json.loads(r.stdout)


@pytest.mark.parametrize(("name", "words"), [
    # Shape and values are separate vectors in a Tensor: the engine read as many values as the shape said,
    # past the caller's data (check() and request_frame() passed, a frame went out with heap bytes in it).
    ("short_data", "but 32 values (the shape holds 64)"),
    ("short_data_frame", "but 1 values (the shape holds 64)"),
    ("long_data", "but 128 values (the shape holds 64)"),      # was: answered on the first sample only
    ("negative_batch", "has a dim of -3"),                     # was: exit code 1, "a bug in edgerun"
    ("huge_batch", "(1099511627776, 1, 8, 8) but 64 values"),  # was: a hang, 2^37 engine runs on no data
    ("int_dtype", "the C++ device takes float32 inputs"),      # was: "must have shape (1, 1, 8, 8), got (1, 1, 8, 8)"
    # A deadline computed as next tick - now is negative once the loop is late: it waited the default 5 s.
    ("deadline_negative", "deadline_ms -1 is not a number of ms > 0"),
    ("deadline_nan", "deadline_ms nan is not a number of ms > 0"),
    ("deadline_huge", "at most 86400000"),
])
def test_a_wrong_input_or_deadline_is_one_config_error(misuse, digits_bundle, x_npy, name, words):
    got = case(misuse, name, digits_bundle, x_npy)
    assert got["outcome"] == "error" and got["code"] == EXIT_USAGE, got
    assert words in got["what"], got


def test_connect_retried_until_the_broker_answers_keeps_no_socket_and_then_connects(misuse, digits_bundle, x_npy,
                                                                                     broker):
    got = case(misuse, "connect_retry", digits_bundle, x_npy, broker.url)
    assert got["outcome"] == "ok" and got["failed"] == 5, got
    assert got["fds_after"] == got["fds_before"], got  # was 15 more: 3 fds each failed try
    assert "within 0.3 s" in got["last"], got          # was "within 0 s"
    assert got["reachable"] is True, got


def test_a_device_destroyed_while_a_thread_waits_in_infer_ends_that_wait(misuse, digits_bundle, x_npy, broker):
    """A node shut down while its timer thread awaits a reply (a server that takes requests and never answers:
    with no server at all the broker's PUBACK ends the wait at once): it was a double free."""
    from conftest import silent_worker

    with silent_worker(digits_bundle, broker.url):
        got = case(misuse, "destroy_during_infer", digits_bundle, x_npy, broker.url)
    assert got["outcome"] == "ok", got
    assert got["infer"].startswith("4: the device was closed while request"), got


def test_a_refused_presence_is_not_told_to_the_request_that_reuses_its_mid(misuse, digits_bundle, x_npy, broker):
    """The device's retained presence has no subscriber, so the broker answers its PUBACK with 0x10. Nobody
    awaited that PUBACK, and it was kept as an early refusal under its mid: once libmosquitto's 16-bit mids came
    round (65,535 publishes: half an hour of a 30 Hz loop), the request sent under that mid was told "no server
    took it" at once, though a server had its request. The case sends 65,533 requests nobody takes, then starts
    a subscriber that takes requests and never answers: the next requests must wait out their deadline."""
    got = case(misuse, "presence_mid_wrap", digits_bundle, x_npy, broker.url)
    assert got["outcome"] == "ok", got
    assert got["no_server"] == 65533, got  # each request nobody took ended at its PUBACK
    assert all("no reply" in a and "no server took" not in a for a in got["after"]), got["after"]


def test_connect_twice_is_refused(misuse, digits_bundle, x_npy, broker):
    got = case(misuse, "connect_twice", digits_bundle, x_npy, broker.url)
    assert got["outcome"] == "error" and got["code"] == EXIT_USAGE and "connected already" in got["what"], got


def test_a_bundle_path_that_is_a_file_or_a_link_loop_says_what_to_give(cpp_device, digits_bundle, x_npy, tmp_path):
    def refused(path) -> str:
        r = run_cpp(cpp_device, path, "--broker", "mqtt://127.0.0.1:1", "--input", x_npy)
        assert r.returncode == EXIT_BUNDLE, r.stderr
        return r.stderr

    assert "the manifest, not the bundle: give the directory that holds it" in refused(digits_bundle.path / "manifest.json")
    assert "a file, not a directory" in refused(digits_bundle.path / "front.erg")
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    assert "a loop of symbolic links" in refused(tmp_path / "a")  # was "no such directory"


def test_the_folder_a_device_copy_was_extracted_into_names_the_bundle_inside(cpp_device, digits_bundle, x_npy,
                                                                             cli_argv, tmp_path):
    top = device_copy(digits_bundle, cli_argv, tmp_path)  # tmp/copy/<bundle>, as `tar -xf ... -C copy` leaves it
    r = run_cpp(cpp_device, top.parent, "--broker", "mqtt://127.0.0.1:1", "--input", x_npy)
    assert r.returncode == EXIT_BUNDLE, r.stderr
    assert f"but {top} has one: give that directory" in r.stderr, r.stderr  # was "not an edgerun bundle"


@pytest.fixture(scope="module")
def exits_bundle(tmp_path_factory):
    from edgerun.exporters import ExportConfig, export

    return export("zoo:digits-cnn", ExportConfig(cut="block2", exits="auto", evaluate=False),
                  tmp_path_factory.mktemp("misuse-exits") / "digits-exits")


def test_a_resealed_consistency_exit_whose_heads_differ_in_size_is_refused(cpp_device, exits_bundle, x_npy,
                                                                          tmp_path):
    """Exit 1's 'head' renamed to its feature map (1024 values against exit 0's 10) under the consistency
    criterion: the comparison read past exit 0's head (ASan: heap-buffer-overflow in exits.cpp)."""
    from edgerun.bundle import write_manifest

    b = tmp_path / "b"
    shutil.copytree(exits_bundle.path, b)
    m = {k: v for k, v in json.loads((b / "manifest.json").read_text()).items() if k != "bundle_hash"}
    ex = m["exits"]
    ex["criterion"] = "consistency"
    ex["points"][1]["head"] = ex["points"][1]["tensor"]
    for budget in ex["budgets"].values():
        budget["thresholds"] = [None, 1e9, None]
    write_manifest(b, m)
    r = run_cpp(cpp_device, b, "--broker", "mqtt://127.0.0.1:1", "--input", x_npy, "--budget", "fast")
    assert r.returncode == EXIT_BUNDLE, (r.returncode, r.stderr[-3000:])
    assert "the consistency criterion compares heads of one size" in r.stderr


def test_an_ipv6_address_without_brackets_is_refused_saying_to_add_them(cpp_device, digits_bundle, x_npy):
    r = run_cpp(cpp_device, digits_bundle.path, "--broker", "mqtt://::1", "--input", x_npy)
    assert r.returncode == EXIT_USAGE, r.stderr  # was: a connection to host ':' on port 1
    assert "goes in brackets" in r.stderr and "mqtt://[::1]:1883" in r.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["--deadline-ms", "-5"], "--deadline-ms -5: give a number of ms > 0"),  # was: 5 s waits, reported as -5
    (["--deadline-ms", "20ms"], "--deadline-ms 20ms: give a number"),        # was: atof, 20
    (["--ticks", "ten"], "--ticks ten: give a whole number"),                # was: 0, a loop without end
    (["--rate", "0"], "--rate 0: give a number of ticks a second > 0"),
])
def test_the_control_loop_refuses_a_bad_number_once(cpp_device, digits_bundle, x_npy, args, words):
    from cpp_device_build import control_loop

    r = run_cpp(control_loop(cpp_device), digits_bundle.path, "--broker", f"mqtt://127.0.0.1:{free_port()}",
                "--input", x_npy, "--ticks", 2, *args)
    assert r.returncode == EXIT_USAGE and words in r.stderr, (r.returncode, r.stderr)


def test_the_control_loop_refuses_an_input_without_samples_instead_of_dividing_by_zero(cpp_device, digits_bundle,
                                                                                      tmp_path):
    from cpp_device_build import control_loop

    np.save(tmp_path / "x0.npy", np.zeros((0, 1, 8, 8), np.float32))
    r = run_cpp(control_loop(cpp_device), digits_bundle.path, "--broker", f"mqtt://127.0.0.1:{free_port()}",
                "--input", tmp_path / "x0.npy", "--ticks", 2)
    assert r.returncode == EXIT_USAGE, (r.returncode, r.stderr)  # was -8 (SIGFPE)
    assert "holds no samples" in r.stderr


def test_the_control_loop_refuses_a_wrong_input_before_its_first_tick(cpp_device, digits_bundle, tmp_path):
    from cpp_device_build import control_loop

    np.save(tmp_path / "x.npy", np.zeros((1, 1, 4, 4), np.float32))
    r = run_cpp(control_loop(cpp_device), digits_bundle.path, "--broker", f"mqtt://127.0.0.1:{free_port()}",
                "--input", tmp_path / "x.npy", "--ticks", 50)
    assert r.returncode == EXIT_USAGE, (r.returncode, r.stderr)  # was: the broker's error, or 50 ticks of errors
    assert "the bundle expects (None, 1, 8, 8)" in r.stderr and r.stdout == ""
