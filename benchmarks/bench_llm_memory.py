"""The split LLM's device memory, measured: what the process holds once its half is loaded.

For SmolLM2-135M-Instruct cut after ``--cut`` layers, each device configuration (front half fp32 or
int8 MatMul weights x token embedding fp32 or int8) is loaded in a fresh Python process, which
reports its resident memory (``VmRSS``) before and after creating the onnxruntime session of the
front half, its peak (``VmHWM``, which includes the session's construction), then runs the same
greedy generations through the front half and an fp32 back half of the same bundle in-process
(1 thread each) and times the front half's steps. The tokens are compared with the first
configuration's: the int8 embedding of this model is exact, so its rows must match its fp32 twin's.
Bundles are exported once into ``--cache`` (``edgerun llm export`` with ``--embedding``).

Run:  python benchmarks/bench_llm_memory.py --out benchmarks/results/xeon/llm_memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = (("fp32", "fp32"), ("fp32", "int8"), ("int8", "fp32"), ("int8", "int8"))  # (front, embedding)
PROMPTS = ("What is the capital of France?", "Write a Python function that reverses a string.",
           "Explain what a robot's control loop is in two sentences.")


def _bundle(cache: Path, cut: int, front: str, embedding: str) -> Path:
    from edgerun import llm
    from edgerun.exporters.llm_export import export_llm

    out = cache / f"smollm2-cut{cut}-none-{front}-e{embedding}"
    if not llm.is_llm_bundle(out):
        print(f"exporting cut {cut}, front {front}, embedding {embedding} -> {out}", flush=True)
        export_llm(out, cut=cut, max_context=512, front_precision=front, embedding=embedding)
    return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(path: str, tokens: int) -> None:
    """In a fresh process: load the front half, report memory, generate and time the front's steps."""
    import numpy as np

    from edgerun import llm

    b = llm.LlmBundle.load(path)
    tok = llm.Tokenizer(b)
    prompts = [tok.chat(p) for p in PROMPTS]
    before = _status_kib("VmRSS")
    front = llm.Half(b, "front", 1)
    loaded, peak = _status_kib("VmRSS"), _status_kib("VmHWM")
    back = llm.Half(b, "back", 1)
    prefill, decode, out = [], [], []
    for ids in prompts:
        fc, bc, got, x = front.new_cache(), back.new_cache(), [], np.array([ids], np.int64)
        for i in range(tokens):
            t = time.perf_counter()
            h = front.step(x, fc)
            (prefill if i == 0 else decode).append((time.perf_counter() - t) * 1e3)
            got.append(int(back.step(h, bc).argmax()))
            if got[-1] == b.spec.eos:
                break
            x = np.array([[got[-1]]], np.int64)
        out.append(got)
    print(json.dumps({"rss_before_kib": before, "rss_front_kib": loaded - before, "peak_kib": peak,
                      "front_file_bytes": b.file(llm.FRONT).stat().st_size,
                      "front_prefill_ms": statistics.median(prefill), "front_decode_ms": statistics.median(decode),
                      "tokens": out}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cut", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgerun-llm-bench")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.tokens)
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for front, embedding in CONFIGS:
        path = _bundle(args.cache, args.cut, front, embedding)
        res = subprocess.run([sys.executable, __file__, "--child", str(path), "--tokens", str(args.tokens)],
                             check=True, capture_output=True, text=True)
        rows.append({"front": front, "embedding": embedding, **json.loads(res.stdout.strip().splitlines()[-1])})
    base = {r["front"]: r for r in rows if r["embedding"] == "fp32"}
    print("| front | embedding | front file MiB | front session RSS MiB | peak RSS MiB | prefill ms | decode ms/token "
          "| vs embedding fp32 (RSS) | tokens as embedding fp32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = base[r["front"]]
        r["rss_vs_embedding_fp32"] = r["rss_front_kib"] / b["rss_front_kib"]
        r["same_tokens_as_embedding_fp32"] = r["tokens"] == b["tokens"]
        print(f"| {r['front']} | {r['embedding']} | {r['front_file_bytes'] / 2**20:.0f} | {r['rss_front_kib'] / 1024:.0f} | "
              f"{r['peak_kib'] / 1024:.0f} | {r['front_prefill_ms']:.1f} | {r['front_decode_ms']:.2f} | "
              f"{r['rss_vs_embedding_fp32']:.2f}x | {r['same_tokens_as_embedding_fp32']} |")
    if args.out:
        from edgerun.profiles import cpu_name

        meta = {"machine": platform.machine(), "cpu": cpu_name(), "threads": 1, "cut": args.cut, "tokens": args.tokens,
                "prompts": list(PROMPTS), "date": time.strftime("%Y-%m-%d")}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
