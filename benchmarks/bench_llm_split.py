"""Split LLM decoding: SmolLM2-135M-Instruct with its first layers on the device and the rest on a server.

Side by side in one run, greedy decoding of the same prompts:
- **on device**: both halves in this process (onnxruntime, 1 thread each): the whole model's work,
  no network; the device then holds every weight;
- **split, cut C**: the device runs layers 0..C-1 here, one ``edgerun serve --threads 1`` worker runs the
  rest with the session's KV cache, over a private Mosquitto, on loopback or through the userspace
  link emulator (``--links``: devices/*.toml profiles);
- **replay**: the same split with two workers, the pinned one killed (SIGKILL) before step
  ``--kill-at``: the cost of the step that replays the session to the other worker;
- **local fallback**: one worker, killed the same way, and a device with ``local_fallback``: the
  cost of the step where the device loads its back half and rebuilds the session's cache.

Per mode: prefill (the prompt's step, ms), decode (median ms per token after it), bytes up / down per
generated token, device weight bytes and KV-cache bytes per position. Ratios are split / on device
on the same prompts in the same run. The device and the worker share this machine's cores.

Run:  python benchmarks/bench_llm_split.py --out benchmarks/results/zen5/llm_split.json [--codec tsq]
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edgerun import llm, procs
from edgerun.broker import Mosquitto
from edgerun.llm_device import LlmDevice
from edgerun.profiles import cpu_name, load_link

PROMPTS = ("Name three colours of the rainbow.", "Write a Python function that reverses a string.",
           "Explain what a robot's control loop is in two sentences.", "What is the capital of France?")


def _bundle(cache: Path, cut: int, codec: str, front: str, back: str = "fp32") -> llm.LlmBundle:
    from edgerun.exporters.llm_export import export_llm

    out = cache / f"smollm2-cut{cut}-{codec}-{front}{'' if back == 'fp32' else '-b' + back}-eint8"  # int8 embedding
    if not llm.is_llm_bundle(out):
        print(f"exporting cut {cut}, codec {codec}, front {front}, back {back} -> {out}", flush=True)
        export_llm(out, cut=cut, max_context=512, codec=codec, front_precision=front, back_precision=back)
    return llm.LlmBundle.load(out)


def _on_device(b: llm.LlmBundle, prompts: list[list[int]], n: int) -> dict:
    front, back = llm.Half(b, "front", 1), llm.Half(b, "back", 1)
    prefill, decode, tokens = [], [], []
    for ids in prompts:
        fc, bc, out = front.new_cache(), back.new_cache(), []
        x = np.array([ids], np.int64)
        for i in range(n):
            t = time.perf_counter()
            tok = int(back.step(front.step(x, fc), bc).argmax())
            (prefill if i == 0 else decode).append((time.perf_counter() - t) * 1e3)
            out.append(tok)
            if tok == b.spec.eos:
                break
            x = np.array([[tok]], np.int64)
        tokens.append(out)
    w = b.file(llm.FRONT).stat().st_size + b.file(llm.BACK).stat().st_size
    report = json.loads(b.file(llm.REPORT).read_text())
    front = report.get("front_precision", {}).get("precision", "fp32")
    back = report.get("back_precision", {}).get("precision", "fp32")
    return {"mode": "on device", "cut": None, "codec": "-", "front": front, "back": back, "front_int8_eval": None,
            "front_ms": None,
            "link": "-", "prefill_ms": statistics.median(prefill),
            "decode_ms": statistics.median(decode), "up_B_per_step": 0, "prompt_up_B_per_position": 0,
            "up_B_per_token": 0, "down_B_per_token": 0, "codec_eval": None,
            "device_weight_bytes": w, "device_kv_B_per_position": b.spec.cache_bytes_per_position("front")
            + b.spec.cache_bytes_per_position("back"), "tokens": tokens}


def _split(b: llm.LlmBundle, url: str, prompts: list[str], n: int, link: str) -> dict:
    from edgerun.linkemu import LinkConfig, LinkEmulator
    from edgerun.transport import parse_broker_url

    emu = None
    if link != "loopback":
        emu = LinkEmulator(parse_broker_url(url), LinkConfig.from_profile(load_link(link), outages=())).start()
    try:
        with LlmDevice(b, emu.url if emu else url, threads=1, step_timeout_s=2) as dev:
            dev.wait_ready()  # the worker may still be loading; this also warms it
            dev.step_timeout_s = 60.0
            gens = [dev.generate(p, max_new_tokens=n) for p in prompts]
    finally:
        if emu is not None:
            emu.stop()
    return _row("split", b, link, gens)


def _row(mode: str, b: llm.LlmBundle, link: str, gens: list) -> dict:
    prefill = [g.steps[0].front_ms + g.steps[0].rtt_ms for g in gens]
    decode = [s.front_ms + s.rtt_ms for g in gens for s in g.steps[1:] if not s.replays]
    ntok = sum(len(g.tokens) for g in gens)
    report = json.loads(b.file(llm.REPORT).read_text())
    codec, fp = report.get("codec"), report.get("front_precision", {"precision": "fp32"})
    bp = report.get("back_precision", {"precision": "fp32"})
    return {"mode": mode, "cut": b.spec.cut, "codec": b.codec["id"], "front": fp["precision"], "back": bp["precision"],
            "front_int8_eval": fp if fp["precision"] == "int8" else None,
            "back_int8_eval": bp if bp["precision"] == "int8" else None,
            "front_ms": statistics.median(s.front_ms for g in gens for s in g.steps[1:]), "link": link,
            "prefill_ms": statistics.median(prefill), "decode_ms": statistics.median(decode),
            "up_B_per_step": statistics.median(s.up_bytes for g in gens for s in g.steps[1:] if not s.replays),
            "prompt_up_B_per_position": statistics.median(g.steps[0].up_bytes / g.prompt_tokens for g in gens),
            "up_B_per_token": sum(g.bytes_up for g in gens) / ntok, "down_B_per_token": sum(g.bytes_down for g in gens) / ntok,
            "codec_eval": None if not codec or not codec["chosen"] else codec["chosen"]["eval"],
            "device_weight_bytes": b.file(llm.FRONT).stat().st_size,
            "device_kv_B_per_position": b.spec.cache_bytes_per_position("front"),
            "tokens": [g.tokens for g in gens], "replays": sum(g.replays for g in gens),
            "workers": sorted({w for g in gens for w in g.workers})}


def _replay(b: llm.LlmBundle, url: str, prompt: str, n: int, kill_at: int, workdir: Path) -> dict:
    ws = [procs.start_server(b.path, url, workdir / f"replay{i}.log", "--threads", "1", "--worker-id", f"r{i}")
          for i in range(2)]
    try:
        until = time.monotonic() + 120
        while not all("serving" in (workdir / f"replay{i}.log").read_text() for i in range(2)):
            if time.monotonic() > until:
                raise RuntimeError(f"the replay workers did not start; see {workdir}/replay*.log")
            time.sleep(0.2)
        with LlmDevice(b, url, threads=1, step_timeout_s=2) as dev:
            dev.wait_ready()
            dev.step_timeout_s = 60.0
            killed: list[str] = []

            def kill_pinned(g) -> None:
                if len(g.steps) == kill_at and not killed:
                    killed.append(g.steps[-1].worker)
                    ws[int(g.steps[-1].worker[1:])].send_signal(signal.SIGKILL)

            dev.before_step = kill_pinned
            g = dev.generate(prompt, max_new_tokens=n)
    finally:
        for w in ws:
            procs.stop(w)
    step = next(s for s in g.steps if s.replays)
    normal = [s.front_ms + s.rtt_ms for s in g.steps[1:] if not s.replays]
    return {"killed": killed[0], "replayed_positions": step.positions, "why": step.why,
            "replay_step_ms": step.front_ms + step.rtt_ms, "decode_ms": statistics.median(normal),
            "tokens": g.tokens, "workers": g.workers}


def _fallback(b: llm.LlmBundle, url: str, prompt: str, n: int, kill_at: int, workdir: Path,
              preload: bool = False) -> dict:
    """One worker, killed before step ``kill_at``; the device (local_fallback; with ``preload`` its
    back half loaded at the start) finishes the answer."""
    w = procs.start_server(b.path, url, workdir / f"fallback{int(preload)}.log", "--threads", "1", "--worker-id",
                           f"f{int(preload)}")
    try:
        with LlmDevice(b, url, threads=1, step_timeout_s=2, local_fallback=True, preload_back=preload) as dev:
            dev.wait_ready(timeout_s=120)
            dev.step_timeout_s = 60.0
            dev.before_step = lambda g: w.send_signal(signal.SIGKILL) if len(g.steps) == kill_at else None
            g = dev.generate(prompt, max_new_tokens=n)
    finally:
        procs.stop(w)
    local = [s for s in g.steps if s.worker == "local"]
    first = local[0]
    return {"preload_back": preload, "why": first.why, "rebuilt_positions": first.positions,
            "first_local_step_ms": first.front_ms + first.rtt_ms,
            "server_decode_ms": statistics.median(s.front_ms + s.rtt_ms for s in g.steps[1:] if s.worker != "local"),
            "local_decode_ms": statistics.median(s.front_ms + s.rtt_ms for s in local[1:]),
            "local_steps": len(local), "tokens": g.tokens, "workers": g.workers,
            "device_weight_bytes_after": b.file(llm.FRONT).stat().st_size + b.file(llm.BACK).stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="15:none:fp32,15:tsq:fp32,15:none:int8,15:tsq:int8,5:none:fp32,5:tsq:fp32,"
                    "25:none:fp32,25:tsq:fp32", help="CUT:CODEC:FRONT_PRECISION[:BACK_PRECISION], comma-separated; "
                    "the first is the on-device baseline's bundle and the replay test's")
    ap.add_argument("--links", default="loopback,wifi,lte", help="loopback and/or devices/*.toml link profiles")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per prompt")
    ap.add_argument("--kill-at", type=int, default=16, help="replay test: kill the pinned worker before this step")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgerun-llm-bench",
                    help="where the exported bundles are kept between runs")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    cases = [(int(c[0]), c[1], c[2], c[3] if len(c) > 3 else "fp32") for c in (x.split(":") for x in args.cases.split(","))]
    links = args.links.split(",")
    args.cache.mkdir(parents=True, exist_ok=True)
    rows, replay, fallback = [], None, None
    with tempfile.TemporaryDirectory() as td, Mosquitto() as broker:
        work = Path(td)
        for ci, (cut, codec, front, back) in enumerate(cases):
            b = _bundle(args.cache, cut, codec, front, back)
            tok = llm.Tokenizer(b)
            prompts = [tok.chat(p) for p in PROMPTS]
            if ci == 0:
                base = _on_device(b, prompts, args.tokens)
                rows.append(base)
                replay = _replay(b, broker.url, PROMPTS[0], args.tokens, args.kill_at, work)
                replay["same_tokens_as_on_device"] = replay["tokens"] == base["tokens"][0]
                fallback = [_fallback(b, broker.url, PROMPTS[0], args.tokens, args.kill_at, work, preload)
                            for preload in (False, True)]
                for f in fallback:
                    f["same_tokens_as_on_device"] = f["tokens"] == base["tokens"][0]
            w = procs.start_server(b.path, broker.url, work / f"serve{cut}{codec}{front}{back}.log", "--threads", "1")
            try:
                for link in links:
                    r = _split(b, broker.url, list(PROMPTS), args.tokens, link)
                    r["same_tokens_as_on_device"] = r["tokens"] == base["tokens"]
                    r["identical_generations"] = sum(a == c for a, c in zip(r["tokens"], base["tokens"]))
                    r["decode_vs_on_device"] = r["decode_ms"] / base["decode_ms"]
                    r["weights_vs_on_device"] = r["device_weight_bytes"] / base["device_weight_bytes"]
                    rows.append(r)
                    print(json.dumps({k: v for k, v in r.items() if k != "tokens"}), flush=True)
            finally:
                procs.stop(w)
    print("\n| mode | cut | front | back | codec | link | prefill ms | decode ms/token | device front ms | vs on device | up B/step | "
          "prompt up B/position | down B/token | device weights MiB | device KV KiB/position | generations as on device |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fm = "-" if r["front_ms"] is None else f"{r['front_ms']:.1f}"
        print(f"| {r['mode']} | {r['cut'] or '-'} | {r['front']} | {r.get('back', 'fp32')} | {r['codec']} | {r['link']} | {r['prefill_ms']:.1f} | "
              f"{r['decode_ms']:.1f} | {fm} | {r.get('decode_vs_on_device', 1.0):.2f} | {r['up_B_per_step']:.0f} | "
              f"{r['prompt_up_B_per_position']:.0f} | {r['down_B_per_token']:.0f} | "
              f"{r['device_weight_bytes'] / 2**20:.0f} | {r['device_kv_B_per_position'] / 1024:.1f} | "
              f"{r.get('identical_generations', len(PROMPTS))}/{len(PROMPTS)} |")
    for r in rows:
        if r["codec_eval"] and r["link"] == links[0]:
            e = r["codec_eval"]
            print(f"codec tsq at cut {r['cut']} ({r['front']} front): {e['ratio']:.2f}x fewer bytes per position than "
                  f"fp32; held-out text: top-1 agreement {100 * e['agreement']:.2f} %, perplexity {e['ppl']:.3f}")
        if r["front_int8_eval"] and r["link"] == links[0] and r["codec"] == "none":
            q = r["front_int8_eval"]
            print(f"int8 front at cut {r['cut']}: top-1 agreement with fp32 {100 * q['agreement']:.2f} %, perplexity "
                  f"{q['ppl_int8']:.3f} vs {q['ppl_fp32']:.3f}")
        if r.get("back_int8_eval") and r["link"] == links[0] and r["codec"] == "none":
            q = r["back_int8_eval"]
            print(f"int8 back at cut {r['cut']} ({r['front']} front): top-1 agreement with the fp32 back "
                  f"{100 * q['agreement']:.2f} %, perplexity {q['ppl_int8']:.3f} vs {q['ppl_fp32']:.3f}")
    print(f"\nreplay: worker {replay['killed']} killed before step {args.kill_at}: that step sent "
          f"{replay['replayed_positions']} positions and took {replay['replay_step_ms']:.1f} ms "
          f"(other steps {replay['decode_ms']:.1f} ms); tokens as on device: {replay['same_tokens_as_on_device']}")
    for f in fallback:
        what = "with its back half preloaded rebuilt" if f["preload_back"] else "loaded its back half and rebuilt"
        print(f"local fallback: the only worker killed before step {args.kill_at}: the device {what} "
              f"{f['rebuilt_positions']} positions in {f['first_local_step_ms']:.1f} ms (server steps "
              f"{f['server_decode_ms']:.1f} ms, local steps after it {f['local_decode_ms']:.1f} ms; device weights "
              f"then {f['device_weight_bytes_after'] / 2**20:.0f} MiB); tokens as on device: "
              f"{f['same_tokens_as_on_device']}")
    if args.out:
        meta = {"machine": platform.machine(), "cpu": cpu_name(), "threads": 1, "tokens": args.tokens,
                "prompts": list(PROMPTS), "date": time.strftime("%Y-%m-%d")}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows, "replay": replay, "fallback": fallback}, indent=2))


if __name__ == "__main__":
    main()
