"""The bundle: what the exporter writes and what a device and a server load.

A bundle is a directory (or a ``.tar`` / ``.tar.gz`` archive of one) holding
``manifest.json`` and the files it names. The manifest records the format
version, the model id, the split, the precisions, and the sha256 of every file;
the bundle hash covers all of it, so a device and a server that load the same
bundle agree on its identity to the bit. See ``docs/BUNDLE.md`` for the contract;
archives are unpacked (size-checked, read to their end) by ``edgerun/bundle_archive.py``.

Loading never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from edgerun.bundle_archive import MANIFEST, extract_archive
from edgerun.errors import BundleError

if TYPE_CHECKING:
    import numpy as np

FORMAT_NAME = "edgerun-bundle"
FORMAT_VERSION = 1
# Readers accept these format versions; a newer writer must bump FORMAT_VERSION
# only for changes an old reader cannot ignore.
ACCEPTED_VERSIONS = (1,)
# A tool index (edgerun/tools.py) is sealed and verified like a bundle, under its own format name.
TOOLS_FORMAT_NAME = "edgerun-tools"
# A split LLM (edgerun/llm.py): its front and back halves with KV caches, its tokenizer.
LLM_FORMAT_NAME = "edgerun-llm"
BUNDLE_KEYS = ("model_id", "split", "inputs", "outputs", "files", "bundle_hash")
SAMPLES = "samples.npz"
PACKED = "packed.json"  # written by `edgerun pack` beside the manifest: which side, which files left out
PACK_FORMAT = "edgerun-pack"
PACK_SIDES = ("device", "server")


@dataclass(frozen=True)
class _Kind:
    """The words the checks use for one kind of sealed directory, and what to do about a bad one."""

    noun: str          # "bundle"
    described: str     # "a model bundle"
    loaded_by: str     # "load it with edgerun run / serve / verify"
    writer: str        # "edgerun export"
    make: str          # "create one with `edgerun export`"
    redo: str          # "re-export it"
    redo_whole: str    # "re-export the bundle"
    redo_version: str  # "re-export the bundle with this version"


_KINDS = {
    FORMAT_NAME: _Kind("bundle", "a model bundle", "load it with edgerun run / serve / verify", "edgerun export",
                       "create one with `edgerun export`", "re-export it", "re-export the bundle",
                       "re-export the bundle with this version"),
    TOOLS_FORMAT_NAME: _Kind("tool index", "a tool index", "load it with edgerun tools select", "edgerun tools build",
                             "build one with `edgerun tools build`", "rebuild it with `edgerun tools build`",
                             "rebuild the tool index with `edgerun tools build`",
                             "rebuild the tool index with this version's `edgerun tools build`"),
    LLM_FORMAT_NAME: _Kind("split-LLM bundle", "a split-LLM bundle", "load it with edgerun llm run / edgerun serve",
                           "edgerun llm export", "create one with `edgerun llm export`",
                           "re-export it with `edgerun llm export`", "re-export the LLM bundle with `edgerun llm export`",
                           "re-export the LLM bundle with this version's `edgerun llm export`"),
}
_BUNDLE = _KINDS[FORMAT_NAME]


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: shape with ``None`` for the dynamic batch dimension."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(d: dict[str, Any]) -> TensorSpec:
        try:
            return TensorSpec(str(d["name"]), tuple(d["shape"]), str(d.get("dtype", "float32")))
        except (KeyError, TypeError) as exc:
            raise BundleError(f"manifest tensor entry {d!r} is malformed ({exc}); re-export the bundle") from exc

    def matches(self, shape: tuple[int, ...]) -> bool:
        """True when ``shape`` equals this spec, any size standing for a ``None`` dim."""
        return len(shape) == len(self.shape) and all(
            want is None or want == got for want, got in zip(self.shape, shape)
        )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_format(directory: Path) -> str | None:
    """The ``format`` a directory's manifest declares; None when there is none or it does not parse."""
    try:
        m = json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return m.get("format") if isinstance(m, dict) and isinstance(m.get("format"), str) else None


def compute_bundle_hash(manifest: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of the manifest without its own hash field."""
    body = {k: v for k, v in manifest.items() if k != "bundle_hash"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canon).hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any], format_name: str = FORMAT_NAME) -> dict[str, Any]:
    """Hash every file named in ``manifest['files']``, seal the manifest, write it.

    Args:
        directory: the bundle directory; the files must already be there.
        manifest: the manifest body; its ``files`` maps file name -> dict (role, ...).
        format_name: the kind of directory (a model bundle, or ``TOOLS_FORMAT_NAME``: a tool index).

    Returns:
        The sealed manifest (with ``sha256``/``bytes`` per file and ``bundle_hash``).
    """
    files = {}
    for name, entry in sorted(manifest.get("files", {}).items()):
        p = directory / name
        files[name] = {**entry, "sha256": sha256_file(p), "bytes": p.stat().st_size}
    sealed = {**manifest, "format": format_name, "format_version": FORMAT_VERSION, "files": files}
    sealed["bundle_hash"] = compute_bundle_hash(sealed)
    (directory / MANIFEST).write_text(json.dumps(sealed, indent=2, sort_keys=True) + "\n")
    return sealed


class Bundle:
    """A loaded, verified bundle.

    Example:
        >>> b = Bundle.load("bundles/digits")          # doctest: +SKIP
        >>> b.model_id, b.cut_label, b.topic_id[:8]    # doctest: +SKIP
        ('digits-cnn', 'block1', '3f2a9c1e')
    """

    def __init__(self, path: Path, manifest: dict[str, Any], _tmp: Any = None, source: Path | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self._tmp = _tmp  # keeps an extracted archive alive
        self.hash: str = manifest["bundle_hash"]
        self.hash16: bytes = bytes.fromhex(self.hash)[:16]
        self.topic_id: str = self.hash16.hex()
        self.model_id: str = manifest["model_id"]
        split = manifest["split"]
        self.cut_label: str = split["label"]
        self.inputs = [TensorSpec.from_json(t) for t in manifest["inputs"]]
        self.cut = [TensorSpec.from_json(t) for t in split["tensors"]]
        self.outputs = [TensorSpec.from_json(t) for t in manifest["outputs"]]
        native = manifest.get("native", {})
        self.native_ok: bool = bool(native.get("ok", False))
        self.native_reason: str = str(native.get("reason", ""))
        self.packed: dict[str, Any] | None = read_packed(path)  # a one-side copy (`edgerun pack`), or None
        self.source: Path = source or path  # what the user named: the archive, where ``path`` is its unpacked copy

    # -- loading ---------------------------------------------------------------
    @staticmethod
    def load(path: str | Path, *, verify_hashes: bool = True) -> Bundle:
        """Load and verify a bundle directory or archive.

        Args:
            path: a bundle directory, or a ``.tar``/``.tar.gz`` of one.
            verify_hashes: check the sha256 of every file (default; leave on).

        Returns:
            The bundle.

        Raises:
            BundleError: missing, not a bundle, unsupported version, or a file
                whose hash does not match (corrupted or edited).
        """
        p = Path(path)
        if not p.exists():
            raise BundleError(f"bundle {p} does not exist; create one with `edgerun export MODEL --out {p}`")
        where = p
        p, manifest, tmp = open_verified(p, FORMAT_NAME, BUNDLE_KEYS, verify_hashes)
        check_model_manifest(where, manifest)
        return Bundle(p, manifest, tmp, source=where)

    def file(self, name: str) -> Path:
        """Path of a file of the bundle; BundleError when the bundle has none by that name, or when
        this is one side's copy (`edgerun pack`) without it."""
        if name not in self.manifest["files"]:
            have = ", ".join(sorted(self.manifest["files"]))
            raise BundleError(f"bundle {self.path} has no {name!r} (it has: {have}); re-export it")
        self.require(name)
        return self.path / name

    def require(self, *names: str, why: str = "this command") -> None:
        """One BundleError naming every file of ``names`` that this one-side copy left out (none: no error)."""
        check_not_left_out(self.path, self.packed, names, self.source, why=why)

    def has(self, name: str) -> bool:
        """True when the bundle has this file here (a one-side copy lacks the other side's files)."""
        return name in self.manifest["files"] and (self.path / name).is_file()

    def samples(self) -> np.ndarray | dict[str, np.ndarray]:
        """The bundle's sample inputs (``samples.npz``), read and checked now: see ``load_samples``.
        One array, or ``{input name: array}`` for a model with several inputs."""
        return load_samples(self.file(SAMPLES))

    @property
    def passthrough(self) -> list[str]:
        """Cut tensors that are model inputs: the device sends them as they came (the front half does
        not read them to the end; a robot's joint state, say)."""
        names = {s.name for s in self.inputs}
        return [t.name for t in self.cut if t.name in names]

    def __repr__(self) -> str:
        return f"Bundle({self.model_id!r}, cut={self.cut_label!r}, hash={self.hash[:12]}, path={str(self.path)!r})"


SAMPLES_KEY = "inputs"  # the array of a single-input model; "inputs.<name>" for each of several inputs


def save_samples(path: str | Path, x: np.ndarray | dict[str, np.ndarray]) -> None:
    """Write a ``samples.npz``: one array, or one per input (``load_samples`` reads both)."""
    import numpy as np

    if isinstance(x, np.ndarray):
        np.savez(path, **{SAMPLES_KEY: x})
    else:
        np.savez(path, **{f"{SAMPLES_KEY}.{k}": v for k, v in x.items()})


def load_samples(path: str | Path) -> np.ndarray | dict[str, np.ndarray]:
    """The ``inputs`` array of a ``samples.npz`` (``{name: array}`` from its ``inputs.<name>`` arrays for
    a model with several inputs), read in full here.

    The manifest's sha256 vouches only for the bytes it was sealed with: a file truncated or
    edited and then resealed (or a bundle written by another tool) passes ``Bundle.load`` and
    would fail deep inside numpy / zipfile (``BadZipFile``, ``EOFError``, a bad CRC-32) with a
    traceback from ``verify``, ``run`` or ``layers``. Read through this, it is one BundleError
    that names the file. Everything that reads a bundle's samples should use it
    (``Bundle.samples()``).
    """
    import numpy as np  # not at import time: a server that never reads samples needs no npz code

    p = Path(path)
    damaged = "it is damaged or not the .npz edgerun export writes: copy the bundle again or re-export it"
    try:
        with open(p, "rb") as f:
            npz = np.load(f, allow_pickle=False)  # pickled arrays would run code: refused (ValueError)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise BundleError(f"{p} holds a single array, not an .npz archive; {damaged}")
            with npz:
                if SAMPLES_KEY in npz.files:
                    return npz[SAMPLES_KEY]  # decompresses and checks the member's CRC-32 now, not later
                per_input = [k for k in npz.files if k.startswith(SAMPLES_KEY + ".")]
                if not per_input:
                    raise BundleError(f"{p} has no 'inputs' array (it has: {npz.files}); re-export the bundle")
                got = {k[len(SAMPLES_KEY) + 1:]: npz[k] for k in per_input}
                if len({len(v) if v.ndim else -1 for v in got.values()}) != 1:
                    raise BundleError(f"{p}: its inputs hold different numbers of samples "
                                      f"({ {k: list(v.shape) for k, v in got.items()} }); {damaged}")
                return got
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, zlib.error) as exc:
        raise BundleError(f"{p} cannot be read ({type(exc).__name__}: {exc}); {damaged}") from exc


def unpack_archive(p: Path) -> tuple[Path, Any]:
    """Unpack a bundle archive of any kind; (its directory, a handle that keeps it alive)."""
    return extract_archive(p, _BUNDLE)


def read_packed(p: Path) -> dict[str, Any] | None:
    """The marker ``edgerun pack`` leaves in a one-side copy of a sealed directory, or None.

    It only lets the files it names be absent (every file present is still checked against the
    manifest's sha256), so an edited marker can make a copy load, never make it load other bytes.
    """
    f = p / PACKED
    if not f.is_file():
        return None
    try:
        d = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{f} is not valid JSON ({exc}); pack the bundle again with `edgerun pack`") from exc
    if (not isinstance(d, dict) or d.get("format") != PACK_FORMAT or d.get("for") not in PACK_SIDES
            or not isinstance(d.get("omitted"), list) or not all(isinstance(n, str) for n in d["omitted"])):
        raise BundleError(f"{f} is not a marker `edgerun pack` writes ({PACK_FORMAT}: 'for' one of {PACK_SIDES}, "
                          "'omitted' a list of file names); pack the bundle again with `edgerun pack`")
    return d


def check_not_left_out(path: Path, packed: dict[str, Any] | None, names: tuple[str, ...], where: Path,
                       noun: str = "bundle", why: str = "this command") -> None:
    """One BundleError naming every file of ``names`` that `edgerun pack` left out of the one-side copy
    at ``path`` (``where``: what the user named); none left out (or a whole bundle): no error."""
    gone = [n for n in names if packed and n in packed["omitted"] and not (path / n).is_file()]
    if gone:
        side = packed["for"]
        raise BundleError(
            f"{noun} {where} is the {side}'s copy (`edgerun pack --for {side}`), which leaves out {', '.join(gone)}; "
            f"{why} needs {'it' if len(gone) == 1 else 'them'}: run it on the whole {noun}, or pack again with "
            + " ".join(f"--keep {n}" for n in gone))


def open_verified(p: Path, format_name: str, required: tuple[str, ...],
                  verify_hashes: bool = True) -> tuple[Path, dict[str, Any], Any]:
    """Open a sealed directory (or an archive of one) of the given format and verify it.

    Returns:
        (the directory, its manifest, a handle that keeps an extracted archive alive).

    Raises:
        BundleError: not that kind of directory, damaged, edited or of an unknown version.
    """
    k = _KINDS[format_name]
    tmp = None
    if p.is_file():
        p, tmp = extract_archive(p, k)
    manifest = _read_manifest(p, k)
    _check_manifest(p, manifest, verify_hashes, required, k)
    return p, manifest, tmp


def open_any_bundle(p: Path) -> tuple[Path, dict[str, Any], Any]:
    """Open a model or a split-LLM bundle (directory or archive, unpacked once), whichever it is, verified.

    Returns:
        (the directory, its manifest, a handle that keeps an extracted archive alive).
    """
    if not p.exists():
        raise BundleError(f"bundle {p} does not exist; create one with `edgerun export` or `edgerun llm export`")
    tmp = None
    if p.is_file():
        p, tmp = extract_archive(p, _BUNDLE)
    try:
        k = _KINDS[LLM_FORMAT_NAME] if manifest_format(p) == LLM_FORMAT_NAME else _BUNDLE
        manifest = _read_manifest(p, k)
        _check_manifest(p, manifest, True, ("files", "bundle_hash"), k)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return p, manifest, tmp


def _read_manifest(p: Path, k: _Kind = _BUNDLE) -> dict[str, Any]:
    mf = p / MANIFEST
    if not mf.is_file():
        raise BundleError(f"{p} is not a {k.noun}: no {MANIFEST}; {k.make}")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mf} is not valid JSON ({exc}); the {k.noun} is corrupted, {k.redo}") from exc
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    found = _KINDS.get(fmt) if isinstance(fmt, str) else None
    if found is not k:
        if found is not None:
            raise BundleError(f"{p} is {found.described} ({found.loaded_by}), not {k.described}")
        raise BundleError(f"{mf} is not an edgerun {k.noun} manifest")
    return manifest


def _check_manifest(p: Path, manifest: dict[str, Any], verify_hashes: bool,
                    required: tuple[str, ...] = BUNDLE_KEYS, k: _Kind = _BUNDLE) -> None:
    if "format_version" not in manifest:
        raise BundleError(f"{k.noun} {p} manifest lacks 'format_version'; {k.redo}")
    version = manifest["format_version"]
    # "1" or 1.0 must not read as "version 1; this edgerun reads [1]" (and True == 1 in Python).
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(
            f"{k.noun} {p}: manifest.json's format_version must be an integer, not {version!r} "
            f"({type(version).__name__}); it was not written by {k.writer}: {k.redo_whole}"
        )
    if version not in ACCEPTED_VERSIONS:
        raise BundleError(
            f"{k.noun} {p} has format version {version}; this edgerun reads {list(ACCEPTED_VERSIONS)}. "
            f"Upgrade edgerun on this machine, or {k.redo_version}."
        )
    for key in required:
        if key not in manifest:
            raise BundleError(f"{k.noun} {p} manifest lacks {key!r}; {k.redo}")
    if compute_bundle_hash(manifest) != manifest["bundle_hash"]:
        raise BundleError(f"{k.noun} {p}: manifest.json was edited or corrupted (hash mismatch); {k.redo}")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
        raise BundleError(f"{k.noun} {p}: manifest.json's 'files' is not a map of file name -> entry; {k.redo}")
    for name in files:
        _check_file_name(p, name, k)
    if not verify_hashes:
        return
    packed = read_packed(p)
    left_out = set(packed["omitted"]) if packed else set()
    for name, entry in files.items():
        f = p / name
        if not f.is_file() and name in left_out:
            continue  # this side's copy: `edgerun pack` left it out on purpose
        if not f.is_file():
            raise BundleError(f"{k.noun} {p} is incomplete: {name} is missing; copy the whole {k.noun} again")
        if f.stat().st_size != entry.get("bytes") or sha256_file(f) != entry.get("sha256"):
            raise BundleError(
                f"{k.noun} {p}: {name} does not match its sha256 in the manifest (corrupted or replaced); "
                f"copy the {k.noun} again or {k.redo}"
            )


MAX_DIM = 2**31 - 1  # a tensor dimension the engines and the wire can hold


def check_model_manifest(p: Path, m: dict[str, Any]) -> None:
    """Refuse a model-bundle manifest whose entries have the wrong shape or type.

    The bundle hash proves only that the manifest was sealed, not that a person or a tool that
    edited and resealed it wrote what the readers expect: a ``split`` that was a string, an
    ``inputs`` that was a number or a ``native`` that was ``"yes"`` each ended in a Python
    traceback, and a negative or absurd tensor dimension was accepted. Checks what the device,
    the server and ``edgerun verify`` read; keys they do not read are left alone.

    Raises:
        BundleError: names the entry and what it should be; the remedy is to re-export.
    """
    def bad(what: str) -> BundleError:
        return BundleError(f"bundle {p}: manifest.json's {what}; the manifest was edited or written by "
                           "something other than `edgerun export`: re-export the bundle")

    def short(v: Any) -> str:
        r = repr(v)
        return r if len(r) <= 60 else r[:57] + "..."

    if not isinstance(m["model_id"], str) or not m["model_id"]:
        raise bad(f"'model_id' must be a non-empty string, not {short(m['model_id'])}")
    split = m["split"]
    if not isinstance(split, dict):
        raise bad(f"'split' must be an object with 'label' and 'tensors', not {short(split)}")
    if not isinstance(split.get("label"), str):
        raise bad(f"'split.label' must be a string (the cut's name), not {short(split.get('label'))}")
    for key, specs in (("inputs", m["inputs"]), ("outputs", m["outputs"]), ("split.tensors", split.get("tensors"))):
        if not isinstance(specs, list) or not specs:
            raise bad(f"{key!r} must be a non-empty list of tensors, not {short(specs)}")
        for t in specs:
            if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
                raise bad(f"{key!r} holds {short(t)}, not a tensor entry with a 'name'")
            shape = t.get("shape")
            if not isinstance(shape, list) or not all(
                    d is None or (isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM) for d in shape):
                raise bad(f"tensor {t['name']!r} in {key!r} has shape {short(shape)}; a shape is a list of sizes "
                          f"in 1..{MAX_DIM} (null for the batch dimension)")
            if t.get("dtype", "float32") != "float32":
                raise bad(f"tensor {t['name']!r} in {key!r} has dtype {short(t.get('dtype'))}; bundles hold float32 "
                          "tensors")
    for key in ("native", "precisions", "codec"):
        if key in m and not isinstance(m[key], dict):
            raise bad(f"{key!r} must be a JSON object, not {short(m[key])}")
    native = m.get("native", {})
    if not isinstance(native.get("ok", False), bool):
        raise bad(f"'native.ok' must be true or false, not {short(native.get('ok'))}")
    prec = m.get("precisions", {})
    for key, known in (("front", ("fp32", "int8", "int4", "mixed")), ("back", ("fp32", "fp16", "int8"))):
        if key in prec and prec[key] not in known:
            raise bad(f"'precisions.{key}' is {short(prec[key])}, not one of {', '.join(known)}")
    for key in ("front_calib_rel_err", "front_samples_rel_err", "back_calib_rel_err", "back_samples_rel_err"):
        v = prec.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf):
            raise bad(f"'precisions.{key}' must be a finite number >= 0, not {short(v)}")
    codec = m.get("codec", {})
    if not isinstance(codec.get("id", "none"), str):
        raise bad(f"'codec.id' must be a string (none, tsq), not {short(codec.get('id'))}")
    if codec.get("id") == "tsq":
        params, cut = codec.get("params"), [t["name"] for t in split["tensors"]]
        if not isinstance(params, dict) or sorted(params) != sorted(cut):
            raise bad(f"'codec.params' must map each cut tensor {cut} to its tsq params, not {short(params)}")
        for name, h in params.items():
            try:
                bytes.fromhex(h)
            except (TypeError, ValueError):
                raise bad(f"'codec.params.{name}' must be a hex string, not {short(h)}") from None
        budget = codec.get("budget")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not 0 <= budget < math.inf):
            raise bad(f"'codec.budget' must be a finite number >= 0, not {short(budget)}")


def _check_file_name(p: Path, name: Any, k: _Kind = _BUNDLE) -> None:
    """Refuse a manifest file entry that is not a plain path inside the bundle directory.

    The manifest's hashes prove only that the named files have the recorded bytes: an entry like
    ``/etc/hostname`` or ``../other/back.onnx`` (or a file that is a symlink out of the bundle)
    would have a file outside the bundle hashed, "verified" and later loaded as part of it.
    Checked also when hashes are not verified, since ``Bundle.file`` hands these paths out.
    """
    if not isinstance(name, str) or not name:
        raise BundleError(f"{k.noun} {p}: manifest.json names the file {name!r}, which is not a file name; {k.redo}")
    why = ""
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        why = "an absolute path"
    elif ".." in PurePosixPath(name).parts or ".." in PureWindowsPath(name).parts:
        why = "a path with '..'"
    else:
        root = p.resolve()
        target = (p / name).resolve()
        if root not in target.parents:
            why = f"a path that leads outside the bundle (to {target})"
    if why:
        raise BundleError(
            f"{k.noun} {p}: manifest.json names the file {name!r}, {why}; a {k.noun}'s files must lie inside its "
            f"directory. Do not use this {k.noun}: {k.redo}, or get it again from its source"
        )
