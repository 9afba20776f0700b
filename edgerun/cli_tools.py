"""``edgerun tools build`` and ``edgerun tools select``: dynamic tool selection for an LLM agent.

``build`` embeds a tool catalog and calibrates the keep rule on labelled queries (host, needs the
``export`` extra and the encoder's package); ``select`` runs on the device and prints the tools a
query keeps and the request the agent would send. Errors are one line on stderr, exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from edgerun.cli_plan import _fail, _log
from edgerun.errors import EdgerunError

tools_app = typer.Typer(help="Dynamic tool selection: send the server's LLM only the tools a query needs.",
                        no_args_is_help=True, add_completion=False)


@tools_app.command("build")
def build_cmd(
    catalog: str = typer.Argument(..., help="a JSON / JSON-lines file of tool schemas, or 'bfcl' (the BFCL v4 pool "
                                             "of 1702 tools with its labelled questions)"),
    out: Path = typer.Option(..., "--out", help="the tool index directory to write"),
    queries: Optional[Path] = typer.Option(None, "--queries", help="labelled queries, JSON lines "
                                           "{\"query\": str, \"tools\": [name, ...]}, to calibrate the keep rule"),
    recall: float = typer.Option(0.9, "--recall", help="share of queries whose every needed tool must be kept"),
    threads: int = typer.Option(2, "--threads", help="encoder threads while embedding"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Embed a tool catalog, calibrate which tools a query keeps, write a sealed tool index."""
    try:
        from edgerun.exporters import tools, tools_data

        if catalog == "bfcl":
            cat, labelled = tools_data.bfcl()
            if queries is not None:
                labelled = tools_data.load_queries(queries, {t["name"] for t in cat})
        else:
            cat = tools_data.load_catalog(catalog)
            labelled = tools_data.load_queries(queries, {t["name"] for t in cat}) if queries else None
        _log(f"embedding {len(cat)} tools" + (f", calibrating on {len(labelled)} labelled queries" if labelled else ""))
        report = tools.build_index(cat, out, queries=labelled, target_recall=recall, index_id=Path(out).name,
                                   threads=threads)
    except EdgerunError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    rule = report["rule"]
    typer.echo(f"tool index {out}: {report['catalog_size']} tools, int8 embeddings "
               f"{report['embedding_bytes_int8'] / 1024:.0f} KiB (fp32 {report['embedding_bytes_fp32'] / 1024:.0f} KiB)")
    typer.echo(f"rule: keep at most {rule['k_max']} tools within {rule['margin']:.2f} of the best, "
               f"score >= {rule['floor']:.3f}")
    if not report["calibrated"]:
        typer.echo("not calibrated (no --queries): a plain top-5; give labelled queries to fit the rule")
        return
    for split in ("calib", "held_out", "held_out_fp32_embeddings"):
        r = report[split]
        line = (f"{split:26} recall {r['recall']:.3f} over {r['queries']} queries, {r['mean_kept']:.1f} tools kept"
                if r["queries"] else f"{split:26} no query that needs a tool")
        typer.echo(line + (f"; no-tool queries keeping none {r['no_tool_kept_none']:.3f}" if "no_tool_kept_none" in r
                           else ""))
    if report.get("held_out_is_calib"):
        typer.echo("note: too few labelled queries to hold half out; the held-out figures are on the calibration "
                   "queries. Label more queries for an honest figure")
    if not report["target_met_on_calib"]:
        typer.echo(f"warning: no rule reaches recall {recall} on the calibration queries; the index keeps the rule "
                   "with the highest recall. Lower --recall, or describe the tools better", err=True)


@tools_app.command("select")
def select_cmd(
    index: Path = typer.Argument(..., help="a tool index (edgerun tools build)"),
    query: str = typer.Argument(..., help="the user's request"),
    k_max: Optional[int] = typer.Option(None, "--k-max", help="override the index's k_max"),
    as_json: bool = typer.Option(False, "--json", help="print the selection and the agent's request as JSON"),
) -> None:
    """Print the tools a query keeps, their scores, and the bytes the agent's request takes."""
    try:
        from dataclasses import replace

        from edgerun.tools import ToolIndex, ToolSelector

        idx = ToolIndex.load(index)
        sel = ToolSelector(idx, rule=replace(idx.rule, k_max=k_max) if k_max is not None else None).select(query)
    except EdgerunError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps({"tools": sel.names, "scores": sel.scores, "embed_us": sel.embed_us,
                               "select_us": sel.select_us, "request_bytes": sel.request_bytes,
                               "catalog_request_bytes": sel.catalog_request_bytes, "request": sel.request}, indent=2))
        return
    for name, score in zip(sel.names, sel.scores):
        typer.echo(f"{score:6.3f}  {name}")
    if not sel.names:
        typer.echo("no tool fits this query: the agent sends it without tools")
    typer.echo(f"request {sel.request_bytes} B instead of {sel.catalog_request_bytes} B with all {sel.catalog_size} "
               f"tools ({sel.catalog_request_bytes / sel.request_bytes:.1f}x fewer); embed {sel.embed_us / 1000:.1f} ms, "
               f"select {sel.select_us:.0f} us")
