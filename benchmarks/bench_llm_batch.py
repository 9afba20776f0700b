"""Batched split-LLM sessions on the server: decode steps of several sessions in one back-half call.

Side by side in one run, against the peer (one session per back-half call, as ``serve --max-batch 1``):
- **back half alone** (this process, onnxruntime): ms per session-step for B sessions' decode steps
  in one call (their caches padded to the longest and masked) vs B calls of one; at cache lengths
  ``--lengths`` (all sessions as long, and ragged: lengths spread over 1..2x) and ``--threads``;
- **end to end**: ``--devices`` LlmDevices (threads of this process, 1 onnxruntime thread each)
  generate at once through one ``edgerun serve`` worker over a private Mosquitto, with
  ``--max-batch 1`` and with ``--max-batch N``: tokens per second over all devices, ms per token
  per device, the mean batch the worker ran, and whether every device got the tokens it gets alone.
  The devices and the worker share this machine's cores, so the end-to-end gain is bounded by the
  devices' own front halves; the back-half rows are the server's gain alone.

Run:  python benchmarks/bench_llm_batch.py --out benchmarks/results/xeon/llm_batch.json
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

from edgerun import llm, procs
from edgerun.broker import Mosquitto
from edgerun.llm_device import LlmDevice
from edgerun.profiles import cpu_name

PROMPTS = ("Name three colours of the rainbow.", "Write a Python function that reverses a string.",
           "Explain what a robot's control loop is in two sentences.", "What is the capital of France?",
           "List four planets of the solar system.", "How do I open a file in Python?",
           "Give me a short definition of machine learning.", "What should I pack for a day hike?")


def _bundle(cache: Path) -> llm.LlmBundle:
    from edgerun.exporters.llm_export import export_llm

    out = cache / "smollm2-cut15-none-fp32-batch"
    if not llm.is_llm_bundle(out):
        print(f"exporting cut 15 -> {out}", flush=True)
        export_llm(out, cut=15, max_context=1024)
    b = llm.LlmBundle.load(out)
    if not llm.Half(b, "back", 1).batches:
        raise SystemExit(f"{out} was exported before sessions were batched: delete it")
    return b


def _caches(b: llm.LlmBundle, lengths: list[int], rng: np.random.Generator) -> list[llm.Cache]:
    s, n = b.spec, b.spec.layers - b.spec.cut
    out = []
    for p in lengths:
        c = llm.Cache(n, s.kv_heads, s.head_dim)
        c.append(rng.normal(size=(n, 1, s.kv_heads, p, s.head_dim)).astype(np.float32),
                 rng.normal(size=(n, 1, s.kv_heads, p, s.head_dim)).astype(np.float32))
        out.append(c)
    return out


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def back_alone(b: llm.LlmBundle, batches: list[int], lengths: list[int], threads: list[int], reps: int) -> list[dict]:
    rng, rows = np.random.default_rng(0), []
    for th in threads:
        back = llm.Half(b, "back", th)
        for p in lengths:
            for ragged in (False, True):
                for n in batches:
                    ls = [int(x) for x in np.linspace(p, 2 * p, n)] if ragged else [p] * n
                    xs = [rng.normal(size=(1, 1, b.spec.hidden)).astype(np.float32) for _ in range(n)]
                    caches = _caches(b, ls, rng)

                    def one_by_one():
                        for x, c in zip(xs, caches):
                            back.step(x, c)
                            c.truncate(c.length - 1)

                    def batched():
                        back.step_batch(xs, caches)
                        for c in caches:
                            c.truncate(c.length - 1)

                    single = _time(one_by_one, reps)
                    together = _time(batched, reps) if n > 1 else single
                    rows.append({"threads": th, "cache_positions": ls[0] if not ragged else f"{ls[0]}..{ls[-1]}",
                                 "sessions": n, "one_by_one_ms": single, "batched_ms": together,
                                 "ms_per_session_step_one_by_one": single / n,
                                 "ms_per_session_step_batched": together / n,
                                 "speedup": single / together})
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def end_to_end(b: llm.LlmBundle, devices: int, tokens: int, server_threads: int, work: Path) -> list[dict]:
    rows, alone = [], {}
    with Mosquitto() as broker:
        for max_batch in (1, devices):
            log = work / f"serve{max_batch}.log"
            w = procs.start_server(b.path, broker.url, log, "--threads", str(server_threads), "--max-batch",
                                   str(max_batch), "--batch-wait-ms", "2")
            try:
                with LlmDevice(b, broker.url, threads=1, step_timeout_s=2) as probe:
                    probe.wait_ready(timeout_s=120)
                    if not alone:  # each prompt's tokens through this worker, one device at a time
                        probe.step_timeout_s = 120
                        alone = {p: probe.generate(p, max_new_tokens=tokens).tokens for p in PROMPTS[:devices]}
                gens, errors = {}, []
                start = threading.Barrier(devices)

                def run(i: int) -> None:
                    try:
                        with LlmDevice(b, broker.url, threads=1, step_timeout_s=120) as dev:
                            dev.generate(PROMPTS[i], max_new_tokens=2)  # warm this device's front half
                            start.wait()
                            gens[i] = dev.generate(PROMPTS[i], max_new_tokens=tokens, stop_at_eos=False)
                    except Exception as exc:  # noqa: BLE001 - reported below
                        errors.append(exc)

                t0 = time.perf_counter()
                ts = [threading.Thread(target=run, args=(i,)) for i in range(devices)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                if errors:
                    raise errors[0]
                wall = max(g.wall_s for g in gens.values())
            finally:
                procs.stop(w)
            stats = [json.loads(line.split("stopped: ", 1)[1]) for line in log.read_text().splitlines()
                     if "stopped: " in line]
            st = stats[-1] if stats else {}
            decode = [s.front_ms + s.rtt_ms for g in gens.values() for s in g.steps[1:]]
            ntok = sum(len(g.tokens) for g in gens.values())
            rows.append({"max_batch": max_batch, "devices": devices, "server_threads": server_threads,
                         "tokens_per_s_all_devices": ntok / wall, "ms_per_token_median": statistics.median(decode),
                         "wall_s": wall, "served": st.get("served"), "runs": st.get("runs"),
                         "mean_batch": (st["served"] / st["runs"]) if st.get("runs") else None,
                         "max_run": st.get("max_run"), "elapsed_incl_setup_s": time.perf_counter() - t0,
                         "same_tokens_as_alone": all(gens[i].tokens[:len(alone[PROMPTS[i]])] == alone[PROMPTS[i]]
                                                     for i in gens)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--lengths", default="64,512", help="cached positions per session")
    ap.add_argument("--threads", default="1,2", help="onnxruntime threads of the back half")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--server-threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgerun-llm-bench")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    a.cache.mkdir(parents=True, exist_ok=True)
    b = _bundle(a.cache)
    alone = back_alone(b, [int(x) for x in a.batches.split(",")], [int(x) for x in a.lengths.split(",")],
                       [int(x) for x in a.threads.split(",")], a.reps)
    with tempfile.TemporaryDirectory() as td:
        e2e = end_to_end(b, a.devices, a.tokens, a.server_threads, Path(td))
    print("\n| back-half threads | cache positions | sessions | one per call ms/step | batched ms/step | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in alone:
        print(f"| {r['threads']} | {r['cache_positions']} | {r['sessions']} | {r['ms_per_session_step_one_by_one']:.1f} | "
              f"{r['ms_per_session_step_batched']:.1f} | {r['speedup']:.2f}x |")
    print("\n| serve --max-batch | devices at once | tokens/s, all devices | ms/token per device (median) | mean batch "
          "| same tokens as alone |")
    print("|---|---|---|---|---|---|")
    for r in e2e:
        mb = "-" if r["mean_batch"] is None else f"{r['mean_batch']:.2f}"
        print(f"| {r['max_batch']} | {r['devices']} | {r['tokens_per_s_all_devices']:.1f} | "
              f"{r['ms_per_token_median']:.1f} | {mb} | {r['same_tokens_as_alone']} |")
    if a.out:
        meta = {"machine": platform.machine(), "cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"),
                "devices": a.devices, "tokens": a.tokens, "prompts": list(PROMPTS[:a.devices])}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"meta": meta, "back_alone": alone, "end_to_end": e2e}, indent=2) + "\n")


if __name__ == "__main__":
    main()
