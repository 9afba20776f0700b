"""Tool catalogs and labelled tool queries: a user's files, or the BFCL v4 function-calling data.

A **catalog** is a JSON list of tool schemas (``{"name", "description", "parameters"}``, or the
OpenAI form ``{"type": "function", "function": {...}}``), or JSON lines of them. **Labelled
queries** (for calibrating the selection rule) are JSON lines ``{"query": str, "tools": [name, ...]}``;
an empty ``tools`` list marks a query that needs no tool.

``bfcl()`` reads the Berkeley Function Calling Leaderboard v4 data from the PyPI package
``bfcl-eval`` (installed ``--no-deps``; its JSON files are read, the package is never imported):
the pool of every distinct tool of the single-turn categories, each question labelled with the
tools its ground truth calls, and the "irrelevance" questions that need none.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerun.errors import ConfigError, UserError

BFCL_HINT = "pip install --no-deps bfcl-eval==2026.3.23 (or run scripts/setup.sh)"
# Single-turn categories with ground truth: (questions file, answers file).
BFCL_LABELLED = ("simple_python", "multiple", "parallel", "parallel_multiple",
                 "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
BFCL_IRRELEVANT = ("irrelevance", "live_irrelevance")


@dataclass(frozen=True)
class Query:
    """A user query and the names of the tools it needs (empty: it needs none)."""

    text: str
    tools: frozenset[str]
    source: str = ""


def _tool(entry: Any, where: str) -> dict[str, Any]:
    if isinstance(entry, dict) and entry.get("type") == "function" and isinstance(entry.get("function"), dict):
        entry = entry["function"]
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
        raise ConfigError(f"{where}: a tool must be an object with a non-empty 'name' (and a 'description'), "
                          f"got {str(entry)[:120]}")
    if not isinstance(entry.get("description", ""), str):
        raise ConfigError(f"{where}: tool {entry['name']!r} has a 'description' that is not a string")
    params = entry.get("parameters")
    if params is not None and not (isinstance(params, dict) and isinstance(params.get("properties", {}), dict)):
        raise ConfigError(f"{where}: tool {entry['name']!r} has 'parameters' that are not a JSON schema object "
                          "({\"type\": \"object\", \"properties\": {name: {...}}})")
    return entry


def _json_items(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}); give a JSON or JSON-lines file") from exc
    try:
        items = json.loads(text)
        return items if isinstance(items, list) else [items]
    except json.JSONDecodeError:
        pass
    except RecursionError as exc:
        raise ConfigError(f"{path} nests JSON too deeply to read; give a flat list of tools / queries") from exc
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except RecursionError as exc:
                raise ConfigError(f"{path}:{n} nests JSON too deeply to read") from exc
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n} is not JSON ({exc.msg}); give a JSON list or one object per line") from exc
    return out


def load_catalog(path: str | Path) -> list[dict[str, Any]]:
    """A user's tool catalog.

    Raises:
        ConfigError: unreadable, empty, a tool without a name, or two tools with one name.
    """
    p = Path(path)
    tools = [_tool(t, str(p)) for t in _json_items(p)]
    if not tools:
        raise ConfigError(f"{p} holds no tools; give a JSON list of tool schemas")
    seen: set[str] = set()
    for t in tools:
        if t["name"] in seen:
            raise ConfigError(f"{p}: two tools are named {t['name']!r}; tool names must be unique")
        seen.add(t["name"])
    return tools


def load_queries(path: str | Path, names: set[str]) -> list[Query]:
    """Labelled queries for a catalog whose tool names are ``names``.

    Raises:
        ConfigError: a line is not ``{"query": str, "tools": [name, ...]}`` or names an unknown tool.
    """
    p = Path(path)
    out = []
    for i, q in enumerate(_json_items(p)):
        if not (isinstance(q, dict) and isinstance(q.get("query"), str) and q["query"].strip()
                and isinstance(q.get("tools"), list) and all(isinstance(n, str) for n in q["tools"])):
            raise ConfigError(f"{p}: query {i} must be {{\"query\": str, \"tools\": [name, ...]}}, got {str(q)[:120]}")
        unknown = set(q["tools"]) - names
        if unknown:
            raise ConfigError(f"{p}: query {i} names tools not in the catalog: {sorted(unknown)[:5]}")
        out.append(Query(q["query"], frozenset(q["tools"]), str(p)))
    if not out:
        raise ConfigError(f"{p} holds no queries")
    return out


def bfcl_dir() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the BFCL data is not installed; {BFCL_HINT}")
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not (d / "possible_answer").is_dir():
        raise UserError(f"{d} lacks BFCL's possible_answer/ folder: reinstall it ({BFCL_HINT})")
    return d


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line (BFCL's ``.json`` files are JSON lines)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def user_text(question: Any) -> str:
    """The user's words in a BFCL question's first turn (system messages left out)."""
    turn = question[0] if question and isinstance(question[0], list) else question
    return " ".join(m["content"] for m in turn if m.get("role") == "user").strip()


def bfcl() -> tuple[list[dict[str, Any]], list[Query]]:
    """(the pool of distinct BFCL tools, every single-turn question labelled with its tools).

    A tool name that BFCL defines twice with different schemas keeps its first definition; the
    questions of the irrelevance categories carry no tools.
    """
    d = bfcl_dir()
    pool: dict[str, dict[str, Any]] = {}
    queries = []
    for cat in BFCL_LABELLED + BFCL_IRRELEVANT:
        items = read_json_lines(d / f"BFCL_v4_{cat}.json")
        answers = {} if cat in BFCL_IRRELEVANT else {a["id"]: a for a in read_json_lines(d / "possible_answer" / f"BFCL_v4_{cat}.json")}
        for item in items:
            for t in item["function"]:
                pool.setdefault(t["name"], t)
            text = user_text(item["question"])
            if not text:
                continue
            needed = frozenset(name for call in answers[item["id"]]["ground_truth"] for name in call) \
                if answers else frozenset()
            queries.append(Query(text, needed, cat))
    return list(pool.values()), queries
