"""A gauntlet of standard torchvision architectures through export -> split -> native engine.

Each model (random weights, ``weights=None``: nothing is downloaded; seed 0) goes through the path a
user's model file takes (``exporters.pipeline.trace_model`` + ``export``, default cut, fp32 front,
``evaluate=False``), each in its own process (a crash is a row, not the end of the run). Per model:
exported or refused (and the message), the front half's engine (native, or onnxruntime and why),
max |split - whole| on real photos (``edgerun.exporters.data``, resized to the model's input and
ImageNet-normalised), the native front against onnxruntime's front, front weight bytes, bytes
crossing, and native vs onnxruntime front time at 1 thread (one interleaved loop, order alternating,
median).

torchvision is not a dependency of edgerun: install the release that matches the pinned torch first:
    .venv/bin/pip install torchvision==0.28.0

Run:  python benchmarks/bench_gauntlet.py --out benchmarks/results/xeon/gauntlet.json
      python benchmarks/bench_gauntlet.py --only resnet18,vit_tiny   # a subset
      python benchmarks/bench_gauntlet.py --only resnet18 --size 224  # every model at 224x224
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
import traceback
from pathlib import Path

import numpy as np

# name -> (input side, what is built: torchvision.models.get_model kwargs; see build())
ARCHS = {
    "resnet18": 64, "resnet50": 64, "mobilenet_v2": 64, "mobilenet_v3_small": 64, "mobilenet_v3_large": 64,
    "shufflenet_v2_x1_0": 64, "squeezenet1_1": 64, "mnasnet1_0": 64, "regnet_y_400mf": 64,
    "efficientnet_b0": 64, "convnext_tiny": 64, "densenet121": 64, "googlenet": 64, "inception_v3": 96,
    "vit_tiny": 64, "swin_t": 64, "maxvit_t": 224, "lraspp_mobilenet_v3_large": 96,
    "deeplabv3_mobilenet_v3_large": 96, "timm_vit_s16": 224,
}
# not torchvision: a timm-style ViT (DeiT / DINOv2 attention: qkv permute(2, 0, 3, 1, 4) + unbind, fused
# scaled_dot_product_attention, LayerScale), ViT-S/16's width at 224x224, 4 blocks; tests/runtime/_models.py
TIMM_VIT_S16 = dict(img=224, patch=16, d=384, depth=4, heads=6, fused=True, classes=1000)
SEGMENTATION = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")
N_PHOTOS = 4
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def import_torchvision():
    """torchvision, importable without its compiled ops.

    The local index holds torchvision 0.28.0 only as its CUDA build, whose ``_C.so`` needs
    ``libc10_cuda.so`` (absent beside torch 2.13.0+cpu): it fails to load, and torchvision's import then
    dies registering a fake kernel for ``torchvision::nms``. These models use none of its compiled ops
    (nms, roi_align: detection heads), so the two op schemas it registers unconditionally are declared
    here when the library did not load.
    """
    import torch

    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        lib = torch.library.Library("torchvision", "DEF")  # kept alive: module attribute below
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        globals()["_TV_LIB"] = lib
        for mod in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[mod]
        import torchvision
    return torchvision


def build(name: str):
    """The model in eval mode, random weights, seed 0."""
    import torch

    torch.manual_seed(0)
    if name == "timm_vit_s16":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "runtime"))
        from _models import TimmViT

        return TimmViT(**TIMM_VIT_S16).eval()
    tvm = import_torchvision().models
    if name == "vit_tiny":  # vit_b_16 (86 M parameters) made small: ViT-Ti/16's width, 4 layers, 64x64
        m = tvm.VisionTransformer(image_size=64, patch_size=16, num_layers=4, num_heads=3, hidden_dim=192,
                                  mlp_dim=768, num_classes=1000)
        torch.nn.init.normal_(m.heads.head.weight, std=0.02)  # torchvision zeroes it: every answer was 0
    elif name in ("googlenet", "inception_v3"):
        m = tvm.get_model(name, weights=None, aux_logits=False, init_weights=True)
    elif name in SEGMENTATION:
        m = _OutOnly(tvm.get_model(name, weights=None, weights_backbone=None, num_classes=21))
    else:
        m = tvm.get_model(name, weights=None)
    return m.eval()


def _out_only_cls():
    import torch

    class OutOnly(torch.nn.Module):
        """torchvision's segmentation models return {"out": logits}: the map, as a user would return it."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)["out"]

    return OutOnly


def _OutOnly(inner):  # noqa: N802 - builds the wrapper class lazily (torch imported in the child only)
    return _out_only_cls()(inner)


def photo_batch(side: int) -> tuple[np.ndarray, str]:
    """N_PHOTOS real photos, resized to side x side and normalised; random inputs when there are none."""
    try:
        from edgerun.exporters.data import photos

        imgs = [img.resize((side, side)) for _, img in photos()[:N_PHOTOS]]
        x = np.stack([(np.asarray(i, np.float32) / 255.0 - MEAN) / STD for i in imgs]).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, np.float32), "opencv-doc photos"
    except Exception as exc:  # noqa: BLE001 - no photos here: random inputs, said in the row
        print(f"no photos ({exc}); random inputs", file=sys.stderr)
        return np.random.default_rng(0).standard_normal((N_PHOTOS, 3, side, side)).astype(np.float32), "random"


def time_fronts(nat, ort, x: np.ndarray, rounds: int) -> tuple[float, float]:
    """Median ms of each engine at batch 1, interleaved (order alternating), after 3 untimed rounds."""
    times: dict[str, list[float]] = {"native": [], "ort": []}
    for r in range(rounds + 3):
        for k, eng in (("native", nat), ("ort", ort)) if r % 2 == 0 else (("ort", ort), ("native", nat)):
            t0 = time.perf_counter()
            eng.run(x)
            if r >= 3:
                times[k].append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times["native"]), statistics.median(times["ort"])


def one(name: str, rounds: int, size: int = 0) -> dict:
    """Export ``name`` and measure it (runs in a child process); ``size``: the input side instead of
    the model's default."""
    import torch

    from edgerun.engine import NativeEngine, OrtEngine
    from edgerun.exporters.models import SourceModel
    from edgerun.exporters.pipeline import ExportConfig, export, trace_model
    from edgerun.verify import max_abs_diff

    side = size or ARCHS[name]
    row: dict = {"model": name, "input": [1, 3, side, side]}
    module = build(name)
    row["params"] = sum(p.numel() for p in module.parameters())
    t0 = time.perf_counter()
    try:
        traced = trace_model(SourceModel(name, module, torch.randn(1, 3, side, side)))
        with tempfile.TemporaryDirectory() as d:
            b = export(traced, ExportConfig(evaluate=False, calib_samples=4), Path(d) / "b")
            row["export_s"] = round(time.perf_counter() - t0, 1)
            row.update(status="exported", cut=b.cut_label, n_cuts=len(traced.cuts),
                       engine="native" if b.native_ok else "ort",
                       native_reason=None if b.native_ok else b.native_reason)
            rep = json.loads((b.path / "report.json").read_text())
            row.update(front_weight_bytes=rep["front_weight_bytes"], bytes_crossing=rep["bytes_per_request"],
                       front_fraction=rep["front_fraction"])
            x, row["inputs"] = photo_batch(side)
            whole = OrtEngine(b.file("whole.onnx"), threads=1)
            back = OrtEngine(b.file("back.onnx"), threads=1)
            ort_front = OrtEngine(b.file("front.onnx"), threads=1)
            ref = whole.run(x)
            with torch.no_grad():  # the traced graph against the model itself (attention is traced batch first)
                want = module(torch.from_numpy(x))
            row["whole_vs_torch"] = max(max_abs_diff(v, w.numpy()) for v, w in zip(ref.values(), _outputs(want)))
            mid_ort = ort_front.run(x)
            row["split_vs_whole_ort_front"] = max(max_abs_diff(v, ref[k]) for k, v in back.run(mid_ort).items())
            row["whole_out_absmax"] = max(float(np.abs(v).max()) for v in ref.values())
            if b.native_ok:
                nat = NativeEngine(b.file("front.erg"), max_batch=N_PHOTOS, threads=1)
                mid_nat = nat.run(x)
                row["native_vs_ort_front"] = max(max_abs_diff(mid_nat[k], mid_ort[k]) for k in mid_ort)
                row["split_vs_whole"] = max(max_abs_diff(v, ref[k]) for k, v in back.run(mid_nat).items())
                nat1 = NativeEngine(b.file("front.erg"), max_batch=1, threads=1)
                row["native_ms"], row["ort_ms"] = time_fronts(nat1, ort_front, x[:1], rounds)
            else:
                row["split_vs_whole"] = row["split_vs_whole_ort_front"]
                row["ort_ms"] = time_fronts(ort_front, ort_front, x[:1], rounds)[1]
    except Exception as exc:  # noqa: BLE001 - a refusal (or a crash) is the row
        row.update(status="refused", error_type=type(exc).__name__, message=" ".join(str(exc).split())[:600],
                   export_s=round(time.perf_counter() - t0, 1))
        if not type(exc).__module__.startswith("edgerun"):
            row["traceback"] = traceback.format_exc()[-1500:]
    return row


def _outputs(out) -> list:
    return list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (tuple, list)) else [out]


def _rel(diff: float, scale: float) -> str:
    return f"{diff / scale:.1e}" if scale > 0 else "-"


def table(rows: list[dict]) -> str:
    head = ("| model | input | params | result | cut | front engine | max abs split - whole (/ max abs whole) | "
            "whole - torch | native - ort front | front weights | bytes crossing | native ms | ort ms | ratio |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        side = f"{r['input'][2]}x{r['input'][3]}"
        if r.get("status") != "exported":
            msg = r.get("message", "").replace("|", "\\|")[:200]
            lines.append(f"| {r['model']} | {side} | {r.get('params', 0) / 1e6:.1f} M | **{r.get('status')}**: "
                         f"{r.get('error_type', '')}: {msg} | | | | | | | | | |")
            continue
        eng = r["engine"] if r["engine"] == "native" else f"ort ({(r['native_reason'] or '').split('; run this')[0]})"
        nat = f"{r['native_ms']:.2f}" if "native_ms" in r else "-"
        ratio = f"{r['native_ms'] / r['ort_ms']:.2f}" if "native_ms" in r else "-"
        dn = f"{r['native_vs_ort_front']:.1e}" if "native_vs_ort_front" in r else "-"
        dt = f"{r['whole_vs_torch']:.1e}" if "whole_vs_torch" in r else "-"
        lines.append(f"| {r['model']} | {side} | {r['params'] / 1e6:.1f} M | exported | {r['cut']} | {eng} | "
                     f"{r['split_vs_whole']:.1e} ({_rel(r['split_vs_whole'], r['whole_out_absmax'])}) | {dt} | {dn} | "
                     f"{r['front_weight_bytes'] or 0:,} | {r['bytes_crossing']:,} | {nat} | {r['ort_ms']:.2f} | "
                     f"{ratio} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gauntlet.json"))
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds per engine")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model")
    ap.add_argument("--size", type=int, default=0, help="input side for every model (default: each model's own)")
    ap.add_argument("--table", type=Path, help="only rewrite the markdown table of this JSON result")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child: one model, its row as JSON on stdout
    args = ap.parse_args()
    if args.table:
        args.table.with_suffix(".md").write_text(table(json.loads(args.table.read_text())["rows"]))
        return
    if args.one:
        print("ROW " + json.dumps(one(args.one, args.rounds, args.size)), flush=True)
        return
    names = [n for n in args.only.split(",") if n] or list(ARCHS)
    rows = []
    for name in names:
        side = args.size or ARCHS[name]
        try:
            p = subprocess.run([sys.executable, __file__, "--one", name, "--rounds", str(args.rounds),
                                "--size", str(args.size)],
                               capture_output=True, text=True, timeout=args.timeout)
            got = [ln[4:] for ln in p.stdout.splitlines() if ln.startswith("ROW ")]
            row = json.loads(got[-1]) if got else {
                "model": name, "input": [1, 3, side, side], "status": "crashed",
                "error_type": f"exit {p.returncode}", "message": " ".join(p.stderr.split()[-60:])}
        except subprocess.TimeoutExpired:
            row = {"model": name, "input": [1, 3, side, side], "status": "timeout",
                   "error_type": "timeout", "message": f"over {args.timeout} s"}
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    from edgerun.profiles import cpu_name

    meta = {"machine": platform.machine(), "cpu": cpu_name(), "threads": 1, "batch_timed": 1,
            "rounds": args.rounds, "size": args.size or "per model", "statistic": "median of an interleaved loop", "weights": "random, seed 0",
            "split_inputs": f"{N_PHOTOS} photos resized", "export": "default cut, fp32 front, evaluate=False"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(rows))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
