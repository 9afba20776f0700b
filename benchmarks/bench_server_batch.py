"""Server batching across devices: throughput and latency of one `edgerun serve` worker
with and without `--max-batch`, under K devices that each keep one request in flight.

Each mode starts its own `edgerun serve` process (onnxruntime, 1 thread) on a private
Mosquitto; the devices are MQTT clients in this process that send the bundle's real cut
tensor (the front half's output on a sample) as a REQUEST frame and send their next
request as soon as the reply arrives (closed loop). Per mode: replies per second over
``--seconds``, p50 / p99 latency (send to reply, ms), and the mean requests per back-half
call (``ServerStats.runs``). Modes run in the order 1, N, 1, N and each figure is the
median of its two windows, so drift on the machine hits both alike. The ratio is
batched / unbatched replies per second, in the same run.

Run:  python benchmarks/bench_server_batch.py --out benchmarks/results/zen5/server_batch.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgerun import procs, transport, wire
from edgerun.broker import Mosquitto
from edgerun.bundle import Bundle
from edgerun.device import Device
from edgerun.engine import make_engine
from edgerun.profiles import cpu_name

CASES = {"zoo:digits-cnn": "down", "zoo:efficientnet-lite0": "blocks.7"}


class _Devices:
    """K closed-loop clients: each sends, waits for its reply, sends again."""

    def __init__(self, b: Bundle, url: str, k: int, payload_for) -> None:
        self.lat: list[float] = []
        self.done = 0
        self.running = False
        self.lock = threading.Lock()
        self.clients = []
        self.sent: dict[tuple[int, int], float] = {}
        self.payload_for = payload_for
        for i in range(k):
            dev = f"bench-{i}"
            req = transport.request_topic(b.model_id, b.topic_id, dev)
            resp = transport.response_topic(b.model_id, b.topic_id, dev)
            c = transport.MqttClient(url, f"edgerun-{dev}-{time.monotonic_ns() % 10**6}",
                                     on_message=lambda m, i=i: self._on_reply(i, m))
            c.connect()
            c.subscribe(resp)
            self.clients.append((c, req, resp))
        self.rid = [0] * k

    def _send(self, i: int) -> None:
        c, req, resp = self.clients[i]
        self.rid[i] += 1
        rid = self.rid[i]
        self.sent[(i, rid)] = time.perf_counter()
        c.publish(req, self.payload_for(rid), response_topic=resp, correlation=transport.correlation_bytes(rid))

    def _on_reply(self, i: int, msg) -> None:
        rid = transport.correlation_id(msg.properties.CorrelationData)
        t = self.sent.pop((i, rid), None)
        if t is None:
            return
        frame = wire.decode(bytes(msg.payload))
        if frame.kind != wire.Kind.REPLY:
            raise RuntimeError(f"request {rid} failed: {frame.meta}")
        with self.lock:
            if self.running:
                self.lat.append((time.perf_counter() - t) * 1e3)
                self.done += 1
        self._send(i)

    def window(self, seconds: float) -> dict:
        with self.lock:
            self.lat, self.done, self.running = [], 0, True
        t0 = time.perf_counter()
        time.sleep(seconds)
        with self.lock:
            self.running = False
            lat, done = list(self.lat), self.done
        dt = time.perf_counter() - t0
        return {"rps": done / dt, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}

    def start(self) -> None:
        for i in range(len(self.clients)):
            self._send(i)

    def close(self) -> None:
        for c, _, _ in self.clients:
            c.close()


def _bundle(spec: str, cut: str, work: Path) -> Bundle:
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model

    return export(trace_model(spec), ExportConfig(cut=cut, evaluate=False), work / spec.split(":")[1])


def _stats(log_path: Path) -> dict:
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if "stopped: " in line:
            return json.loads(line.split("stopped: ", 1)[1])
    return {}


def bench(spec: str, cut: str, work: Path, devices: int, max_batch: int, wait_ms: float, seconds: float) -> dict:
    b = _bundle(spec, cut, work)
    front = make_engine("ort", onnx_path=b.file("front.onnx"), threads=1)
    mid = front.run({b.inputs[0].name: np.asarray(b.samples()[:1], np.float32)})
    cut_t = [np.ascontiguousarray(mid[s.name]) for s in b.cut]

    def payload(rid: int) -> bytes:
        return wire.encode(wire.Frame(wire.Kind.REQUEST, rid, 0, b.hash16, cut_t, {}))

    modes = {"unbatched": (), f"max_batch_{max_batch}": ("--max-batch", str(max_batch), "--batch-wait-ms", f"{wait_ms:g}")}
    windows: dict[str, list[dict]] = {m: [] for m in modes}
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with Mosquitto() as broker:
        for rep in range(2):
            for mode, extra in modes.items():
                log_path = work / f"serve-{mode}-{rep}.log"
                srv = procs.start_server(b.path, broker.url, log_path, *extra)
                with Device(b, broker=broker.url, engine="ort") as probe:  # until it is subscribed
                    procs.first_server_answer(probe, np.asarray(b.samples()[:1], np.float32), srv, log_path)
                devs = _Devices(b, broker.url, devices, payload)
                try:
                    devs.start()
                    time.sleep(1.0)  # warm up
                    windows[mode].append(devs.window(seconds))
                finally:
                    devs.close()
                    procs.stop(srv)
                runs[mode].append(_stats(log_path))
    out = {}
    for mode in modes:
        w = windows[mode]
        st = runs[mode]
        out[mode] = {k: statistics.median(x[k] for x in w) for k in ("rps", "p50_ms", "p99_ms")}
        out[mode]["windows"] = w
        out[mode]["mean_batch"] = statistics.median(s["served"] / max(s["runs"], 1) for s in st if s)
    batched = f"max_batch_{max_batch}"
    out["ratio_rps_batched_over_unbatched"] = out[batched]["rps"] / out["unbatched"]["rps"]
    return {"model": spec, "cut": cut, "devices": devices, "modes": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--only", default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/server_batch.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for spec, cut in CASES.items():
            if args.only and args.only not in spec:
                continue
            rows.append(bench(spec, cut, Path(d), args.devices, args.max_batch, args.batch_wait_ms, args.seconds))
            r = rows[-1]["modes"]
            print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "windows"})
                              for k, v in r.items()}), flush=True)
    meta = {"machine": platform.machine(), "cpu": cpu_name(), "server_threads": 1, "devices": args.devices,
            "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms, "seconds": args.seconds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print("| model | cut | devices | mode | replies/s | p50 ms | p99 ms | requests per call |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for mode, m in r["modes"].items():
            if isinstance(m, dict):
                print(f"| {r['model']} | {r['cut']} | {r['devices']} | {mode} | {m['rps']:.0f} | {m['p50_ms']:.2f} | "
                      f"{m['p99_ms']:.2f} | {m['mean_batch']:.2f} |")
        print(f"| | | | batched / unbatched | **{r['modes']['ratio_rps_batched_over_unbatched']:.2f}x** | | | |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
