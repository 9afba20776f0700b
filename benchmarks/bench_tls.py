"""What TLS costs a split request: the same bundle served through a plain broker, a TLS broker and one
that requires client certificates, the requests interleaved in one run (loopback: the cost of the
encryption and of the handshake, not of a network).

    python benchmarks/bench_tls.py --requests 300 --out benchmarks/results/xeon/tls.json

Per broker: the median time to open a Device (connect + TLS handshake + subscribe, 7 opens interleaved),
and per-request p50 / p95 /
p99 of the total and of the network stage (round trip minus the server's compute), digits CNN at its
default cut and EfficientNet-Lite0 at blocks.7 (62.7 KB per request) when --effnet is given.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

KINDS = {"plain": {}, "tls": {"tls": True}, "mutual_tls": {"tls": True, "require_client_cert": True}}
OPENS = 7  # Device opens per broker kind (connect + handshake + subscribe), median reported


def _pct(v: list[float]) -> dict:
    return {f"p{q}": round(float(np.percentile(v, q)), 3) for q in (50, 95, 99)}


def bench_bundle(bundle, requests: int, work: Path) -> dict:
    from edgerun import procs
    from edgerun.broker import Mosquitto
    from edgerun.device import Device

    x = np.ascontiguousarray(bundle.samples()[:1], dtype=np.float32)
    brokers = {k: Mosquitto(**kw).start() for k, kw in KINDS.items()}
    servers, devices, out = [], {}, {}
    try:
        for k, m in brokers.items():
            servers.append(procs.start_server(bundle.path, m.url, work / f"serve-{k}.log"))
        opens = {k: [] for k in brokers}
        for _ in range(OPENS):  # interleaved; the first round also pays the engine's first load: median
            for k, m in brokers.items():
                t0 = time.perf_counter()
                Device(bundle, broker=m.url, timeout_ms=30000).close()
                opens[k].append((time.perf_counter() - t0) * 1e3)
        for k, m in brokers.items():
            out[k] = {"open_ms": round(float(np.median(opens[k])), 2)}
            dev = Device(bundle, broker=m.url, timeout_ms=30000)
            procs.first_server_answer(dev, x, servers[list(brokers).index(k)], work / f"serve-{k}.log")
            devices[k] = dev
        totals = {k: [] for k in brokers}
        network = {k: [] for k in brokers}
        for _ in range(20):  # warm-up
            for dev in devices.values():
                dev.infer(x)
        for _ in range(requests):
            for k, dev in devices.items():  # interleaved: a burst of load hits every kind alike
                time.sleep(0.002)
                r = dev.infer(x)
                totals[k].append(r.timings_ms["total"])
                network[k].append(r.timings_ms["network"])
        for k in brokers:
            out[k].update(total_ms=_pct(totals[k]), network_ms=_pct(network[k]))
        base = out["plain"]["total_ms"]["p50"]
        for k in brokers:
            out[k]["total_p50_vs_plain"] = round(out[k]["total_ms"]["p50"] / base, 3)
    finally:
        for dev in devices.values():
            dev.close()
        for p in servers:
            procs.stop(p)
        for m in brokers.values():
            m.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--effnet", action="store_true", help="also EfficientNet-Lite0 at blocks.7 (exports it: minutes)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from edgerun.exporters.pipeline import ExportConfig, export

    work = Path(tempfile.mkdtemp(prefix="edgerun-bench-tls-"))
    models = {"digits-cnn": ("zoo:digits-cnn", None)}
    if args.effnet:
        models["efficientnet-lite0 blocks.7"] = ("zoo:efficientnet-lite0", "blocks.7")
    result = {"requests": args.requests, "machine": _machine(), "models": {}}
    for name, (spec, cut) in models.items():
        b = export(spec, ExportConfig(cut=cut, evaluate=False), work / name.replace(" ", "_"))
        result["models"][name] = {"bytes_per_request_fp32": b.manifest["predicted"]["crossing_bytes_fp32"],
                                  **bench_bundle(b, args.requests, work)}
        print(json.dumps({name: result["models"][name]}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'model':28} {'broker':11} {'open ms':>8} {'p50 ms':>7} {'p95 ms':>7} {'net p50':>8} {'vs plain':>8}")
    for name, r in result["models"].items():
        for k in KINDS:
            v = r[k]
            print(f"{name:28} {k:11} {v['open_ms']:8.1f} {v['total_ms']['p50']:7.3f} {v['total_ms']['p95']:7.3f} "
                  f"{v['network_ms']['p50']:8.3f} {v['total_p50_vs_plain']:8.3f}")


def _machine() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
