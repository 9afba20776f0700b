"""A split LLM: the bundle, its tokenizer, and the KV caches each side keeps.

An LLM bundle (written by ``exporters/llm_export.py``, ``edgerun llm export``) holds the front half
(token embedding + the first ``cut`` layers) and the back half (the other layers, the final norm and
the head) as ONNX graphs that take the cached keys and values of earlier positions and return those
of the new positions. The device runs the front half on onnxruntime and keeps its own cache; the
server keeps the back half's cache per session (``SessionStore``). What crosses the link per token is
one hidden state (576 floats for SmolLM2-135M) up and the top-k of the next-token logits down.

The back half's cache is per-session state pinned to one server worker: the protocol that pins,
detects a lost worker and replays is in ``edgerun/llm_device.py`` and ``edgerun/llm_server.py``
(``docs/TOPICS.md``, "Split LLM sessions").
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.bundle import LLM_FORMAT_NAME, TensorSpec, check_not_left_out, manifest_format, open_verified, read_packed
from edgerun.errors import BundleError, ConfigError, FrameError, UserError

FRONT, BACK, TOKENIZER, REPORT = "front.onnx", "back.onnx", "tokenizer.json", "report.json"
LLM_KEYS = ("model_id", "llm", "files", "bundle_hash")
TOKENIZERS_HINT = "pip install 'edgerun[agent]' (the tokenizers package) or run scripts/setup.sh"
MAX_TOPK = 64


@dataclass(frozen=True)
class LlmSpec:
    """What the two halves agree on, from the manifest's ``llm`` entry."""

    cut: int           # layers on the device
    layers: int        # layers in all
    hidden: int        # floats per position crossing the cut
    kv_heads: int
    head_dim: int
    vocab: int
    eos: int
    max_context: int   # positions a session may hold

    @staticmethod
    def from_json(d: Any) -> LlmSpec:
        try:
            values = {k: d[k] for k in LlmSpec.__dataclass_fields__}
        except (KeyError, TypeError, IndexError) as exc:
            raise BundleError(f"the LLM bundle's 'llm' entry {d!r} is malformed ({exc}); "
                              "re-export it with `edgerun llm export`") from exc
        for k, v in values.items():  # int("15"), int(15.9) and int(True) read a resealed typo as a size
            if isinstance(v, bool) or not isinstance(v, int):
                raise BundleError(f"the LLM bundle's 'llm' entry has {k}={v!r}, not a whole number; re-export it "
                                  "with `edgerun llm export`")
        spec = LlmSpec(**values)
        if not 0 < spec.cut < spec.layers or min(spec.hidden, spec.kv_heads, spec.head_dim, spec.vocab,
                                                 spec.max_context) <= 0 or not 0 <= spec.eos < spec.vocab \
                or spec.max_context > 1 << 16:
            raise BundleError(f"the LLM bundle's 'llm' entry {d!r} is inconsistent; re-export it with "
                              "`edgerun llm export`")
        return spec

    def cache_bytes_per_position(self, side: str) -> int:
        n = self.cut if side == "front" else self.layers - self.cut
        return 2 * n * self.kv_heads * self.head_dim * 4


class LlmBundle:
    """A loaded, verified LLM bundle.

    Example:
        >>> b = LlmBundle.load("bundles/llm")                # doctest: +SKIP
        >>> b.spec.cut, b.spec.hidden                        # doctest: +SKIP
        (15, 576)
    """

    def __init__(self, path: Path, manifest: dict[str, Any], tmp: Any = None, source: Path | None = None) -> None:
        self.path, self.manifest, self._tmp = path, manifest, tmp
        self.hash: str = manifest["bundle_hash"]
        self.hash16: bytes = bytes.fromhex(self.hash)[:16]
        self.topic_id: str = self.hash16.hex()
        self.model_id: str = str(manifest["model_id"])
        self.spec = LlmSpec.from_json(manifest["llm"])
        chat = manifest.get("chat", {"user": "{prompt}"})
        if not isinstance(chat, dict) or not isinstance(chat.get("user"), str) or "{prompt}" not in chat["user"]:
            raise BundleError(f"the LLM bundle's chat template {chat!r} is malformed (a 'user' text with {{prompt}}); "
                              "re-export it with `edgerun llm export`")
        self.chat_template: str = chat["user"]
        # What crosses the cut: hidden states (batch, new positions, hidden); the server checks requests on it.
        self.cut = [TensorSpec("hidden", (None, None, self.spec.hidden))]
        self.codec: dict[str, Any] = _check_codec(manifest.get("codec") or {"id": "none"})
        self.packed: dict[str, Any] | None = read_packed(path)  # a one-side copy (`edgerun pack`), or None
        self.source: Path = source or path  # what the user named: the archive, where ``path`` is its unpacked copy

    @staticmethod
    def load(path: str | Path, *, verify_hashes: bool = True) -> LlmBundle:
        """Load and verify an LLM bundle directory or archive (BundleError when it is not one)."""
        p = Path(path)
        if not p.exists():
            raise BundleError(f"LLM bundle {p} does not exist; create one with `edgerun llm export --out {p}`")
        p_dir, manifest, tmp = open_verified(p, LLM_FORMAT_NAME, LLM_KEYS, verify_hashes)
        return LlmBundle(p_dir, manifest, tmp, source=p)

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"LLM bundle {self.path} has no {name!r}; re-export it with `edgerun llm export`")
        check_not_left_out(self.path, self.packed, (name,), self.source, "LLM bundle")
        return self.path / name

    def __repr__(self) -> str:
        return f"LlmBundle({self.model_id!r}, cut after layer {self.spec.cut} of {self.spec.layers})"


def _check_codec(entry: Any) -> dict[str, Any]:
    """The manifest's codec entry: none, or tsq with valid params for the hidden states."""
    from edgerun import codec

    bad = BundleError(f"the LLM bundle's codec entry {entry!r} is malformed; re-export it with `edgerun llm export`")
    if not isinstance(entry, dict) or entry.get("id") not in ("none", "tsq"):
        raise bad
    if entry["id"] == "tsq":
        try:
            codec.TSQParams.from_bytes(bytes.fromhex(entry["params"]["hidden"]))
        except (KeyError, TypeError, ValueError, AttributeError, FrameError) as exc:
            raise bad from exc
    return dict(entry)


def is_llm_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a directory whose manifest names the LLM format (archives: False)."""
    return manifest_format(Path(path)) == LLM_FORMAT_NAME


class Tokenizer:
    """The bundle's byte-level BPE (``tokenizers``) and its chat template.

    The user's text is text: a control token's spelling in it (``<|im_end|>``, ``<|im_start|>``) is
    encoded as those characters, not as the control token, so a message cannot close its own turn
    or open a system turn. The template's own control tokens stay tokens."""

    def __init__(self, bundle: LlmBundle) -> None:
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError as exc:
            raise UserError(f"the LLM's tokenizer needs the tokenizers package; {TOKENIZERS_HINT}") from exc
        try:
            self._tok = _Tok.from_file(str(bundle.file(TOKENIZER)))
        except Exception as exc:  # tokenizers raises its own untyped errors
            raise BundleError(f"cannot read the LLM bundle's tokenizer ({exc}); re-export it with "
                              "`edgerun llm export`") from exc
        size = self._tok.get_vocab_size(with_added_tokens=True)
        if size > bundle.spec.vocab:  # ids the halves have no row for: "token ids must be in 0..N" for a prompt
            raise BundleError(f"the LLM bundle's tokenizer has {size} tokens, its manifest's vocab is "
                              f"{bundle.spec.vocab}: they come from different models; re-export it with "
                              "`edgerun llm export`")
        self._specials = [t.content for t in self._tok.get_added_tokens_decoder().values() if t.special]
        self._template = bundle.chat_template
        self._literal: Any = None  # a copy that encodes control-token spellings as text (made when first needed)
        self._literal_lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def encode_turn(self, before: str, text: str, after: str) -> list[int]:
        """The ids of ``before + text + after`` with ``text`` taken literally (its control-token
        spellings are characters); the same ids as ``encode`` when it holds none."""
        if not any(sp in text for sp in self._specials):
            return self.encode(before + text + after)
        with self._literal_lock:  # a copy, not a flag flipped on the shared one: encode() may run meanwhile
            if self._literal is None:
                from tokenizers import Tokenizer as _Tok

                self._literal = _Tok.from_str(self._tok.to_str())
                self._literal.encode_special_tokens = True
        mid = list(self._literal.encode(text, add_special_tokens=False).ids)
        return (list(self._tok.encode(before).ids) + mid
                + list(self._tok.encode(after, add_special_tokens=False).ids))

    def chat(self, prompt: str) -> list[int]:
        """The ids of ``prompt`` as one user turn, ready for the assistant's answer."""
        before, after = self._template.split("{prompt}", 1)
        return self.encode_turn(before, prompt, after.replace("{prompt}", prompt))

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


class Cache:
    """The keys and values of one half for the positions seen so far: ``k`` / ``v`` are
    (layers, 1, kv_heads, P, head_dim). They live in buffers with room for more positions, so a step
    appends in place and a cut back only moves the length; a half whose graph takes ``past_len``
    runs on the whole buffer (``buffers``), the rows past the length masked out."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int) -> None:
        self._k = np.zeros((layers, 1, kv_heads, 0, head_dim), np.float32)
        self._v = self._k.copy()
        self._n = 0

    @property
    def length(self) -> int:
        return self._n

    @property
    def k(self) -> np.ndarray:
        return self._k[:, :, :, :self._n]

    @property
    def v(self) -> np.ndarray:
        return self._v[:, :, :, :self._n]

    @property
    def nbytes(self) -> int:
        """Memory held, the room to grow included."""
        return int(self._k.nbytes + self._v.nbytes)

    def buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole (contiguous) buffers: positions ``length`` .. their end hold zeros or stale rows."""
        return self._k, self._v

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        need = self._n + k.shape[3]
        if need > self._k.shape[3]:  # grow by a quarter (at least 64 positions): copies stay amortized
            shape = (*self._k.shape[:3], need + max(64, need // 4), self._k.shape[4])
            nk, nv = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
            nk[:, :, :, :self._n], nv[:, :, :, :self._n] = self.k, self.v
            self._k, self._v = nk, nv
        self._k[:, :, :, self._n:need], self._v[:, :, :, self._n:need] = k, v
        self._n = need

    def truncate(self, n: int) -> None:
        n = max(0, min(n, self._n))
        # the dropped rows are zeroed: a masked row still enters q.k, and Inf there (a refused step's
        # overflow) would give Inf + -inf = NaN through the mask
        self._k[:, :, :, n:self._n], self._v[:, :, :, n:self._n] = 0.0, 0.0
        self._n = n


class Half:
    """One half on onnxruntime: ``step(x)`` runs the new positions and extends the cache."""

    def __init__(self, bundle: LlmBundle, side: str, threads: int = 1) -> None:
        from edgerun.engine import ort_session

        s = bundle.spec
        self.side = side
        n = s.cut if side == "front" else s.layers - s.cut
        self.session = ort_session(bundle.file(FRONT if side == "front" else BACK), threads,
                                   "re-export the LLM bundle with `edgerun llm export`")
        self.x_name = self.session.get_inputs()[0].name
        # bundles from before the server batched sessions have no past_len: they run one session per call
        self.batches = "past_len" in {i.name for i in self.session.get_inputs()}
        self._pad = np.empty(0, np.float32)  # step_batch's padded caches, reused
        self.spec, self.n_layers = s, n
        hidden = self.session.get_outputs()[0] if side == "front" else self.session.get_inputs()[0]
        width = hidden.shape[-1] if hidden.shape else None
        if isinstance(width, int) and width != s.hidden:
            raise BundleError(f"the LLM bundle's {side} half has hidden states of {width}, its manifest says "
                              f"{s.hidden}; re-export it with `edgerun llm export`")
        # A manifest resealed with another cut, kv_heads, head_dim or vocab than the graphs were exported
        # with loaded, then failed in onnxruntime on the first step (a traceback on the device).
        want = {"layers": n, "kv_heads": s.kv_heads, "head_dim": s.head_dim}
        for t in [*self.session.get_inputs(), *self.session.get_outputs()]:
            if t.name in ("past_k", "past_v", "new_k", "new_v") and len(t.shape or ()) == 5:
                for (what, size), got in zip(want.items(), (t.shape[0], t.shape[2], t.shape[4])):
                    if isinstance(got, int) and got != size:
                        raise BundleError(f"the LLM bundle's {side} half has a KV cache of {got} {what}, its manifest "
                                          f"says {size} (cut {s.cut} of {s.layers} layers); re-export it with "
                                          "`edgerun llm export`")
        vocab = self.session.get_outputs()[0].shape[-1] if side == "back" and self.session.get_outputs()[0].shape \
            else None
        if isinstance(vocab, int) and vocab != s.vocab:
            raise BundleError(f"the LLM bundle's back half gives logits over {vocab} tokens, its manifest says "
                              f"{s.vocab}; re-export it with `edgerun llm export`")

    def new_cache(self) -> Cache:
        return Cache(self.n_layers, self.spec.kv_heads, self.spec.head_dim)

    def step(self, x: np.ndarray, cache: Cache) -> np.ndarray:
        if self.side == "front" and x.size and (int(x.min()) < 0 or int(x.max()) >= self.spec.vocab):
            # the int8 embedding's GatherBlockQuantized gives zero rows for them where Gather raised
            raise ConfigError(f"token ids must be in 0..{self.spec.vocab - 1}")
        if self.batches:  # the whole buffers, the rows past the length masked: nothing copied
            k, v = cache.buffers()
            feeds = {self.x_name: x, "past_k": k, "past_v": v, "past_len": np.array([cache.length], np.int64)}
        else:
            feeds = {self.x_name: x, "past_k": np.ascontiguousarray(cache.k), "past_v": np.ascontiguousarray(cache.v)}
        y, k, v = self.session.run(None, feeds)
        cache.append(k, v)
        return y

    def step_batch(self, xs: list[np.ndarray], caches: list[Cache]) -> np.ndarray:
        """One new position for each of several sessions in one call (the back half of a bundle that
        ``batches``): their caches, of different lengths, padded to the longest and masked. Returns
        the logits, one row per session, and extends each cache."""
        if not self.batches:
            raise BundleError("this LLM bundle's back half runs one session per call: re-export it with "
                              "`edgerun llm export` to batch sessions")
        n, longest = len(caches), max(c.length for c in caches)
        shape = (self.n_layers, n, self.spec.kv_heads, longest, self.spec.head_dim)
        size = int(np.prod(shape))
        if self._pad.size < 2 * size:  # kept between calls: fresh pages cost more than the copy
            self._pad = np.empty(2 * size, np.float32)
        pk, pv = self._pad[:size].reshape(shape), self._pad[size:2 * size].reshape(shape)
        for i, c in enumerate(caches):
            pk[:, i, :, :c.length], pv[:, i, :, :c.length] = c.k[:, 0], c.v[:, 0]
            pk[:, i, :, c.length:], pv[:, i, :, c.length:] = 0.0, 0.0  # masked, but 0 * NaN would leak
        lens = np.array([c.length for c in caches], np.int64)
        y, k, v = self.session.run(None, {self.x_name: np.concatenate(xs), "past_k": pk, "past_v": pv,
                                          "past_len": lens})
        for i, c in enumerate(caches):
            c.append(k[:, i:i + 1], v[:, i:i + 1])
        return y


DEFAULT_MAX_SESSIONS = 32  # serve's sessions per worker
DEFAULT_SESSION_TTL_S = 600.0  # and how long an idle one is kept


def check_session_options(max_sessions: Any, ttl_s: Any) -> None:
    """ConfigError unless ``max_sessions`` is a whole number >= 1 and ``ttl_s`` a finite number of seconds > 0."""
    if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
        raise ConfigError(f"max_sessions={max_sessions!r} must be a whole number >= 1")
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not 0 < ttl_s < math.inf:
        raise ConfigError(f"session_ttl_s={ttl_s!r} must be a number of seconds > 0 (how long an idle "
                          "session's cache is kept)")


class SessionStore:
    """The back half's caches by session id, least recently used first out.

    At most ``max_sessions`` sessions are kept; a session idle for ``ttl_s`` is dropped. A device
    whose session was dropped (or that reaches another worker) is told ``session_lost`` and replays.
    """

    def __init__(self, half: Half, max_sessions: int = DEFAULT_MAX_SESSIONS, ttl_s: float = DEFAULT_SESSION_TTL_S) -> None:
        check_session_options(max_sessions, ttl_s)
        self.half, self.max_sessions, self.ttl_s = half, max_sessions, float(ttl_s)
        self._items: OrderedDict[str, tuple[Cache, float]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, sid: str, now: float) -> Cache | None:
        self._expire(now)
        item = self._items.get(sid)
        if item is None:
            return None
        self._items[sid] = (item[0], now)
        self._items.move_to_end(sid)
        return item[0]

    def start(self, sid: str, now: float) -> Cache:
        """A new, empty cache for ``sid`` (replacing any it had)."""
        self._expire(now)
        self._items.pop(sid, None)
        while len(self._items) >= self.max_sessions:
            self._items.popitem(last=False)
            self.evicted += 1
        cache = self.half.new_cache()
        self._items[sid] = (cache, now)
        return cache

    def drop(self, sid: str) -> None:
        self._items.pop(sid, None)

    def expire(self, now: float) -> None:
        """Drop the sessions idle longer than ``ttl_s`` (the server calls it between requests too)."""
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._items:
            sid, (_, seen) = next(iter(self._items.items()))
            if now - seen <= self.ttl_s:
                return
            del self._items[sid]
            self.evicted += 1

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c, _ in self._items.values())


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ids of each row (best first, ties to the lower id) and their logits."""
    k = min(k, logits.shape[-1])
    part = np.argpartition(-logits, k - 1, axis=-1)[:, :k] if k < logits.shape[-1] else \
        np.broadcast_to(np.arange(logits.shape[-1]), logits.shape)
    part = np.sort(part, axis=-1)  # equal logits: the lower id first, as argmax does
    vals = np.take_along_axis(logits, part, axis=-1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    idx = np.take_along_axis(part, order, axis=-1)
    return idx.astype(np.int64), np.take_along_axis(logits, idx, axis=-1).astype(np.float32)
