"""``edgerun profile``: measure this machine and write a device (and server) profile TOML.

The native engine has no per-node timer, so per-segment times come from timing
prefixes: the front half at every valid cut of each model, plus the whole model, on
the native engine (device side) and the back half at every cut on onnxruntime (server
side). A linear latency model (``overhead + macs / gmacs + nodes * per_node``) is fitted
to those points by non-negative least squares, so the planner can also predict models
that were not measured. Tracing needs torch (``edgerun[export]``).

Example:
    >>> from edgerun.profiler import profile_machine
    >>> prof = profile_machine(["zoo:digits-cnn"], repeats=20)      # doctest: +SKIP
    >>> write_toml(prof["device"], "devices/this-machine.toml")     # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgerun.errors import ConfigError
from edgerun.profiles import WHOLE, cpu_name

PRECISIONS = ("fp32", "int8", "int4")
REQUEST_GAP_MS = 20.0  # idle time before each timed run (see time_ms)
MAX_GAP_MS = 60_000.0  # a minute of idle before each timed run is already far past any cache effect
DEFAULT_MODELS = ("zoo:digits-cnn", "zoo:efficientnet-lite0")


def time_ms(fn: Callable[[], Any], repeats: int, warmup: int = 3, gap_ms: float = 0.0) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls after ``warmup`` calls.

    ``gap_ms`` sleeps that long before each timed call, as requests arrive one at a time in a
    request/response loop: on this machine a front half that takes 3.0 ms back to back took
    4.3-5.4 ms after an idle gap of 10 ms or more (caches refilled from DRAM), so a profile
    timed back to back under-predicts every served request.
    """
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        if gap_ms > 0:
            time.sleep(gap_ms / 1e3)
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def _nodes(model) -> int:
    return sum(1 for n in model.graph.node if n.op_type != "Constant")


def _example(traced) -> np.ndarray | dict[str, np.ndarray]:
    return traced.source.example_inputs()


def profile_model(spec: str, *, repeats: int, threads: int = 1, precisions: tuple[str, ...] = PRECISIONS,
                  passes: int = 3, gap_ms: float = REQUEST_GAP_MS, log: Callable[[str], None] = lambda s: None) -> dict:
    """Time the native front half at every cut (and whole) per precision, and the ORT back half at every cut.

    Every segment is timed in ``passes`` separate sweeps over all cuts and the median over the
    sweeps is kept: a burst of load on the machine then spoils one sweep's number, not the profile
    (single sweeps gave non-monotonic prefix times, a later cut up to 20 % faster than an earlier one).

    Returns:
        ``{"model", "device": {precision: [(cut, ms, macs, nodes)]}, "server": [(cut, ms, macs, nodes)]}``;
        cut ``-1`` is "nothing on the device", ``WHOLE`` the whole model.
    """
    from edgerun.exporters.pipeline import trace_model

    if passes < 1:
        raise ConfigError(f"passes={passes} must be >= 1")
    traced = trace_model(spec)
    sweeps = [_sweep(traced, repeats, threads, precisions, gap_ms) for _ in range(passes)]
    first = sweeps[0]
    dev = {p: [(c, statistics.median(sw["device"][p][i][1] for sw in sweeps), macs, nodes)
               for i, (c, _, macs, nodes) in enumerate(first["device"][p])] for p in precisions}
    srv = [(c, statistics.median(sw["server"][i][1] for sw in sweeps), macs, nodes)
           for i, (c, _, macs, nodes) in enumerate(first["server"])]
    for (c, ms, _, _), (_, sms, _, _) in zip(dev[precisions[0]], srv):
        where = "whole model" if c == WHOLE else "nothing on the device" if c < 0 else f"cut {c}"
        log(f"{traced.source.model_id} {where}: device {precisions[0]} {ms:.3f} ms, server {sms:.3f} ms")
    return {"model": traced.source.model_id, "device": dev, "server": srv}


def _sweep(traced, repeats: int, threads: int, precisions: tuple[str, ...], gap_ms: float) -> dict:
    """One timing sweep over every cut: ``{"device": {precision: [...]}, "server": [...]}``."""
    import onnx

    from edgerun.engine import NativeEngine, OrtEngine
    from edgerun.exporters.erg import write_erg
    from edgerun.exporters.planner_loss import front_precisions
    from edgerun.exporters.split import split

    x = _example(traced)
    total_macs = traced.cuts[0].front_macs + traced.cuts[0].back_macs if traced.cuts else 0
    dev: dict[str, list] = {p: [] for p in precisions}
    srv: list = []
    with tempfile.TemporaryDirectory(prefix="edgerun-profile-") as tmp:
        t = Path(tmp)
        for prec in precisions:
            write_erg(traced.model, t / "whole.erg", precisions=front_precisions(traced.model, prec))
            eng = NativeEngine(t / "whole.erg", max_batch=1, threads=threads)
            dev[prec].append((WHOLE, time_ms(lambda: eng.run(x), repeats, gap_ms=gap_ms), total_macs, _nodes(traced.model)))
        onnx.save(traced.model, t / "whole.onnx")
        ort_whole = OrtEngine(t / "whole.onnx", threads=threads)
        srv.append((-1, time_ms(lambda: ort_whole.run(x), repeats, gap_ms=gap_ms), total_macs, _nodes(traced.model)))
        for cut in traced.cuts:
            front, back = split(traced.model, cut)
            for prec in precisions:
                write_erg(front, t / "f.erg", precisions=front_precisions(front, prec))
                fe = NativeEngine(t / "f.erg", max_batch=1, threads=threads)
                dev[prec].append((cut.index, time_ms(lambda: fe.run(x), repeats, gap_ms=gap_ms), cut.front_macs, _nodes(front)))
            mid = fe.run(x)
            onnx.save(back, t / "b.onnx")
            be = OrtEngine(t / "b.onnx", threads=threads)
            feeds = {n: mid[n] if n in mid else x[n] for n in be.input_names}  # x[n]: an input passing through
            srv.append((cut.index, time_ms(lambda: be.run(feeds), repeats, gap_ms=gap_ms), cut.back_macs, _nodes(back)))
    return {"device": dev, "server": srv}


def fit_compute(points: list[tuple[int, float, int, int]]) -> dict[str, float]:
    """Fit ``ms = overhead + macs / (gmacs*1e6) + nodes * per_node_us / 1e3`` (all terms >= 0) by NNLS."""
    from scipy.optimize import nnls

    pts = [p for p in points if p[2] > 0]
    if len(pts) < 3:
        raise ConfigError("need at least 3 measured segments to fit a latency model; profile more models")
    a = np.array([[1.0, p[2] / 1e6, p[3]] for p in pts])
    b = np.array([p[1] for p in pts])
    # Relative error matters (tiny segments must not be swamped by big ones): weight rows by 1/ms.
    w = 1.0 / np.maximum(b, 1e-3)
    coef, _ = nnls(a * w[:, None], b * w)
    overhead, ms_per_mmac, ms_per_node = coef
    gmacs = 1.0 / ms_per_mmac if ms_per_mmac > 0 else 1e6  # 1 MMAC per ms = 1 GMAC/s
    return {"gmacs": round(float(gmacs), 4), "overhead_ms": round(float(overhead), 5),
            "per_node_us": round(float(ms_per_node * 1e3), 4)}


def _check_model_spec(spec: str) -> None:
    """A zoo name that exists or a model file that exists (what can be told without loading it)."""
    from edgerun.exporters import zoo

    if spec.startswith("zoo:"):
        zoo.check_name(spec)
    elif ":" not in spec or not Path(spec.rsplit(":", 1)[0]).is_file():
        raise ConfigError(f"--model {spec!r}: use zoo:NAME or path/to/file.py:fn (an existing file)")


def profile_machine(models: list[str] | tuple[str, ...] = DEFAULT_MODELS, *, repeats: int = 20, threads: int = 1,
                    name: str = "this-machine", precisions: tuple[str, ...] = PRECISIONS, passes: int = 3,
                    gap_ms: float = REQUEST_GAP_MS, log: Callable[[str], None] = lambda s: None) -> dict[str, dict]:
    """Measure ``models`` and build ``{"device": {...}, "server": {...}}`` profile dicts (TOML-ready).

    Raises:
        ConfigError: ``repeats`` < 1 or too few segments to fit.
    """
    # Everything checked before the first model is timed (minutes): a bad --model or --threads
    # used to fail after the models before it had been profiled.
    if repeats < 1:
        raise ConfigError(f"repeats={repeats} must be >= 1")
    if passes < 1:
        raise ConfigError(f"passes={passes} must be >= 1")
    if not 1 <= threads <= 256:
        raise ConfigError(f"threads={threads} must be in 1..256")
    if not 0 <= gap_ms <= MAX_GAP_MS:  # NaN fails too; inf crashed time.sleep after the models were traced
        raise ConfigError(f"gap_ms={gap_ms} must be in 0..{MAX_GAP_MS:g} (the idle ms before each timed run)")
    if not models:
        raise ConfigError("no model to profile: pass --model zoo:NAME or path/to/file.py:fn")
    for m in models:
        _check_model_spec(m)
    results = [profile_model(m, repeats=repeats, threads=threads, precisions=precisions, passes=passes,
                             gap_ms=gap_ms, log=log) for m in models]
    cmd = (f"edgerun profile --repeats {repeats} --passes {passes} --gap-ms {gap_ms:g} --threads {threads} "
           + " ".join(f"--model {m}" for m in models))
    meta = {"cpu": cpu_name(), "threads": threads, "repeats": repeats,
            "passes": passes, "gap_ms": gap_ms,
            "measured_by": cmd, "date": time.strftime("%Y-%m-%d")}
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    device = {"kind": "device", "name": name, "isa": platform.machine(), "cores": os.cpu_count() or 1,
              "memory_mb": round(mem_mb), "description": f"measured on this machine, native engine, {threads} thread(s)",
              "meta": meta,
              "compute": {p: fit_compute([pt for r in results for pt in r["device"][p]]) for p in precisions},
              "measured": [{"model": r["model"], "cut": c, "precision": p, "ms": round(ms, 4)}
                           for r in results for p in precisions for (c, ms, _, _) in r["device"][p]]}
    server = {"kind": "server", "name": f"{name}-server", "memory_mb": round(mem_mb),
              "description": f"measured on this machine, onnxruntime CPU back halves, {threads} thread(s)",
              "meta": meta, "compute": {"fp32": fit_compute([p for r in results for p in r["server"]])},
              "measured": [{"model": r["model"], "cut": c, "precision": "fp32", "ms": round(ms, 4)}
                           for r in results for (c, ms, _, _) in r["server"]]}
    return {"device": device, "server": server}


def _val(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    raise ConfigError(f"cannot write {type(v).__name__} to TOML")


def to_toml(d: dict) -> str:
    """A small TOML writer for profile dicts: scalars, one level of tables, nested tables, arrays of tables."""
    lines, tables, arrays = [], [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            arrays.append((k, v))
        else:
            lines.append(f"{k} = {_val(v)}")
    for k, v in tables:
        scalars = {a: b for a, b in v.items() if not isinstance(b, dict)}
        if scalars or not v:
            lines += ["", f"[{k}]"] + [f"{a} = {_val(b)}" for a, b in scalars.items()]
        for a, b in v.items():
            if isinstance(b, dict):
                lines += ["", f"[{k}.{a}]"] + [f"{x} = {_val(y)}" for x, y in b.items()]
    for k, rows in arrays:
        for r in rows:
            lines += ["", f"[[{k}]]"] + [f"{a} = {_val(b)}" for a, b in r.items()]
    return "\n".join(lines) + "\n"


def write_toml(profile: dict, path: str | os.PathLike) -> Path:
    """Write a profile dict as TOML (parent folders created); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"# written by `{profile.get('meta', {}).get('measured_by', 'edgerun profile')}`\n" + to_toml(profile))
    return p


__all__ = ["DEFAULT_MODELS", "fit_compute", "profile_machine", "profile_model", "time_ms", "to_toml", "write_toml"]
