"""Link emulator accuracy: measured RTT and throughput against the configured link; outages drop, then recover.

These measure the EMULATED link (delays of tens of ms, bandwidth of a few Mbit/s), not the speed of our code.
"""

from __future__ import annotations

import socket
import time

import pytest

from edgerun.errors import ConfigError
from edgerun.linkemu import LinkConfig, LinkEmulator, _Probe, _recv_exact, measure
from edgerun.profiles import load_link

RTT_LOWER_SLACK_MS = 0.5    # the emulator never delivers early (only clock granularity)
RTT_UPPER_TOL_MS = 4.0      # scheduling on a loaded 2-core box can add a few ms
BANDWIDTH_REL_TOL = 0.15
JITTER_MEAN_TOL_MS = 3.0    # 40 samples of U(0, 6) twice: the sample mean's sd is ~0.5 ms; + scheduling    # measured throughput within 15% of the configured rate


def test_rtt_matches_configured_delay():
    m = measure(LinkConfig(delay_ms=10.0), pings=15, bulk_seconds=0.1)
    assert m["rtt_ms_min"] >= 20.0 - RTT_LOWER_SLACK_MS
    assert m["rtt_ms_p50"] <= 20.0 + RTT_UPPER_TOL_MS


def test_jitter_adds_on_average():
    j = 6.0
    m = measure(LinkConfig(delay_ms=5.0, jitter_ms=j, seed=1), pings=40, bulk_seconds=0.1)
    # mean of U(0, j) each way = j in total
    assert 10.0 + j - JITTER_MEAN_TOL_MS <= m["rtt_ms_mean"] <= 10.0 + j + JITTER_MEAN_TOL_MS + RTT_UPPER_TOL_MS


@pytest.mark.parametrize("up,down", [(8.0, 30.0), (40.0, 80.0)])
def test_throughput_matches_configured_bandwidth(up, down):
    m = measure(LinkConfig(delay_ms=1.0, up_mbps=up, down_mbps=down), pings=5, bulk_seconds=0.5)
    assert abs(m["up_mbps"] - up) <= BANDWIDTH_REL_TOL * up
    assert abs(m["down_mbps"] - down) <= BANDWIDTH_REL_TOL * down


def test_profile_config_mapping():
    lte = load_link("lte")
    cfg = LinkConfig.from_profile(lte)
    assert cfg.delay_ms == lte.rtt_ms / 2 and cfg.up_mbps == lte.up_mbps and cfg.jitter_ms == lte.jitter_ms


def _ping(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"P")
            return _recv_exact(s, 1) == b"P"
    except (OSError, EOFError):
        return False


def test_outage_drops_traffic_then_recovers():
    probe = _Probe()
    try:
        with LinkEmulator(("127.0.0.1", probe.port), LinkConfig(delay_ms=1.0)) as emu:
            live = socket.create_connection(("127.0.0.1", emu.port), timeout=2.0)
            live.sendall(b"P")
            assert _recv_exact(live, 1) == b"P"
            emu.outage(0.5)
            with pytest.raises((OSError, EOFError)):  # the live connection is reset
                live.sendall(b"P")
                _recv_exact(live, 1)
            live.close()
            assert not _ping(emu.port)  # new connections are refused during the outage
            time.sleep(0.6)
            assert _ping(emu.port)  # and accepted again afterwards
            assert emu.stats()["reset"] >= 1 and emu.stats()["refused"] >= 1
    finally:
        probe.close()


def test_scheduled_outage_window():
    probe = _Probe()
    try:
        with LinkEmulator(("127.0.0.1", probe.port), LinkConfig(outages=((0.0, 0.4),))) as emu:
            assert not _ping(emu.port)
            time.sleep(0.5)
            assert _ping(emu.port)
    finally:
        probe.close()


@pytest.mark.parametrize("kw", [{"delay_ms": -1}, {"up_mbps": -5}, {"outages": ((0.0, 0.0),)}])
def test_bad_config_rejected(kw):
    with pytest.raises(ConfigError):
        LinkConfig(**kw)


def test_bad_outage_duration():
    with pytest.raises(ConfigError):
        LinkEmulator(("127.0.0.1", 1), LinkConfig()).outage(0)
