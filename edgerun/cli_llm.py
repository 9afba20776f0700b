"""``edgerun llm export`` and ``edgerun llm run``: an LLM split between the device and the server.

``export`` cuts SmolLM2-135M-Instruct after ``--cut`` layers and writes a sealed LLM bundle (host,
needs the ``export`` extra, ``gguf`` and the model's package); ``edgerun serve`` serves its back half
(one KV cache per session, pinned to the worker); ``run`` generates on the device against those
workers. Errors are one line on stderr, exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgerun.cli_plan import _fail, _log
from edgerun.errors import ConfigError, EdgerunError

llm_app = typer.Typer(help="A split LLM: the first layers on the device, the rest (with its KV cache) on the server.",
                      no_args_is_help=True, add_completion=False)


@llm_app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", help="the LLM bundle directory to write"),
    cut: int = typer.Option(15, "--cut", help="layers on the device (of SmolLM2-135M's 30)"),
    max_context: int = typer.Option(2048, "--max-context", help="positions a session may hold (64..8192)"),
    codec: str = typer.Option("none", "--codec", help="none | tsq: code the hidden states on the link (calibrated "
                                                      "and measured on text, ~2 min)"),
    front_precision: str = typer.Option("fp32", "--front-precision", help="fp32 | int8: the device half's MatMul "
                                        "weights in 8 bits (onnxruntime's weight-only quantizer), measured on text"),
    back_precision: str = typer.Option("fp32", "--back-precision", help="fp32 | int8: the server half's MatMul weights "
                                       "(its tied head included) in 8 bits, same quantizer, measured on text"),
    embedding: str = typer.Option("int8", "--embedding", help="int8 | fp32: the token embedding table on the device "
                                  "(int8: blocks of 32, an exact re-encoding of SmolLM2's Q8_0 table, 3.5x fewer bytes)"),
    threads: int = typer.Option(2, "--threads", help="onnxruntime threads for the export's check"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Split SmolLM2-135M-Instruct, check greedy decoding of the halves against the whole, seal a bundle."""
    try:
        from edgerun.exporters.llm_export import export_llm

        _log(f"exporting SmolLM2-135M-Instruct split after layer {cut}")
        report = export_llm(out, cut=cut, max_context=max_context, threads=threads, codec=codec,
                            front_precision=front_precision, embedding=embedding,
                            back_precision=back_precision)
    except EdgerunError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"LLM bundle {out}: layers 0..{cut - 1} on the device, {cut}..{report['layers'] - 1} on the server")
    back = report.get("back_precision", {"precision": "fp32"})
    typer.echo(f"front {report['front_weight_bytes'] / 2**20:.0f} MiB ({report['front_precision']['precision']}), back "
               f"{report['back_weight_bytes'] / 2**20:.0f} MiB ({back['precision']}); {report['bytes_per_token_up']} B up per token; KV cache "
               f"{report['front_cache_bytes_per_position'] / 1024:.1f} KiB per position on each side")
    ok = report["check"]["greedy_tokens_equal_whole"]
    typer.echo(f"greedy decoding of the split equals the whole model on {len(report['check']['prompts'])} prompts: "
               f"{'yes' if ok else 'NO'}")
    q = report["front_precision"]
    e = q.get("embedding", {"precision": "fp32"})
    if e["precision"] == "int8":
        typer.echo(f"embedding int8: {e['bytes'] / 2**20:.1f} MiB instead of {e['bytes_fp32'] / 2**20:.1f}, largest "
                   f"change of a value {e['max_abs_change']:.2g}")
    if q["precision"] == "int8":
        typer.echo(f"front int8: on {q['positions']} positions of held-out text, top-1 agreement with the fp32 front "
                   f"{100 * q['agreement']:.2f} %, perplexity {q['ppl_int8']:.3f} vs {q['ppl_fp32']:.3f}")
    if back["precision"] == "int8":
        typer.echo(f"back int8: on {back['positions']} positions of held-out text, top-1 agreement with the fp32 back "
                   f"{100 * back['agreement']:.2f} %, perplexity {back['ppl_int8']:.3f} vs {back['ppl_fp32']:.3f}")
    c = report.get("codec")
    if c is not None and c["chosen"] is None:
        typer.echo("codec: no tsq setting kept the rule on calibration text; the bundle sends raw fp32")
    elif c is not None:
        ref, ev = c["eval"][0], c["chosen"]["eval"]
        typer.echo(f"codec tsq: {ev['bytes_per_position']:.0f} B per position instead of {ref['bytes_per_position']} "
                   f"({ev['ratio']:.2f}x); on {c['positions']['eval']} positions of held-out text: top-1 agreement "
                   f"{100 * ev['agreement']:.2f} %, perplexity {ev['ppl']:.3f} vs {ref['ppl']:.3f} uncoded")


@llm_app.command("run")
def run_cmd(
    bundle: Path = typer.Argument(..., help="LLM bundle directory or archive"),
    prompt: str = typer.Argument(..., help="the user's message"),
    broker: str = typer.Option(..., "--broker", help="broker URL, e.g. mqtt://127.0.0.1:1883"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="stop after this many tokens"),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy; else sample the top-k"),
    seed: int = typer.Option(None, "--seed", help="seed for sampling"),
    topk: int = typer.Option(8, "--topk", help="next-token candidates per reply"),
    step_timeout_s: float = typer.Option(10.0, "--step-timeout-s", help="replay the session after this long "
                                                                        "without a reply"),
    threads: int = typer.Option(1, "--threads", help="onnxruntime threads for the front half"),
    frame_positions: int = typer.Option(1024, "--frame-positions", help="most positions per request (a long prompt "
                                        "or a replay goes in several; halved by itself when a server refuses a "
                                        "frame as too large)"),
    tools: Path = typer.Option(None, "--tools", help="a tool index (edgerun tools build): answer with a tool call, "
                               "offering the LLM only the tools the question keeps"),
    k_max: int = typer.Option(None, "--k-max", help="with --tools: keep at most this many tools (default 3; each "
                              "tool's schema costs the prompt ~100-300 positions)"),
    offer_all: bool = typer.Option(False, "--offer-all", help="with --tools: offer every tool of the index (a plain agent)"),
    max_replays: int = typer.Option(3, "--max-replays", help="replays of one step before giving up (or, with "
                                    "--local-fallback, answering here)"),
    local_fallback: bool = typer.Option(False, "--local-fallback", help="when no server can answer (broker down, "
                                        "no worker online, none answers), run the back half here and finish the "
                                        "answer on this machine (the whole model's memory)"),
    preload_back: bool = typer.Option(False, "--preload-back", help="with --local-fallback: load the back half at "
                                      "the start, so the first step answered here costs only the cache rebuild"),
    device_id: str = typer.Option(None, "--device-id", help="this device's id in topics"),
    as_json: bool = typer.Option(False, "--json", help="print the generation (tokens, steps, bytes) as JSON"),
) -> None:
    """Generate an answer with the front half here and the back half on `edgerun serve` workers."""
    try:
        from edgerun.llm import LlmBundle, Tokenizer
        from edgerun.llm_device import LlmDevice, check_fits, check_generation

        answer = None
        selector = None
        if tools is None and (k_max is not None or offer_all):
            raise ConfigError("--k-max and --offer-all choose the tools of --tools INDEX; give --tools")
        if preload_back and not local_fallback:
            raise ConfigError("--preload-back loads the back half for --local-fallback: give --local-fallback too")
        # the prompt and the generation's options before the bundle and the broker: an empty prompt or
        # --max-new-tokens 0 was reported as a missing bundle or a dead broker
        check_generation(prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        llm_bundle = LlmBundle.load(bundle)
        if tools is None:
            check_fits(len(Tokenizer(llm_bundle).chat(prompt)), max_new_tokens, llm_bundle.spec)
        if tools is not None:
            from dataclasses import replace

            from edgerun.tools import ToolIndex, ToolSelector

            index = ToolIndex.load(tools)
            selector = ToolSelector(index, rule=replace(index.rule, k_max=3 if k_max is None else k_max))
        with LlmDevice(llm_bundle, broker, device_id=device_id, threads=threads, topk=topk,
                       step_timeout_s=step_timeout_s, frame_positions=frame_positions, max_replays=max_replays,
                       local_fallback=local_fallback, preload_back=preload_back) as dev:
            if selector is not None:
                from edgerun.llm_agent import Agent

                answer = Agent(dev, selector).ask(prompt, max_new_tokens=max_new_tokens, offer_all=offer_all,
                                                  temperature=temperature, seed=seed)
                g = answer.generation
            else:
                g = dev.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    except EdgerunError as exc:
        _fail(exc)
    if answer is not None:
        if as_json:
            typer.echo(json.dumps(answer.to_dict(), indent=2))
            return
        typer.echo(answer.call)
        typer.echo(f"[tool {answer.tool or '(none of the offered)'}; offered {len(answer.offered)} of "
                   f"{answer.selection.catalog_size} tools ({', '.join(answer.offered[:5])}"
                   f"{', ...' if len(answer.offered) > 5 else ''}); prompt {answer.prompt_positions} positions, "
                   f"{g.bytes_up} B up; workers {', '.join(g.workers)}; replays {g.replays}]", err=True)
        return
    if as_json:
        typer.echo(json.dumps(g.to_dict(), indent=2))
        return
    typer.echo(g.text)
    decode = [s.rtt_ms + s.front_ms for s in g.steps[1:]]
    per = f", {sum(decode) / len(decode):.1f} ms per token after it" if decode else ""
    typer.echo(f"[{len(g.tokens)} tokens; prompt {g.prompt_tokens} tokens in "
               f"{g.steps[0].front_ms + g.steps[0].rtt_ms:.0f} ms{per}; {g.bytes_up} B up, {g.bytes_down} B down; "
               f"workers {', '.join(g.workers)}; replays {g.replays}"
               f"{f'; {g.local_steps} answered here' if g.local_steps else ''}]", err=True)


@llm_app.command("demo")
def demo_cmd(
    bundle: Path = typer.Option(Path("bundles/llm"), "--bundle", help="the LLM bundle; exported here first if absent"),
    prompt: str = typer.Option("What is the capital of France?", "--prompt", help="the user's message"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens"),
    kill_at: int = typer.Option(6, "--kill-at", help="kill the pinned worker (SIGKILL) before this step, to show the "
                                                     "replay (0 = never)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """End to end on this machine: a Mosquitto, two `edgerun serve` workers, the device generating; one worker
    is killed mid-answer and the session goes on on the other."""
    import signal
    import tempfile

    from edgerun import llm, procs
    from edgerun.broker import Mosquitto
    from edgerun.llm_device import LlmDevice

    procs.sigterm_unwinds()  # SIGTERM cleans up like Ctrl-C: the broker and the workers stop
    try:
        if not (bundle.is_file() or llm.is_llm_bundle(bundle)):  # an archive is loaded, not exported over
            from edgerun.exporters.llm_export import export_llm

            _log(f"exporting SmolLM2-135M-Instruct split after layer 15 to {bundle} (~1 min, 650 MB)")
            export_llm(bundle)
        b = llm.LlmBundle.load(bundle)
        workers = []
        with tempfile.TemporaryDirectory(prefix="edgerun-llm-demo-") as td, Mosquitto() as broker:
            _log(f"broker up at {broker.url}; starting two `edgerun serve` workers")
            try:
                workers = [procs.start_server(b.path, broker.url, Path(td) / f"w{i}.log", "--worker-id", f"demo-w{i}")
                           for i in range(2)]
                with LlmDevice(b, broker.url, step_timeout_s=2) as dev:
                    dev.wait_ready()
                    dev.step_timeout_s = 30.0
                    killed: list[str] = []

                    def kill_pinned(g) -> None:  # the demo's fault: the worker holding the session dies
                        if kill_at and len(g.steps) == kill_at and not killed:
                            killed.append(g.steps[-1].worker)
                            workers[int(killed[0].rsplit("w", 1)[1])].send_signal(signal.SIGKILL)
                            _log(f"killed worker {killed[0]} (SIGKILL) before step {kill_at}")

                    dev.before_step = kill_pinned
                    g = dev.generate(prompt, max_new_tokens=max_new_tokens)
            finally:
                for w in workers:
                    procs.stop(w)
    except EdgerunError as exc:
        _fail(exc)
    decode = [s.front_ms + s.rtt_ms for s in g.steps[1:] if not s.replays]
    summary = {"prompt": prompt, "answer": g.text, "tokens": len(g.tokens), "workers": g.workers,
               "killed": killed[0] if killed else None, "replays": g.replays,
               "prefill_ms": g.steps[0].front_ms + g.steps[0].rtt_ms,
               "decode_ms_per_token": sum(decode) / len(decode) if decode else None,
               "bytes_up": g.bytes_up, "bytes_down": g.bytes_down}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"Q: {prompt}\nA: {g.text}")
    per = f"{summary['decode_ms_per_token']:.1f} ms per token after it" if decode else "no more tokens"
    typer.echo(f"[{len(g.tokens)} tokens; prompt {summary['prefill_ms']:.0f} ms, {per}; workers "
               f"{' -> '.join(g.workers)}; replays {g.replays}; {g.bytes_up} B up, {g.bytes_down} B down]")
