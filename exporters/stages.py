"""The lossy stages of export, each calibrated on real data: front precision and the wire codec.

``pipeline.export`` calls these; each returns what goes in the manifest.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from edgerun.errors import UnsupportedOpError

if TYPE_CHECKING:
    from edgerun.exporters.pipeline import ExportConfig


def write_front(front: onnx.ModelProto, path: Path, calib_x: np.ndarray, cfg: ExportConfig) -> dict:
    """Choose the front half's precision per layer and write it for the native engine.

    Returns:
        ``{"ok", "reason", "precision", "layers", "weight_bytes"}``; ``ok`` is False (with
        the engine's reason) when the native engine cannot run this front half, unless
        ``cfg.require_native``, which raises instead.
    """
    from edgerun.exporters.erg import write_erg

    layers: dict[str, str] = {}
    precision = cfg.front_precision
    try:
        if precision == "fp32":
            info = write_erg(front, path)
        else:
            from edgerun.exporters.quantize_front import FrontPrecisionConfig, plan_front_precision

            plan = plan_front_precision(
                front, calib_x,
                FrontPrecisionConfig(precision, cfg.group_size, cfg.max_device_mem_mb),
            )
            layers = dict(plan.precisions)
            print(plan.table(), file=sys.stderr)  # the exporter prints the per-layer choice
            info = write_erg(front, path, precisions=layers, group_size=cfg.group_size)
            kinds = set(layers.values())
            precision = kinds.pop() if len(kinds) == 1 else "mixed"
    except UnsupportedOpError as exc:
        if cfg.require_native:
            raise
        return {"ok": False, "reason": str(exc), "precision": "fp32", "layers": {}, "weight_bytes": None}
    return {"ok": True, "reason": "", "precision": precision, "layers": layers,
            "weight_bytes": int(info.get("weight_bytes", 0))}


def calibrate_codec(acts: dict[str, np.ndarray], cfg: ExportConfig) -> dict:
    """Calibrate the wire codec on the fp32 cut activations; the manifest's ``codec`` entry."""
    if cfg.codec == "none":
        return {"id": "none"}
    from edgerun import codec as tsq

    params = {name: tsq.calibrate(a, budget=cfg.codec_budget) for name, a in acts.items()}
    return {
        "id": cfg.codec,
        "budget": cfg.codec_budget,
        "params": {name: p.to_bytes().hex() for name, p in params.items()},
    }


def codec_roundtrip(entry: dict):
    """A function crossing -> (crossing after encode+decode, encode µs, decode µs, bytes).

    Encodes with the C++ encoder the device uses and decodes with the server's decoder.
    """
    from edgerun import codec as tsq

    params = {name: tsq.TSQParams.from_bytes(bytes.fromhex(h)) for name, h in entry["params"].items()}

    def roundtrip(mid: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float, int]:
        out, enc, dec, nbytes = {}, 0.0, 0.0, 0
        for name, x in mid.items():
            t0 = time.perf_counter()
            payload = tsq.encode_native(np.ascontiguousarray(x), params[name])
            t1 = time.perf_counter()
            out[name] = tsq.decode(payload, x.shape, params[name])
            t2 = time.perf_counter()
            enc += (t1 - t0) * 1e6
            dec += (t2 - t1) * 1e6
            nbytes += len(payload) + len(params[name].to_bytes())
        return out, enc, dec, nbytes

    return roundtrip
