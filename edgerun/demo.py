"""``edgerun demo``: the whole path on the digits model, with nothing to set up.

Prepares the digits CNN (trains it on first use), exports it at the default cut,
starts its own Mosquitto on a free loopback port and an ``edgerun serve``
process, runs the device side on the held-out test set, and prints accuracy
(split vs whole) and a per-stage latency table. Everything it started is
stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgerun import procs
from edgerun.errors import ConfigError
from edgerun.report import percentiles, stage_table, table

STAGES = ("device", "encode", "network", "server", "decode", "total")


def _log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def run_demo(**kwargs) -> dict:
    """Run the demo (see ``_run_demo`` for the options); its temporary files go with it."""
    work = Path(tempfile.mkdtemp(prefix="edgerun-demo-"))
    try:
        return _run_demo(work, **kwargs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_demo(
    work: Path,
    *, limit: int | None = None, engine: str = "native", cut: str | None = None, as_json: bool = False,
    codec: str = "none", front_precision: str = "fp32", back_precision: str = "fp32", budget: str | None = None,
) -> dict:
    """Run the demo; returns (and prints) the summary dict. ``budget``: export with early exits
    (``--exits auto``) and let the device answer by itself under that budget."""
    from edgerun.broker import Mosquitto
    from edgerun.device import Device
    from edgerun.engine import make_engine
    from edgerun.exporters import zoo
    from edgerun.exporters.models import SourceModel
    from edgerun.exporters.pipeline import ExportConfig, export

    from edgerun.engine import ENGINE_KINDS
    from edgerun.exits import OFF
    from edgerun.exporters.exits import DEFAULT_BUDGETS

    if front_precision == "auto":  # needs a memory budget the demo does not take
        raise ConfigError("the demo exports fp32, int8 or int4 fronts; for 'auto' run `edgerun export "
                          "zoo:digits-cnn --front-precision auto --max-device-mem-mb N`")
    # Every option checked before the model is trained and exported and the broker started: --limit 0
    # failed after all that as "batch 0 is outside 1..max_batch", a bad --engine or --budget likewise.
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: give the number of test samples to run (>= 1), or leave it out for all")
    if engine not in ENGINE_KINDS:
        raise ConfigError(f"--engine {engine!r}: use one of {', '.join(ENGINE_KINDS)}")
    budgets = [b.name for b in DEFAULT_BUDGETS] + [OFF]
    if budget is not None and budget not in budgets:
        raise ConfigError(f"--budget {budget!r}: the demo's bundle has the budgets {', '.join(budgets)}")
    cfg = ExportConfig(cut=cut, codec=codec, front_precision=front_precision, back_precision=back_precision,
                       exits="auto" if budget else None)
    _log("preparing the digits CNN (trained here on scikit-learn digits on first use)")
    model = zoo.load("digits-cnn")
    x_test, y_test = model.eval_data(limit=limit)
    _log(f"exporting it to {work / 'bundle'}")
    src = SourceModel(model.name, model.module, model.example, model)
    bundle = export(src, cfg, work / "bundle")
    whole = make_engine("ort", onnx_path=bundle.file("whole.onnx"), threads=1)
    whole_top1 = whole.run({bundle.inputs[0].name: x_test})[bundle.outputs[0].name].argmax(-1)

    server = None
    samples: dict[str, list[float]] = defaultdict(list)
    split_top1, answered, local, compute = [], 0, 0, []
    with Mosquitto() as broker:
        _log(f"broker up at {broker.url}; starting `edgerun serve`")
        log_path = work / "server.log"
        try:
            server = procs.start_server(bundle.path, broker.url, log_path)
            # wait for the server on a device without confident exits (they would answer locally)
            warm_budget = "off" if bundle.manifest.get("exits") else None
            with Device(bundle, broker=broker.url, engine=engine, budget=warm_budget) as warm:
                procs.first_server_answer(warm, x_test[:1], server, log_path)
            with Device(bundle, broker=broker.url, engine=engine, budget=budget) as dev:
                dev.infer(x_test[:1])  # warm-up, not counted
                _log(f"running {len(x_test)} test samples through the split ({engine} front half)")
                for i in range(len(x_test)):
                    r = dev.infer(x_test[i : i + 1])
                    answered += 1
                    local += int(r.local)
                    compute.append(r.front_compute_fraction)
                    split_top1.append(int(r.output[bundle.outputs[0].name].argmax(-1)[0]))
                    for k, v in r.timings_ms.items():
                        samples[k].append(v)
        finally:
            procs.stop(server)
    split_top1 = np.array(split_top1)
    summary = {
        "model": bundle.model_id,
        "cut": bundle.cut_label,
        "engine": engine,
        "codec": codec,
        "front_precision": front_precision,
        "back_precision": back_precision,
        "requests": int(len(x_test)),
        "answered": answered,
        "accuracy_whole": float(np.mean(whole_top1 == y_test)),
        "accuracy_split": float(np.mean(split_top1 == y_test[: len(split_top1)])),
        "split_whole_agreement": float(np.mean(split_top1 == whole_top1[: len(split_top1)])),
        "budget": budget,
        "local_fraction": local / max(answered, 1),
        "avg_front_compute_fraction": float(np.mean(compute)) if compute else 1.0,
        "bytes_per_request": int(json.loads(bundle.file("report.json").read_text())["bytes_per_request"]),
        "stages_ms": percentiles(samples),
    }
    _print(summary, as_json)
    return summary


def _print(s: dict, as_json: bool) -> None:
    print(f"\nedgerun demo: {s['model']} split at {s['cut']} ({s['engine']} front half, {s['front_precision']}; "
          f"back {s['back_precision']}; codec {s['codec']}), "
          f"{s['answered']}/{s['requests']} answered, {s['bytes_per_request']} B crossing per request\n")
    print(table(["", "top-1 accuracy"], [["whole model", s["accuracy_whole"]], ["split (device+server)", s["accuracy_split"]]]))
    print()
    print(stage_table(s["stages_ms"], STAGES))
    if as_json:
        print(json.dumps(s))
