"""Processes of the soak benchmark (bench_soak.py) and what is read off them: resident memory, open file
descriptors and threads from /proc, and each device's requests from the JSON line it prints per request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

HANG_GUARD_S = 90.0  # a phase that waits longer than this for the devices to come back fails

# A Python Device in its own process, as on a robot: one request per tick, one JSON line per request with the
# device's own bookkeeping (pending requests, remembered late ids, subscription acks) beside the answer.
PY_DEVICE = r"""
import json, signal, sys, time
import numpy as np
from edgerun.device import Device
bundle, url, x_path, rate, deadline_ms = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
budget = sys.argv[6] if len(sys.argv) > 6 else None
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
x = np.load(x_path)
with Device(bundle, broker=url, budget=budget, timeout_ms=deadline_ms) as dev:
    n, due = 0, time.monotonic()
    while not stop:
        try:
            by = dev.infer(x[n % len(x)][None], deadline_ms=deadline_ms).answered_by
        except Exception as exc:  # no exits: a missed request; the loop goes on
            by = "missed: " + type(exc).__name__
        n += 1
        c = dev._client
        print(json.dumps({"n": n, "by": by, "pending": len(dev._pending), "late_ids": len(dev._late_ids),
                          "hedge_losers": len(dev._hedge_losers), "acks": len(c._acks)}), flush=True)
        due += 1.0 / rate
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        else:
            due = now
"""

# Many short-lived devices in one process: each opens, asks `per` times and closes (scenario churn).
PY_CHURN = r"""
import json, sys
import numpy as np
from edgerun.device import Device
bundle, url, x_path, devices, per = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
x = np.load(x_path)
for d in range(devices):
    with Device(bundle, broker=url, timeout_ms=5000) as dev:
        by = [dev.infer(x[(d * per + i) % len(x)][None]).answered_by for i in range(per)]
    print(json.dumps({"device": d + 1, "by_server": by.count("server")}), flush=True)
    sys.stdin.readline()  # the benchmark samples this process, then lets the next device open
"""


def proc_stats(pid: int) -> dict | None:
    """Resident memory (KiB), open file descriptors and threads of ``pid``; None once it is gone."""
    try:
        rss = next(int(ln.split()[1]) for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if ln.startswith("VmRSS:"))
        return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")),
                "threads": len(os.listdir(f"/proc/{pid}/task"))}
    except (OSError, StopIteration, ValueError):
        return None


class DeviceProc:
    """A device process that prints one JSON line per request (PY_DEVICE, `edgerun run --rate --json`,
    `edgerun_control_loop --each`); a reader thread counts its requests and those the server answered."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, start_new_session=True)
        self.n = 0
        self.by_server = 0
        self.last: dict = {}
        self.summary: dict | None = None
        self._lock = threading.Lock()
        self._err: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        for ln in self.proc.stdout:
            try:
                rec = json.loads(ln)
            except ValueError:
                continue
            if "summary" in rec or "requests" in rec:  # run --json's / the control loop's summary at the end
                self.summary = rec.get("summary", rec)
                continue
            with self._lock:
                self.n += 1
                self.by_server += rec.get("answered_by", rec.get("by")) == "server"
                self.last = rec

    def _read_err(self) -> None:
        for ln in self.proc.stderr:
            self._err.append(ln)
            del self._err[:-50]

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.n, self.by_server

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"{self.name} exited ({self.proc.returncode}):\n{''.join(self._err)[-3000:]}")

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.2)  # the reader takes the last lines


def wait_back(devices: list[DeviceProc], answers: int = 3) -> float:
    """Wait until every device had ``answers`` more requests answered by the server; returns the seconds."""
    marks = {d.name: d.counts()[1] for d in devices}
    t0 = time.monotonic()
    while any(d.counts()[1] < marks[d.name] + answers for d in devices):
        for d in devices:
            d.check_alive()
        if time.monotonic() - t0 > HANG_GUARD_S:
            late = [d.name for d in devices if d.counts()[1] < marks[d.name] + answers]
            raise SystemExit(f"hang guard: {late} got no answer from the server within {HANG_GUARD_S:g} s")
        time.sleep(0.02)
    return time.monotonic() - t0


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    return round(float(np.polyfit(x, y, 1)[0]) * 1e4, 3) if len(x) > 1 and np.ptp(x) > 0 else 0.0


def drift(points: list[tuple[float, float]]) -> dict:
    """First vs last window (median of the first / last 3 samples) and the least-squares slope per 10k
    requests of ``(requests, value)`` samples, over all of them and over their second half (a warm-up, a cache
    filling once, weigh in the first; a leak goes on in the second)."""
    if len(points) < 2:
        return {}
    x = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    k, h = min(3, len(points) // 2), len(points) // 2
    return {"first": float(np.median(y[:k])), "last": float(np.median(y[-k:])), "per_10k_requests": _slope(x, y),
            "second_half_per_10k_requests": _slope(x[h:], y[h:])}


def retained_device_presence(bundle, url: str) -> list[str]:
    """Device presence topics the broker keeps retained: a fresh subscriber gets them first, then a marker
    of its own published after its SUBACK closes the list."""
    from edgerun import transport

    got: list[str] = []
    done = threading.Event()
    marker = f"{transport.base_topic(bundle.model_id, bundle.topic_id)}/presence/device/zz-soak-marker"

    def on_msg(msg) -> None:
        if msg.topic == marker:
            done.set()
        elif msg.retain and msg.payload:
            got.append(msg.topic)

    watcher = transport.MqttClient(url, f"soak-watch-{os.getpid()}", on_message=on_msg)
    watcher.connect()
    try:
        watcher.subscribe(transport.presence_filter(bundle.model_id, bundle.topic_id, "device"))
        watcher.publish(marker, b"{}")
        if not done.wait(HANG_GUARD_S):
            raise SystemExit("hang guard: the presence marker did not come back")
    finally:
        watcher.close()
    return got
