"""The gauntlet's default-cut fp32 fronts written as .erg files (for ab_builds.py).

    python benchmarks/results/xeon/pack/make_gauntlet_fronts.py OUT_DIR resnet18:64 resnet18:224 resnet50:64 vit_tiny:64 timm_vit_s16:224
"""
import shutil, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import torch
import bench_gauntlet as g
from edgerun.exporters.models import SourceModel
from edgerun.exporters.pipeline import ExportConfig, export, trace_model

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for spec in sys.argv[2:]:
    name, side = spec.split(":")
    side = int(side)
    m = g.build(name)
    traced = trace_model(SourceModel(name, m, torch.randn(1, 3, side, side)))
    with tempfile.TemporaryDirectory() as d:
        b = export(traced, ExportConfig(evaluate=False, calib_samples=4), Path(d) / "b")
        print(name, side, b.cut_label, b.native_ok, flush=True)
        if b.native_ok:
            shutil.copy(b.file("front.erg"), out / f"{name}_{side}.erg")
