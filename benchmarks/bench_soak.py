"""Endurance (soak): do the device, the server or the broker grow over long runs and through outages?

    python benchmarks/bench_soak.py --out benchmarks/results/xeon/soak.json

A real Mosquitto (edgerun.broker), one real `edgerun serve` process for two digits bundles (plain, and with
early exits), and three long-running devices, each in its own process as on a robot: the Python Device on the
exits bundle (PY_DEVICE, budget off: every request asks the server unless it is away), `edgerun run --rate`
and the C++ `edgerun_control_loop` on the plain bundle (built as the tests build it; `--window 1000`: its
latency window is full after 1,000 ticks, so what grows after is something else; `run --rate` keeps the last
100,000 latencies, ~32 B each, which fill over the run). Every ``--every-s`` seconds the resident memory
(VmRSS), open fds and threads of each process are sampled beside each device's request count. Phases, one after the other, the same device processes throughout:

  steady   the devices ask at ``--rate`` Hz each until the Python device has sent ``--requests``
  broker   the broker stopped and restarted on its port ``--restarts`` times (each time until every device
           has 3 answers from the server again)
  server   the server SIGKILLed and started again ``--server-restarts`` times
  freeze   the server SIGSTOPped for ``--freeze-s`` (every request meanwhile times out) ``--freezes`` times
  churn    (devices stopped) ``--churn-devices`` short-lived Python Devices in one process, each opening,
           asking ``--churn-requests`` times and closing, then ``--cpp-churn`` runs of the C++ edgerun_device
           (a process each): the server's fds / threads / memory, and the broker's retained device presence

Reported: per process and metric, the drift over the steady phase (first vs last window, least-squares
slope per 10k requests), and for each later phase the change from before it to after it; the Python
device's own bookkeeping (pending requests, remembered late ids, subscription acks) at each phase's end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak_fleet import PY_CHURN, PY_DEVICE, DeviceProc, drift, proc_stats, wait_back  # noqa: E402

METRICS = ("rss_kib", "fds", "threads")


class Soak:
    """The broker, the server, the devices, and the samples taken of them."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.samples: list[dict] = []
        self.phase = "start"
        self.broker = None
        self.server = None
        self.devices: list[DeviceProc] = []
        self._stop = threading.Event()

    # -- processes -----------------------------------------------------------
    def start_broker(self, port: int | None = None) -> None:
        from edgerun.broker import Mosquitto

        self.broker = Mosquitto(port=port).start()

    def start_server(self) -> None:
        from edgerun import procs

        self.server = procs.start_server(self.plain.path, self.broker.url, self.work / "serve.log",
                                         str(self.exits.path), "--threads", "1")

    def pids(self) -> dict[str, int]:
        out = {d.name: d.pid for d in self.devices}
        if self.server is not None:
            out["server"] = self.server.pid
        if self.broker is not None and self.broker._proc is not None:
            out["broker"] = self.broker._proc.pid
        return out

    def sample(self, tag: str = "") -> dict:
        s = {"t": round(time.monotonic() - self.t0, 2), "phase": self.phase, "tag": tag,
             "requests": {d.name: d.counts()[0] for d in self.devices},
             "stats": {name: proc_stats(pid) for name, pid in self.pids().items()}}
        self.samples.append(s)
        return s

    def _sampler(self) -> None:
        while not self._stop.wait(self.args.every_s):
            self.sample()

    # -- phases --------------------------------------------------------------
    def run(self) -> dict:
        from cpp_device_build import build, control_loop, missing_tools
        from edgerun.exporters import ExportConfig, export

        a = self.args
        self.plain = export("zoo:digits-cnn", ExportConfig(cut=None, evaluate=False), self.work / "digits")
        self.exits = export("zoo:digits-cnn", ExportConfig(cut="block2", exits="auto", evaluate=False),
                            self.work / "digits-exits")
        x = np.ascontiguousarray(self.plain.samples(), dtype=np.float32)
        np.save(self.work / "x.npy", x)
        rows = a.requests + int(a.rate * a.run_rate_s)  # `run --rate` goes through its input once
        np.save(self.work / "x_run.npy", np.resize(x, (rows, *x.shape[1:])))
        why = missing_tools()
        exe = None if why else build(Path(a.build_dir) if a.build_dir else self.work / "build")
        self.t0 = time.monotonic()
        self.start_broker()
        self.port = self.broker.port
        self.start_server()
        url = self.broker.url
        py = [sys.executable, "-c", PY_DEVICE, str(self.exits.path), url, str(self.work / "x.npy"), str(a.rate),
              str(a.deadline_ms), "off"]
        self.devices.append(DeviceProc("device-py", py))
        self.devices.append(DeviceProc("run-rate", [sys.executable, "-m", "edgerun", "run", str(self.plain.path),
                                                    "--broker", url, "--input", str(self.work / "x_run.npy"),
                                                    "--rate", str(a.rate), "--deadline-ms", str(a.deadline_ms),
                                                    "--json"]))
        if exe is not None:
            self.devices.append(DeviceProc("device-cpp", [str(control_loop(exe)), str(self.plain.path), "--broker",
                                                          url, "--input", str(self.work / "x.npy"), "--rate",
                                                          str(a.rate), "--ticks", "0", "--deadline-ms",
                                                          str(a.deadline_ms), "--each", "--window", "1000"]))
        else:
            print(f"no C++ device: {why}")
        result: dict = {"phases": {}, "device_bookkeeping": {}}
        threading.Thread(target=self._sampler, daemon=True).start()
        try:
            self.phase = "warmup"
            wait_back(self.devices, answers=50)
            self.phase = "steady"
            self.sample("begin")
            py_dev = self.devices[0]
            while py_dev.counts()[0] < a.requests:
                for d in self.devices:
                    d.check_alive()
                time.sleep(0.2)
            self.sample("end")
            result["device_bookkeeping"]["steady"] = dict(py_dev.last)
            for name, n, step in (("broker", a.restarts, self.restart_broker),
                                  ("server", a.server_restarts, self.restart_server),
                                  ("freeze", a.freezes, self.freeze_server)):
                if n:
                    result["phases"][name] = self.around(name, n, step)
                    result["device_bookkeeping"][name] = dict(py_dev.last)
        finally:
            self._stop.set()
            for d in self.devices:
                d.stop()
        result["device_summaries"] = {d.name: d.summary for d in self.devices}
        if a.churn_devices or a.cpp_churn:
            self.devices = []
            result["churn"] = self.churn(exe)
        return result

    def around(self, name: str, times: int, step) -> dict:
        """Run ``step`` ``times`` times; each process's stats before the first and after the last (once every
        device is answered by the server again), and the seconds each took to come back."""
        self.phase = name
        before, pids_before = self.sample("before"), self.pids()
        back_s = [step() for _ in range(times)]
        after, pids_after = self.sample("after"), self.pids()
        change = {}
        for p, b in before["stats"].items():
            e = after["stats"].get(p)
            if b and e:
                change[p] = {m: e[m] - b[m] for m in METRICS}
                change[p]["same_process"] = pids_before[p] == pids_after.get(p)
        return {"times": times, "back_s_median": round(float(np.median(back_s)), 2),
                "back_s_max": round(float(np.max(back_s)), 2), "change": change,
                "requests": {d.name: after["requests"][d.name] - before["requests"][d.name] for d in self.devices}}

    def restart_broker(self) -> float:
        self.broker.stop()
        time.sleep(self.args.down_s)
        self.start_broker(self.port)
        return wait_back(self.devices)

    def restart_server(self) -> float:
        self.server.kill()
        self.server.wait()
        time.sleep(self.args.down_s)
        self.start_server()
        return wait_back(self.devices)

    def freeze_server(self) -> float:
        os.kill(self.server.pid, signal.SIGSTOP)
        time.sleep(self.args.freeze_s)
        os.kill(self.server.pid, signal.SIGCONT)
        return wait_back(self.devices)

    def churn(self, exe: Path | None) -> dict:
        """Short-lived devices against the same server: its state before and after, the broker's retained
        device presence at the end."""
        from soak_fleet import retained_device_presence

        a = self.args
        self.phase = "churn"
        out: dict = {}
        base = {p: proc_stats(pid) for p, pid in self.pids().items()}
        if a.churn_devices:
            p = subprocess.Popen([sys.executable, "-c", PY_CHURN, str(self.plain.path), self.broker.url,
                                  str(self.work / "x.npy"), str(a.churn_devices), str(a.churn_requests)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            churner, answered = [], 0
            for k in range(a.churn_devices):
                rec = json.loads(p.stdout.readline())
                answered += rec["by_server"]
                if k == 0 or (k + 1) % max(1, a.churn_devices // 10) == 0:
                    churner.append((k + 1, proc_stats(p.pid)))
                    self.sample(f"py-churn {k + 1}")
                p.stdin.write("\n")
                p.stdin.flush()
            p.stdin.close()
            p.wait(timeout=60)
            out["python_devices"] = {"devices": a.churn_devices, "requests_each": a.churn_requests,
                                     "answered_by_server": answered,
                                     # x: the churn process's requests, so the slope is per 10k requests too
                                     "churn_process": {m: drift([(k * a.churn_requests, s[m]) for k, s in churner])
                                                       for m in METRICS}}
        if exe is not None and a.cpp_churn:
            for k in range(a.cpp_churn):
                r = subprocess.run([str(exe), str(self.plain.path), "--broker", self.broker.url, "--input",
                                    str(self.work / "x.npy"), "--repeat", str(a.churn_requests), "--deadline-ms",
                                    "5000"], capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    raise SystemExit(f"edgerun_device failed ({r.returncode}): {r.stderr[-2000:]}")
                if (k + 1) % max(1, a.cpp_churn // 5) == 0:
                    self.sample(f"cpp-churn {k + 1}")
            out["cpp_devices"] = {"runs": a.cpp_churn, "requests_each": a.churn_requests}
        end = {p: proc_stats(pid) for p, pid in self.pids().items()}
        out["change"] = {p: {m: end[p][m] - base[p][m] for m in METRICS} for p in base if base[p] and end.get(p)}
        out["retained_device_presence"] = len(retained_device_presence(self.plain, self.broker.url))
        return out

    def stop(self) -> None:
        from edgerun import procs

        procs.stop(self.server)
        if self.broker is not None:
            self.broker.stop()


def steady_drift(samples: list[dict]) -> dict:
    """Per process and metric over the steady phase: x = the device's own requests (server and broker: all
    devices' requests together)."""
    steady = [s for s in samples if s["phase"] == "steady"]
    out: dict = {}
    for p in steady[0]["stats"] if steady else []:
        pts = {m: [] for m in METRICS}
        for s in steady:
            st = s["stats"].get(p)
            if st is None:
                continue
            x = s["requests"][p] if p in s["requests"] else sum(s["requests"].values())
            for m in METRICS:
                pts[m].append((x, st[m]))
        out[p] = {m: drift(v) for m, v in pts.items()}
    return out


def print_table(result: dict) -> None:
    print(f"\nsteady: {result['args']['requests']} requests of the Python device at {result['args']['rate']:g} Hz "
          f"each device; {result['machine']}")
    print(f"{'process':11} {'RSS MiB first -> last':>22} {'KiB/10k req':>12} {'2nd half':>9} {'fds':>9} "
          f"{'threads':>9}")
    for p, d in result["steady"].items():
        r, f, t = d["rss_kib"], d["fds"], d["threads"]
        if not r:
            continue
        print(f"{p:11} {r['first'] / 1024:>9.1f} -> {r['last'] / 1024:>8.1f} {r['per_10k_requests']:>12.1f} "
              f"{r['second_half_per_10k_requests']:>9.1f} {f['first']:>4.0f}->{f['last']:<4.0f} "
              f"{t['first']:>4.0f}->{t['last']:<4.0f}")
    for name, ph in result["phases"].items():
        print(f"\n{name}: {ph['times']} times, back in median {ph['back_s_median']} s (max {ph['back_s_max']} s); "
              "change from before the first to after the last:")
        for p, c in ph["change"].items():
            same = "" if c["same_process"] else " (a new process)"
            print(f"  {p:11} RSS {c['rss_kib'] / 1024:+7.2f} MiB  fds {c['fds']:+d}  threads {c['threads']:+d}{same}")
    for phase, b in result["device_bookkeeping"].items():
        print(f"Python device after {phase}: " + ", ".join(f"{k} {v}" for k, v in b.items() if k not in ("n", "by")))
    if "churn" in result:
        c = result["churn"]
        print(f"\nchurn: {json.dumps({k: v for k, v in c.items() if k != 'change'})}")
        for p, ch in c["change"].items():
            print(f"  {p:11} RSS {ch['rss_kib'] / 1024:+7.2f} MiB  fds {ch['fds']:+d}  threads {ch['threads']:+d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20000, help="steady phase: requests of the Python device")
    ap.add_argument("--rate", type=float, default=300.0, help="requests per second of each device")
    ap.add_argument("--deadline-ms", type=float, default=200.0)
    ap.add_argument("--restarts", type=int, default=50, help="broker restarts")
    ap.add_argument("--server-restarts", type=int, default=5)
    ap.add_argument("--freezes", type=int, default=10)
    ap.add_argument("--freeze-s", type=float, default=1.0)
    ap.add_argument("--down-s", type=float, default=0.3, help="how long the broker / server stays away")
    ap.add_argument("--churn-devices", type=int, default=500)
    ap.add_argument("--churn-requests", type=int, default=10)
    ap.add_argument("--cpp-churn", type=int, default=100)
    ap.add_argument("--every-s", type=float, default=2.0, help="sampling period")
    ap.add_argument("--run-rate-s", type=float, default=600.0,
                    help="rows of `run --rate`'s input beyond --requests, in seconds at --rate")
    ap.add_argument("--build-dir", default=None, help="build the C++ device here (kept, rebuilt incrementally)")
    ap.add_argument("--machine", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_soak_"))
    soak = Soak(args, work)
    t0 = time.monotonic()
    try:
        result = soak.run()
    finally:
        soak.stop()
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    result = {"machine": args.machine or f"{cpu}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
              "args": {k: v for k, v in vars(args).items() if k != "out"}, "wall_s": round(time.monotonic() - t0, 1),
              "steady": steady_drift(soak.samples), **result, "samples": soak.samples}
    print_table(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
