"""Dynamic tool selection on the device: send the server's LLM only the tools a query needs.

An LLM agent on a device holds a catalog of tools (function schemas). Sending every schema with
every request costs bytes on the link and prompt tokens on the server. A **tool index** (built at
export by ``exporters/tools.py``, ``edgerun tools build``) holds the catalog, a sentence encoder
(all-MiniLM-L6-v2 as ONNX + its tokenizer) and one int8 embedding per tool. The device embeds the
query (onnxruntime), scores every tool in the native core (``_core.tool_select``) and keeps the
best few under the index's calibrated rule: at most ``k_max`` tools, each within ``margin`` of the
best score and at or above ``floor`` (a query no tool fits keeps none).

Example:
    >>> sel = ToolSelector(ToolIndex.load("bundles/tools"))          # doctest: +SKIP
    >>> s = sel.select("What's the weather in Paris tomorrow?")       # doctest: +SKIP
    >>> s.names, s.request_bytes, s.catalog_request_bytes            # doctest: +SKIP
    (['weather.forecast'], 412, 540331)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.bundle import TOOLS_FORMAT_NAME, open_verified
from edgerun.errors import BundleError, ConfigError, UserError, from_core_error

EMBEDDINGS = "tool_emb.npz"
TOOLS = "tools.json"
ENCODER = "encoder.onnx"
TOKENIZER = "tokenizer.json"
REPORT = "report.json"
INDEX_KEYS = ("index_id", "encoder", "rule", "tools", "files", "bundle_hash")
MAX_POSITIONS = 512  # the encoder's position table
TOKENIZERS_HINT = "pip install 'edgerun[agent]' (the tokenizers package) or run scripts/setup.sh"


@dataclass(frozen=True)
class Rule:
    """Which tools a query keeps: the ``k_max`` best with score >= max(floor, best - margin)."""

    floor: float = -1.0
    margin: float = 0.1
    k_max: int = 5

    def __post_init__(self) -> None:
        if not (np.isfinite(self.floor) and np.isfinite(self.margin)) or self.margin < 0:
            raise ConfigError(f"tool rule needs a finite floor and a margin >= 0, got {self}")
        if not isinstance(self.k_max, int) or isinstance(self.k_max, bool) or not 1 <= self.k_max <= 1 << 16:
            raise ConfigError(f"tool rule k_max must be an integer in 1..65536, got {self.k_max!r}")

    def to_json(self) -> dict[str, Any]:
        return {"floor": self.floor, "margin": self.margin, "k_max": self.k_max}

    @staticmethod
    def from_json(d: Any) -> Rule:
        try:
            return Rule(float(d["floor"]), float(d["margin"]), d["k_max"])
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise BundleError(f"the tool index's rule {d!r} is malformed ({exc}); rebuild the tool index "
                              "with `edgerun tools build`") from exc


@dataclass
class Selection:
    """The tools one query keeps, best first, and what the selection cost."""

    query: str
    names: list[str]
    tools: list[dict[str, Any]]
    scores: list[float]
    embed_us: float
    select_us: float
    catalog_size: int
    catalog_bytes: int  # the request with every tool and an empty query (see catalog_request_bytes)
    request: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def request_bytes(self) -> int:
        """Bytes of the request an agent sends (the query and the kept schemas, compact JSON)."""
        return len(compact_json(self.request))

    @property
    def catalog_request_bytes(self) -> int:
        """Bytes of the same request with every tool of the catalog (what a plain agent sends)."""
        return self.catalog_bytes + len(compact_json(self.query)) - 2  # the catalog's request holds ""


def compact_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def agent_request(query: str, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat request with tools that the agent sends to the server's LLM (OpenAI-style)."""
    return {"messages": [{"role": "user", "content": query}],
            "tools": [{"type": "function", "function": t} for t in tools]}


class ToolIndex:
    """A loaded, verified tool index (a directory or archive; see ``docs/BUNDLE.md``)."""

    def __init__(self, path: Path, manifest: dict[str, Any], tmp: Any = None) -> None:
        self.path, self.manifest, self._tmp = path, manifest, tmp
        self.hash: str = manifest["bundle_hash"]
        self.rule = Rule.from_json(manifest["rule"])
        enc = manifest["encoder"]
        try:
            self.max_tokens = int(enc["max_tokens"])
            self.dim = int(enc["dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"tool index {path}: encoder entry {enc!r} is malformed; rebuild it") from exc
        if not 2 <= self.max_tokens <= MAX_POSITIONS or self.dim < 1:
            raise BundleError(f"tool index {path}: encoder max_tokens {self.max_tokens} (2..{MAX_POSITIONS}) or dim "
                              f"{self.dim} is out of range; rebuild it with `edgerun tools build`")
        self.tools = _read_tools(path / TOOLS)
        self.names = [t["name"] for t in self.tools]
        self.emb, self.scale = _read_embeddings(path / EMBEDDINGS, len(self.tools), self.dim)
        self.catalog_bytes = len(compact_json(agent_request("", self.tools)))

    @staticmethod
    def load(path: str | Path, *, verify_hashes: bool = True) -> ToolIndex:
        """Load and verify a tool index.

        Raises:
            BundleError: missing, not a tool index, damaged or edited (the message says what to do).
        """
        p = Path(path)
        if not p.exists():
            raise BundleError(f"tool index {p} does not exist; build one with `edgerun tools build CATALOG --out {p}`")
        p, manifest, tmp = open_verified(p, TOOLS_FORMAT_NAME, INDEX_KEYS, verify_hashes)
        for name in (ENCODER, TOKENIZER, TOOLS, EMBEDDINGS):
            if name not in manifest["files"]:
                raise BundleError(f"tool index {p} lists no {name}; rebuild it with `edgerun tools build`")
        return ToolIndex(p, manifest, tmp)

    def report(self) -> dict[str, Any]:
        f = self.path / REPORT
        return json.loads(f.read_text()) if REPORT in self.manifest["files"] else {}


def _read_tools(f: Path) -> list[dict[str, Any]]:
    try:
        tools = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{f} is not readable JSON ({exc}); rebuild the tool index") from exc
    if not isinstance(tools, list) or not tools or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
        raise BundleError(f"{f} is not a list of tools with names; rebuild the tool index")
    return tools


def _read_embeddings(f: Path, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(f, allow_pickle=False) as z:
            emb, scale = z["emb"], z["scale"]
    except Exception as exc:  # noqa: BLE001 - numpy / zipfile raise many kinds on a damaged file
        raise BundleError(f"{f} is not a tool embedding file ({type(exc).__name__}: {exc}); rebuild the tool "
                          "index with `edgerun tools build`") from exc
    if emb.dtype != np.int8 or emb.shape != (n, dim) or scale.dtype != np.float32 or scale.shape != (n,):
        raise BundleError(f"{f}: embeddings {emb.dtype} {emb.shape} / scales {scale.dtype} {scale.shape} do not fit "
                          f"{n} tools of dimension {dim}; rebuild the tool index")
    # Rows of unit-length embeddings: |value| <= 1, so a scale (max |value| / 127) above 1/127 is not one.
    if not np.isfinite(scale).all() or (scale < 0).any() or (scale > 1.0 / 127 * (1 + 1e-6)).any():
        raise BundleError(f"{f}: a tool's scale is negative, not finite or too large for a unit-length embedding; "
                          "rebuild the tool index with `edgerun tools build`")
    return np.ascontiguousarray(emb), np.ascontiguousarray(scale)


class Encoder:
    """Tokenizer + the ONNX sentence encoder: texts -> unit-length embeddings [N, dim]."""

    def __init__(self, onnx_path: Path, tokenizer_path: Path, max_tokens: int, threads: int = 1) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise UserError(f"the tool selector needs the tokenizers package; {TOKENIZERS_HINT}") from exc
        from edgerun.engine import ort_session

        try:
            self.tok = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # noqa: BLE001 - the Rust tokenizer raises plain Exception
            raise BundleError(f"{tokenizer_path} is not a tokenizer ({exc}); rebuild the tool index") from exc
        self.tok.no_padding()
        self.tok.enable_truncation(max_tokens)
        self.sess = ort_session(onnx_path, threads, "rebuild the tool index with `edgerun tools build`")

    def __call__(self, texts: list[str], batch: int = 32) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch):
            enc = self.tok.encode_batch(texts[i:i + batch])
            width = max(len(e.ids) for e in enc)
            ids = np.zeros((len(enc), width), np.int64)
            mask = np.zeros((len(enc), width), np.int64)
            for r, e in enumerate(enc):
                ids[r, :len(e.ids)] = e.ids
                mask[r, :len(e.ids)] = 1
            try:
                out.append(self.sess.run(None, {"input_ids": ids, "attention_mask": mask})[0])
            except Exception as exc:  # noqa: BLE001 - onnxruntime's Fail / InvalidArgument / ValueError
                raise BundleError(f"the tool index's sentence encoder failed ({type(exc).__name__}: "
                                  f"{str(exc)[:300]}); rebuild the tool index with `edgerun tools build`") from exc
        if not out:
            raise ConfigError("nothing to embed: give at least one text")
        emb = np.concatenate(out)
        if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[0] != len(texts):
            raise BundleError(f"the tool index's sentence encoder gave {emb.dtype} {emb.shape} for {len(texts)} "
                              "texts; rebuild the tool index with `edgerun tools build`")
        return emb


class ToolSelector:
    """Chooses the tools for a query on the device.

    Args:
        index: a loaded tool index.
        threads: onnxruntime threads for the sentence encoder.
        rule: override the index's calibrated rule (e.g. a larger ``k_max`` for a stronger LLM).
    """

    def __init__(self, index: ToolIndex, *, threads: int = 1, rule: Rule | None = None) -> None:
        self.index = index
        self.rule = rule or index.rule
        self.encoder = Encoder(index.path / ENCODER, index.path / TOKENIZER, index.max_tokens, threads)

    def scores(self, query_emb: np.ndarray, rule: Rule | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(kept tool indices best first, every tool's score) for one query embedding [dim]."""
        from edgerun import _core

        r = rule or self.rule
        try:
            kept, scores = _core.tool_select(self.index.emb, self.index.scale, query_emb, r.floor, r.margin, r.k_max)
        except _core.CoreError as exc:
            raise from_core_error(exc) from exc
        return kept.astype(np.int64), scores

    def select(self, query: str) -> Selection:
        """Embed the query, keep its tools, and build the request the agent would send.

        Raises:
            ConfigError: the query is not a non-empty string.
        """
        if not isinstance(query, str) or not query.strip():
            raise ConfigError(f"a tool query must be a non-empty string, got {query!r}")
        try:
            query.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates: bytes from argv that are not UTF-8
            raise ConfigError(f"the tool query is not valid UTF-8 text ({exc.reason} at {exc.start}); "
                              "give the query as UTF-8") from exc
        t0 = time.perf_counter()
        q = self.encoder([query])[0]
        t1 = time.perf_counter()
        kept, scores = self.scores(q)
        t2 = time.perf_counter()
        tools = [self.index.tools[i] for i in kept]
        return Selection(query, [self.index.names[i] for i in kept], tools, [float(scores[i]) for i in kept],
                         (t1 - t0) * 1e6, (t2 - t1) * 1e6, len(self.index.tools), self.index.catalog_bytes,
                         agent_request(query, tools))
