"""One side's copy of a bundle: `edgerun pack BUNDLE --for device|server --out FILE.tar.gz` (or .tar).

A device needs the front half (and its exits, samples, report), a server the back half; neither
needs the whole model the exporter keeps as the reference. A pack is a ``.tar.gz`` of the bundle
directory with the other side's files left out and ``packed.json`` saying so. The manifest is
copied byte for byte, so the bundle hash (and with it the MQTT topics) is the one of the whole
bundle: a device loading its pack talks to servers loading theirs. Every file a pack holds is
checked against the manifest's sha256 when it loads, as in a whole bundle; a command that needs
a file the pack left out names it and says what to do (``bundle.check_not_left_out``).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

from edgerun.bundle import LLM_FORMAT_NAME, MANIFEST, PACK_FORMAT, PACK_SIDES, PACKED, open_any_bundle
from edgerun.errors import BundleError, ConfigError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")  # what a pack may be named; tar -x makes the name without it

# What each side loads, by file name; any other file (the whole model, plots) stays out of both packs.
_MODEL_SIDES = {
    "device": re.compile(r"front\.(erg|onnx)|exit\d+\.(erg|onnx)|samples\.npz|report\.json"),
    "server": re.compile(r"back\.onnx|report\.json"),
}
_LLM_SIDES = {  # the device's back half only for --local-fallback: --keep back.onnx
    "device": re.compile(r"front\.onnx|tokenizer\.json|report\.json"),
    "server": re.compile(r"back\.onnx|report\.json"),
}


def side_files(manifest: dict[str, Any], side: str, keep: tuple[str, ...] = ()) -> list[str]:
    """The files of ``manifest`` that ``side`` loads, plus ``keep``; ConfigError for an unknown side or file."""
    if side not in PACK_SIDES:
        raise ConfigError(f"--for {side!r}: pack for one of {', '.join(PACK_SIDES)}")
    files = manifest["files"]
    unknown = [k for k in keep if k not in files]
    if unknown:
        raise ConfigError(f"--keep {', '.join(unknown)}: the bundle has no such file (it has: {', '.join(sorted(files))})")
    rules = _LLM_SIDES if manifest.get("format") == LLM_FORMAT_NAME else _MODEL_SIDES
    return sorted(n for n in files if rules[side].fullmatch(n) or n in keep)


def pack(bundle: str | os.PathLike, side: str, out: str | os.PathLike, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write ``side``'s copy of ``bundle`` (a directory or archive, verified first) to ``out`` (.tar.gz / .tar).

    Returns:
        A summary: side, out, the files kept and left out, their bytes, and the bundle hash.

    Raises:
        BundleError: the bundle is missing, damaged or itself a pack.
        ConfigError: a bad side, ``--keep`` name or ``out`` path.
    """
    out = Path(out)
    if not out.name.endswith(ARCHIVE_SUFFIXES):
        raise ConfigError(f"--out {out}: a pack is a .tar.gz (or .tar) archive; name it e.g. {out.name}.tar.gz")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give the archive's file name")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the directory {out.parent} does not exist")
    src = Path(bundle)
    if src.is_file() and out.resolve() == src.resolve():  # os.replace put the one side's copy in its place
        stem = next(out.name[:-len(x)] for x in ARCHIVE_SUFFIXES if out.name.endswith(x))
        raise ConfigError(f"--out {out} is the bundle archive being packed, which the pack would replace; give "
                          f"the pack another name, e.g. --out {out.with_name(f'{stem}-{side}.tar.gz')}")
    path, manifest, tmp = open_any_bundle(src)
    try:
        if (path / PACKED).is_file():
            raise BundleError(f"{src} is already one side's copy (`edgerun pack`); pack the whole bundle")
        kept = side_files(manifest, side, tuple(keep))
        left = sorted(set(manifest["files"]) - set(kept))
        marker = {"format": PACK_FORMAT, "for": side, "omitted": left, "bundle_hash": manifest["bundle_hash"]}
        # the folder tar -x makes: the archive's name without its suffix (split at the first ".t", the
        # README's digits-device.tar.gz -> digits-device/ was robot.tiny.tar.gz -> robot/)
        top = next(out.name[:-len(x)] for x in ARCHIVE_SUFFIXES if out.name.endswith(x)) or "bundle"
        part = out.with_name(out.name + ".part")
        try:  # written beside, renamed at the end: no half archive at --out, an older one kept on failure
            # gzip's fastest level: float weights hardly compress, and level 9 took seconds per 100 MB
            mode = {"mode": "w"} if out.name.endswith(".tar") else {"mode": "w:gz", "compresslevel": 1}
            # dereference: a file of the bundle that is a link (to a store inside it, which the manifest's
            # check allows) goes in as its bytes; as a link it dangled in the pack, or was refused unpacking
            with tarfile.open(part, dereference=True, **mode) as tf:
                tf.add(path / MANIFEST, f"{top}/{MANIFEST}")
                for name in kept:
                    tf.add(path / name, f"{top}/{name}")
                data = json.dumps(marker, indent=1, sort_keys=True).encode()
                info = tarfile.TarInfo(f"{top}/{PACKED}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            os.replace(part, out)
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise ConfigError(f"--out {out}: the archive could not be written ({exc}); free space there or "
                              "give another path") from exc
        size = {n: int(manifest["files"][n].get("bytes", 0)) for n in manifest["files"]}
        return {"for": side, "out": str(out), "kept": kept, "left_out": left,
                "kept_bytes": sum(size[n] for n in kept), "left_out_bytes": sum(size[n] for n in left),
                "archive_bytes": out.stat().st_size, "bundle_hash": manifest["bundle_hash"]}
    finally:
        if tmp is not None:
            tmp.cleanup()

