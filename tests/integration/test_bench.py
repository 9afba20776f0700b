"""A short `edgerun bench` on the digits bundle: every mode present, with per-stage percentiles."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from edgerun.errors import ConfigError

REQUESTS = 8


@pytest.fixture(scope="module")
def report(digits_bundle):
    from edgerun.bench import run_bench

    return run_bench(digits_bundle, "wifi", requests=REQUESTS, warmup=1)


def test_all_modes_present(report):
    modes = report["modes"]
    assert set(modes) == {"device_native", "device_ort", "server", "split", "split_codec", "split_exit"}
    for name in ("device_native", "device_ort", "server", "split"):
        st = modes[name]["stages"]["total"]
        assert st["p50"] <= st["p95"] <= st["p99"]
    assert "skipped" in modes["split_codec"] and "skipped" in modes["split_exit"]


def test_remote_modes_have_every_stage_and_bytes(report, digits_bundle):
    for name in ("server", "split"):
        m = report["modes"][name]
        assert set(m["stages"]) == {"device", "encode", "network", "server", "decode", "total"}
    split_tensor = 4 * int(__import__("numpy").prod([d for d in digits_bundle.cut[0].shape if d]))
    raw_input = 8 * 8 * 4
    assert report["modes"]["split"]["bytes_sent"] >= split_tensor
    assert raw_input <= report["modes"]["server"]["bytes_sent"] < report["modes"]["split"]["bytes_sent"]
    assert report["modes"]["device_native"]["bytes_sent"] == 0


def test_network_stage_reflects_the_emulated_link(report):
    # wifi: 4 ms RTT; the emulator never delivers early
    assert report["modes"]["split"]["stages"]["network"]["p50"] >= 4.0 - 0.5
    em = report["emulated"]
    assert em["profile"]["rtt_ms"] == 4.0 and em["measured"]["rtt_ms_min"] >= 4.0 - 0.5


def test_cli_json_and_png(digits_bundle, tmp_path):
    png = tmp_path / "bench.png"
    code = ("import typer; from edgerun.cli_plan import bench_cmd; app = typer.Typer(); "
            "app.command('bench')(bench_cmd); app.command('x')(lambda: None); app()")
    out = subprocess.run([sys.executable, "-c", code, "bench", str(digits_bundle.path), "--link", "ethernet",
                          "--requests", "3", "--warmup", "0", "--png", str(png), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    assert "split" in rep["modes"] and png.stat().st_size > 0


def test_cli_text_says_how_the_device_was_emulated(digits_bundle):
    """The text report printed the modes and the link but not that the device was this machine
    slowed down (or on which profile): the JSON alone said it."""
    code = ("import typer; from edgerun.cli_plan import bench_cmd; app = typer.Typer(); "
            "app.command('bench')(bench_cmd); app.command('x')(lambda: None); app()")
    out = subprocess.run([sys.executable, "-c", code, "bench", str(digits_bundle.path), "--link", "ethernet",
                          "--requests", "3", "--warmup", "0", "--device", "rpi4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("device compute: "))
    assert "EMULATED rpi4" in line and "x" in line


def test_bad_arguments(digits_bundle):
    from edgerun.bench import run_bench

    with pytest.raises(ConfigError):
        run_bench(digits_bundle, "wifi", requests=0)
    with pytest.raises(ConfigError, match="unknown modes"):
        run_bench(digits_bundle, "wifi", modes=("teleport",))
    with pytest.raises(ConfigError, match="no profile named"):
        run_bench(digits_bundle, "no-such-link")


def test_a_request_slower_than_the_first_probe_still_gets_measured(digits_bundle, tmp_path):
    """The split request (2 KB) takes ~3 s on a 6 kbit/s uplink, longer than the 2 s first try of the
    readiness probe: the probe must wait longer on later tries instead of queueing resends forever."""
    from edgerun.bench import run_bench

    link = tmp_path / "slow.toml"
    link.write_text('kind = "link"\nname = "slow"\nrtt_ms = 1.0\nup_mbps = 0.006\ndown_mbps = 1.0\n')
    rep = run_bench(digits_bundle, link, requests=1, warmup=0, modes=("split",))
    assert rep["modes"]["split"]["stages"]["network"]["p50"] > 2000


def test_on_real_hardware_the_bench_measures_through_the_running_servers_broker(digits_bundle, start_servers, broker,
                                                                               cli_argv):
    """`--broker URL`: no emulator and no processes of its own; the split goes to the workers already serving
    the bundle, and the bytes are the frames' (the request frame carries the cut tensor)."""
    from edgerun.bench import run_bench

    start_servers(1)
    rep = run_bench(digits_bundle, broker=broker.url, requests=REQUESTS, warmup=1)
    assert rep["link"] == f"real network via {broker.url}" and "emulated" not in rep
    split = rep["modes"]["split"]
    assert set(split["stages"]) == {"device", "encode", "network", "server", "decode", "total"}
    tensor = 4 * int(__import__("numpy").prod([d for d in digits_bundle.cut[0].shape if d]))
    assert tensor < split["bytes_sent"] < tensor + 1024 and split["bytes_received"] > 40
    assert "skipped" in rep["modes"]["server"]
    r = subprocess.run([*cli_argv, "bench", str(digits_bundle.path), "--broker", broker.url, "--link", "wifi"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not both" in r.stderr


def test_with_no_server_running_the_real_bench_says_to_start_one(digits_bundle, broker, monkeypatch):
    import edgerun.bench
    from edgerun.bench import run_bench

    monkeypatch.setattr(edgerun.bench, "FIRST_REAL_ANSWER_MS", 1000.0)
    rep = run_bench(digits_bundle, broker=broker.url, requests=2, warmup=0, modes=("split",))
    assert "no server answered through" in rep["modes"]["split"]["failed"]
    assert "start `edgerun serve" in rep["modes"]["split"]["failed"]


def test_a_server_lost_mid_bench_keeps_the_figures_measured_before_it(digits_bundle, start_servers, broker,
                                                                     monkeypatch):
    """The server killed during the split mode's timed requests: the plain on-device figures (measured first)
    stay in the report, and the split mode says how far it got and why. The bench raised and lost all of it."""
    import signal

    import edgerun.bench
    from edgerun.bench import run_bench

    monkeypatch.setattr(edgerun.bench, "REQUEST_TIMEOUT_MS", 1500.0)
    (proc,) = start_servers(1)
    one, calls = edgerun.bench._one, []

    def one_then_kill(xs, i):  # the split mode's second timed request finds the server gone
        calls.append(i)
        if len(calls) == 2:
            proc.stop(signal.SIGKILL)
        return one(xs, i)

    monkeypatch.setattr(edgerun.bench, "_one", one_then_kill)
    rep = run_bench(digits_bundle, broker=broker.url, requests=3, warmup=0, modes=("split",))
    # the broker may still hold the killed server's subscription (no reply by the deadline) or have dropped it
    # (the request's PUBACK: no matching subscribers)
    assert re.match(r"stopped after 1 of 3 timed requests: (no reply from a server|no server took request)",
                    rep["modes"]["split"]["failed"]), rep["modes"]["split"]["failed"]
    assert "--deadline-ms" not in rep["modes"]["split"]["failed"]  # the device's advice; bench has no such option


def test_the_bench_command_prints_what_it_measured_and_exits_1_when_a_mode_failed(digits_bundle, broker, cli_argv,
                                                                                 tmp_path):
    out = tmp_path / "rep.json"
    r = subprocess.run([*cli_argv, "bench", str(digits_bundle.path), "--broker", broker.url, "--requests", "2",
                        "--warmup", "0", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "device_native" in r.stdout and "FAILED" in r.stdout
    assert "mode(s) split failed: split: no server answered" in r.stderr
    rep = json.loads(out.read_text())
    assert "stages" in rep["modes"]["device_ort"] and "failed" in rep["modes"]["split"]


def test_a_worker_started_with_whole_gives_the_real_bench_its_plain_offload_peer(digits_bundle, start_servers,
                                                                                broker, tmp_path):
    """`edgerun serve BUNDLE --with-whole` also serves the whole model cut at the input; the bench on the device
    builds the same bundle (same hash) and measures all-on-server beside the split, over the same network."""
    from conftest import wait_servers_online
    from edgerun.bench import make_server_bundle, run_bench

    procs = start_servers(1, "--with-whole")
    whole = make_server_bundle(digits_bundle, tmp_path / "whole")
    wait_servers_online(whole, broker.url, 1, procs)  # its worker starts beside the split's, maybe a moment later
    rep = run_bench(digits_bundle, broker=broker.url, requests=REQUESTS, warmup=1, modes=("server", "split"))
    raw_input = 8 * 8 * 4
    server = rep["modes"]["server"]
    assert "stages" in server and raw_input < server["bytes_sent"] < raw_input + 1024
    assert server["bytes_sent"] < rep["modes"]["split"]["bytes_sent"]  # digits: the cut tensor is the bigger


def test_the_command_the_real_bench_suggests_can_be_pasted_into_a_shell(digits_bundle):
    """With no server for a TLS broker, the bench said to run `edgerun serve b --broker mqtts://h:p?ca=...&cert=...`
    unquoted (the shell cuts it at '&' and globs '?'), and ended with "give a longer one (--deadline-ms)", an
    option bench does not have."""
    import shlex

    from edgerun.bench import run_bench
    from edgerun.broker import Mosquitto

    with Mosquitto(tls=True, require_client_cert=True) as m:
        url = m.url
        msg = run_bench(digits_bundle, broker=url, requests=1, warmup=0, modes=("split",))["modes"]["split"]["failed"]
    assert "&" in url and "--deadline-ms" not in msg
    cmd = msg.split("start `", 1)[1].split("`", 1)[0]
    assert shlex.split(cmd)[-2:] == ["--broker", url]
