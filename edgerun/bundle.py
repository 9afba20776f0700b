"""The bundle: what the exporter writes and what a device and a server load.

A bundle is a directory (or a ``.tar`` / ``.tar.gz`` archive of one) holding
``manifest.json`` and the files it names. The manifest records the format
version, the model id, the split, the precisions, and the sha256 of every file;
the bundle hash covers all of it, so a device and a server that load the same
bundle agree on its identity to the bit. See ``docs/BUNDLE.md`` for the contract.

Loading never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerun.errors import BundleError

FORMAT_NAME = "edgerun-bundle"
FORMAT_VERSION = 1
# Readers accept these format versions; a newer writer must bump FORMAT_VERSION
# only for changes an old reader cannot ignore.
ACCEPTED_VERSIONS = (1,)
MANIFEST = "manifest.json"
# An archive that declares more than this unpacked is refused (EDGERUN_MAX_BUNDLE_MB overrides):
# the zoo's EfficientNet bundles are ~42 MiB; an fp32 LLM half of a few hundred MiB fits.
MAX_BUNDLE_MB = 8192


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


def compute_bundle_hash(manifest: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of the manifest without its own hash field."""
    body = {k: v for k, v in manifest.items() if k != "bundle_hash"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canon).hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file named in ``manifest['files']``, seal the manifest, write it.

    Args:
        directory: the bundle directory; the files must already be there.
        manifest: the manifest body; its ``files`` maps file name -> dict (role, ...).

    Returns:
        The sealed manifest (with ``sha256``/``bytes`` per file and ``bundle_hash``).
    """
    files = {}
    for name, entry in sorted(manifest.get("files", {}).items()):
        p = directory / name
        files[name] = {**entry, "sha256": sha256_file(p), "bytes": p.stat().st_size}
    sealed = {**manifest, "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "files": files}
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

    def __init__(self, path: Path, manifest: dict[str, Any], _tmp: Any = None) -> None:
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
        tmp = None
        if p.is_file():
            p, tmp = _extract_archive(p)
        manifest = _read_manifest(p)
        _check_manifest(p, manifest, verify_hashes)
        return Bundle(p, manifest, tmp)

    def file(self, name: str) -> Path:
        """Path of a file of the bundle; BundleError when the bundle has none by that name."""
        if name not in self.manifest["files"]:
            have = ", ".join(sorted(self.manifest["files"]))
            raise BundleError(f"bundle {self.path} has no {name!r} (it has: {have}); re-export it")
        return self.path / name

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    def __repr__(self) -> str:
        return f"Bundle({self.model_id!r}, cut={self.cut_label!r}, hash={self.hash[:12]}, path={str(self.path)!r})"


def _extract_archive(p: Path) -> tuple[Path, Any]:
    if not tarfile.is_tarfile(p):
        raise BundleError(f"{p} is neither a bundle directory nor a tar archive of one")
    tmp = tempfile.TemporaryDirectory(prefix="edgerun-bundle-")
    try:
        with tarfile.open(p) as tf:
            _check_unpacked_size(p, tf.getmembers(), Path(tmp.name))
            tf.extractall(tmp.name, filter="data")
    except BundleError:
        tmp.cleanup()
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        tmp.cleanup()
        raise BundleError(f"archive {p} is corrupted ({exc}); copy it again or re-export") from exc
    root = Path(tmp.name)
    found = list(root.rglob(MANIFEST))
    if len(found) != 1:
        raise BundleError(f"archive {p} must hold exactly one {MANIFEST}, found {len(found)}")
    return found[0].parent, tmp


def _check_unpacked_size(p: Path, members: list[tarfile.TarInfo], dest: Path) -> None:
    """Refuse an archive that would not fit where it is unpacked, before writing a byte of it.

    A damaged (or hostile) .tar.gz of a few KB can declare gigabytes; unpacking it would fill the
    disk the device runs from and then fail with a misleading 'corrupted'.
    """
    total = sum(m.size for m in members if m.isfile())
    raw = os.environ.get("EDGERUN_MAX_BUNDLE_MB", str(MAX_BUNDLE_MB))
    try:
        limit = int(float(raw) * 2**20)
    except ValueError:
        raise BundleError(f"EDGERUN_MAX_BUNDLE_MB={raw!r} is not a number of MiB; unset it or give one") from None
    if total > limit:
        raise BundleError(
            f"archive {p} unpacks to {total / 2**20:.0f} MiB, over the {limit / 2**20:.0f} MiB limit for a bundle; "
            "it is damaged or not a bundle. If it really is that large, unpack it yourself "
            "(tar -xf) and pass the directory, or raise EDGERUN_MAX_BUNDLE_MB"
        )
    free = shutil.disk_usage(dest).free
    if total > free:
        raise BundleError(
            f"archive {p} unpacks to {total / 2**20:.0f} MiB but {dest.parent} has {free / 2**20:.0f} MiB free; "
            "free space there, point TMPDIR at a larger disk, or unpack it yourself and pass the directory"
        )


def _read_manifest(p: Path) -> dict[str, Any]:
    mf = p / MANIFEST
    if not mf.is_file():
        raise BundleError(f"{p} is not a bundle: no {MANIFEST}; create one with `edgerun export`")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mf} is not valid JSON ({exc}); the bundle is corrupted, re-export it") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{mf} is not an edgerun bundle manifest")
    return manifest


def _check_manifest(p: Path, manifest: dict[str, Any], verify_hashes: bool) -> None:
    version = manifest.get("format_version")
    if version not in ACCEPTED_VERSIONS:
        raise BundleError(
            f"bundle {p} has format version {version}; this edgerun reads {list(ACCEPTED_VERSIONS)}. "
            "Upgrade edgerun on this machine, or re-export the bundle with this version."
        )
    for key in ("model_id", "split", "inputs", "outputs", "files", "bundle_hash"):
        if key not in manifest:
            raise BundleError(f"bundle {p} manifest lacks {key!r}; re-export it")
    if compute_bundle_hash(manifest) != manifest["bundle_hash"]:
        raise BundleError(f"bundle {p}: manifest.json was edited or corrupted (hash mismatch); re-export it")
    if not verify_hashes:
        return
    for name, entry in manifest["files"].items():
        f = p / name
        if not f.is_file():
            raise BundleError(f"bundle {p} is incomplete: {name} is missing; copy the whole bundle again")
        if f.stat().st_size != entry.get("bytes") or sha256_file(f) != entry.get("sha256"):
            raise BundleError(
                f"bundle {p}: {name} does not match its sha256 in the manifest (corrupted or replaced); "
                "copy the bundle again or re-export it"
            )
