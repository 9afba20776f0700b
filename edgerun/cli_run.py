"""`edgerun run`: the device side from the shell (front half here, back half on a server), one line per
input, or a paced control loop with a summary (``--rate``); the ``--input`` file checks."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import typer

from edgerun.cli_plan import _fail
from edgerun.errors import ConfigError, EdgerunError, TransportError


def _load_inputs(path: Path, limit: int | None, specs: list):
    """The first ``limit`` samples of the ``--input`` file as float32, checked before anything is sent.

    ``specs``: the bundle's inputs (TensorSpecs). One input: a .npy array (or an .npz holding an array of
    that input's name); several: an .npz with one array per input name (``np.savez(path, image=...,
    joints=...)``), as many samples in each. One sample saved without the batch axis is refused.

    A .npy file is memory-mapped, so ``--limit`` reads only what it runs. Raises ConfigError, saying what
    to pass, for a missing, empty or unreadable file, a non-numeric or 0-d array, no samples, and
    samples with NaN / Inf or beyond float32's range (named by their index in the file).
    """
    import numpy as np

    names = [s.name for s in specs]
    if len(specs) == 1:
        hint = "pass a .npy file written by np.save(path, array) with the inputs stacked on axis 0"
    else:
        hint = f"pass an .npz file written by np.savez(path, {', '.join(f'{n}=...' for n in names)}), each input's " \
               "samples stacked on axis 0"
    try:
        got = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError, MemoryError) as exc:  # EOFError: an empty file
        raise ConfigError(f"cannot read --input {path}: {exc or type(exc).__name__}; {hint}") from None
    if isinstance(got, np.lib.npyio.NpzFile):
        with got:
            missing = [n for n in names if n not in got.files]
            if missing:
                raise ConfigError(f"--input {path} has arrays {got.files}, not the bundle's inputs {missing}; {hint}")
            raw = {n: got[n] for n in names}  # an NpzFile reads (and decompresses) a member on every access
            arrays = {n: _checked_input(raw[n], f"{path}[{n!r}]", spec, limit, hint, f"np.savez(path, {n}=x[None])")
                      for n, spec in zip(names, specs)}
            counts = {n: len(a) for n, a in raw.items()}  # the file's, not after --limit: its rows must pair up
        if len(set(counts.values())) != 1:
            raise ConfigError(f"--input {path}: its inputs hold different numbers of samples ({counts}); {hint}")
        return arrays if len(specs) > 1 else arrays[names[0]]
    if len(specs) > 1:
        raise ConfigError(f"--input {path} holds one array, and this bundle takes {len(specs)} inputs {names}; {hint}")
    return _checked_input(got, str(path), specs[0], limit, hint, "np.save(path, x[None])")


def _checked_input(x, label: str, spec, limit: int | None, hint: str, batched: str):
    import numpy as np

    if not isinstance(x, np.ndarray) or x.dtype.kind not in "fiub":
        raise ConfigError(f"--input {label} is not a numeric array; save the inputs with np.save(path, array)")
    one_unbatched = spec is not None and x.ndim == len(spec.shape) - 1 and spec.matches((1, *x.shape))
    if not one_unbatched and (x.ndim == 0 or len(x) == 0):
        raise ConfigError(f"--input {label} holds no samples (shape {x.shape}); {hint}")
    if one_unbatched:  # a 0-d value for a [batch] input (a speed) is one sample too
        # each of its values went out as a sample: "input has shape (1,), the bundle expects (None, 20)"
        raise ConfigError(f"--input {label} holds one sample of shape {list(x.shape)} without the batch axis; save it "
                          f"with {batched} (shape {[1, *x.shape]}), samples stacked on axis 0")
    x = np.array(x[:limit])
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x) | (np.abs(x) > np.finfo(np.float32).max)
        if bad.any():
            first = np.argwhere(bad)[0].tolist()
            raise ConfigError(f"--input {label}: sample {first[0]} holds NaN, Inf or a value beyond float32's range "
                              f"(first at index {first}); clean or drop it (nothing was sent)")
    return x.astype(np.float32)


def answer_fields(out, scores: bool = True) -> dict:
    """``top1`` and ``output`` of one answer (batch 1) for `edgerun run`.

    ``top1`` is the argmax of a vector of scores, None for any other shape (a regression value, a
    per-step tagging), for an answer holding NaN / Inf, and when not ``scores`` (the bundle's first output
    is a regression's: its report's ``task``); ``output`` is the answer itself, NaN / Inf
    as null (strict JSON). `run` printed only ``int(out.argmax(-1)[0])``: a traceback for a [batch]
    or [batch, T, classes] output, and ``top1`` 0 for a single regression value or a NaN answer.
    """
    import numpy as np

    row = np.asarray(out)[0]
    finite = bool(np.isfinite(row).all())
    top1 = int(row.argmax()) if scores and finite and row.ndim == 1 and row.size > 1 else None
    # each value as the shortest decimal that reads back as the same float32 (0.1, not 0.10000000149011612)
    flat = [float(str(v)) if np.isfinite(v) else None for v in row.astype(np.float32).reshape(-1)]
    return {"top1": top1, "output": np.array(flat, dtype=object).reshape(row.shape).tolist()}


def _task(b) -> str | None:
    """How the export scored the first output: its metric where it has one, else the report's ``task``. Bundles
    exported on 2026-12-07 wrote ``task`` "regress" for every classifier (fixed in e8ae099); their metric is
    right, and bundles before that have no ``task``."""
    try:
        rep = json.loads(b.file("report.json").read_text()) if b.has("report.json") else {}
    except (OSError, ValueError):
        return None
    by_metric = {"mae": "regress", "action_mae": "regress", "top1": "classify", "top1_agreement": "classify"}
    return by_metric.get(rep.get("metric")) or rep.get("task")


def _brief(values, n: int = 8) -> str:
    import numpy as np

    flat = np.asarray(values, dtype=object).reshape(-1).tolist()
    text = ", ".join("nan" if v is None else f"{v:.4g}" for v in flat[:n])
    return f"[{text}{', ...' if len(flat) > n else ''}]"


def run_cmd(
    bundle: Path = typer.Argument(..., help="bundle directory or archive"),
    broker: str = typer.Option(..., help="broker URL, e.g. mqtt://127.0.0.1:1883"),
    engine: str = typer.Option("native", help="front-half engine: native | ort"),
    input: Optional[Path] = typer.Option(None, help=".npy file of inputs (N, ...), or .npz with one array per input "
                                                    "name for a model with several; default: the bundle's samples"),
    limit: Optional[int] = typer.Option(None, help="run at most this many inputs"),
    deadline_ms: Optional[float] = typer.Option(None, help="per-request deadline"),
    threads: int = typer.Option(1, help="front-half engine threads (at most the cores the rest of the device leaves free)"),
    budget: Optional[str] = typer.Option(None, help="early-exit budget of a bundle with exits: fast | balanced | accurate | off"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per result"),
    hedge_ms: Optional[float] = typer.Option(None, help="send a request again when no reply came after this many ms "
                                                        "(the next server worker gets it; the first reply wins)"),
    rate: Optional[float] = typer.Option(None, help="a control loop: one request per tick at this many per second; a "
                                                    "missed deadline or an error reply is counted and the loop goes on; a summary ends it "
                                                    "(exit status 1 when a request got an error)"),
    summary: bool = typer.Option(False, "--summary", help="end with a summary: answered by the server / on the device, "
                                                          "missed, overruns, latency percentiles, bytes (on with --rate)"),
) -> None:
    """Run the device side: front half here, back half on a server."""
    from edgerun import feeds
    from edgerun.bundle import Bundle
    from edgerun.run_loop import LoopSummary, check_rate, ticks
    from edgerun.device import Device
    from edgerun.device_checks import check_deadline_ms

    import signal as signals

    loop = None
    # SIGTERM ends `run` as an exception, not at once: a bundle archive's unpacked copy (a temp directory) is
    # removed and the device's presence cleared on the way out (each stop of a robot's process left a bundle in
    # /tmp for good). A paced loop catches it itself, to print its summary first.
    old_term = signals.signal(signals.SIGTERM, _exit_on_signal)
    try:
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit {limit}: give the number of inputs to run (>= 1), or leave it out for all")
        check_deadline_ms(deadline_ms, "--deadline-ms")  # before the broker: nan was reported as a dead broker
        b = Bundle.load(bundle)
        scores = _task(b) != "regress"  # two regression targets printed "top1": 0 (the larger target)
        x = _load_inputs(input, limit, b.inputs) if input else b.samples()
        x = feeds.rows(feeds.float32(x), 0, limit if limit is not None else feeds.n_samples(x))
        loop = LoopSummary(rate_hz=check_rate(rate), deadline_ms=deadline_ms)  # a bad --rate fails before the broker
        schedule = ticks(feeds.n_samples(x), rate, loop)
        with Device(b, broker=broker, engine=engine, threads=threads, budget=budget, hedge_ms=hedge_ms) as dev, \
                _stopped_by_signal(loop, summary or rate is not None):
            for i in schedule:
                try:
                    r = dev.infer(feeds.rows(x, i, i + 1), deadline_ms=deadline_ms)
                except TransportError as exc:
                    if rate is None:
                        raise
                    loop.miss(exc)
                    typer.echo(json.dumps({"i": i, "missed": str(exc)}) if as_json else f"{i}: missed: {exc}")
                    continue
                except EdgerunError as exc:  # an error reply, a refused input (a NaN reading): this tick only
                    if rate is None:
                        raise
                    loop.fail(exc)
                    typer.echo(json.dumps({"i": i, "error": str(exc)}) if as_json else f"{i}: error: {exc}")
                    continue
                loop.add(r)
                rec = {"i": i, **answer_fields(r.output[b.outputs[0].name], scores), "answered_by": r.answered_by,
                       "reason": r.reason, "timings_ms": {k: round(v, 3) for k, v in r.timings_ms.items()}}
                if len(b.outputs) > 1:  # "top1" / "output" are the first output's; every one by name here
                    # the first output scored as the report says (a regression's "top1" was null above, 2 here)
                    rec["outputs"] = {s.name: answer_fields(r.output[s.name], scores or j > 0)
                                      for j, s in enumerate(b.outputs)}
                if r.hedged:
                    rec["hedged"] = True
                if r.resent:  # a worker answered "stopping": sent again (the reason says it too)
                    rec["resent"] = r.resent
                shown = f"top1={rec['top1']}" if rec["top1"] is not None else f"output={_brief(rec['output'])}"
                typer.echo(json.dumps(rec) if as_json else f"{i}: {shown} by {r.answered_by} "
                           f"total={r.timings_ms.get('total', float('nan')):.2f} ms")
        if summary or rate is not None:
            typer.echo(json.dumps({"summary": loop.to_json()}) if as_json else loop.text())
    except EdgerunError as exc:
        _fail(exc)
    finally:
        signals.signal(signals.SIGTERM, old_term)
    if loop is not None and loop.stopped_by:  # the summary is out; the exit status says how the loop ended
        raise typer.Exit(128 + loop.stopped_by)
    if loop is not None and loop.errors:  # requests that got no answer but by time: the loop went on, a script sees it
        raise typer.Exit(1)


def _exit_on_signal(sig: int, _frame: object) -> None:
    raise SystemExit(128 + sig)


@contextlib.contextmanager
def _stopped_by_signal(loop, catch: bool):
    """Ctrl-C / SIGTERM in a loop with a summary: stop the loop there (``loop.stopped_by`` = the signal) so its
    summary is printed; without one, the interrupt goes on as before."""
    import signal as signals

    old = {sig: signals.getsignal(sig) for sig in (signals.SIGINT, signals.SIGTERM)}
    got = {"sig": signals.SIGINT}

    def on_signal(sig: int, _frame: object) -> None:
        got["sig"] = sig
        raise KeyboardInterrupt

    if catch:
        # SIGINT too: a loop started in the background of a script inherits it ignored, and `kill -INT` was
        # then lost (the loop ran on to its last input)
        for sig in old:
            signals.signal(sig, on_signal)
    try:
        yield
    except KeyboardInterrupt:
        if not catch:
            raise
        loop.stopped_by = int(got["sig"])
    finally:
        if catch:
            for sig, handler in old.items():
                signals.signal(sig, handler)


__all__ = ["answer_fields", "run_cmd"]
