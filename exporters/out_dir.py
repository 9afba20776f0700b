"""Where an export writes: the ``--out`` directory, checked before any work and replaced at the end.

An export (``edgerun export``, ``edgerun tools build``, ``edgerun llm export``) builds its new
directory beside ``--out`` and swaps it in whole when it is complete, so a failed export leaves the
old one intact. Swapping in deletes the old directory: everything in it must be something the new
one replaces. A file the user put there (notes, a calibration set, a device profile, an archive of
the bundle, a folder) is named and the export refused before any work, and again just before the
swap (a file put there while the export ran).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgerun.bundle import FORMAT_NAME, LLM_FORMAT_NAME, MANIFEST, PACKED, TOOLS_FORMAT_NAME, manifest_format
from edgerun.errors import ConfigError

# The files each writer puts in its directory (exporters/pipeline.py + exits.py, exporters/tools.py,
# exporters/llm_export.py), whether or not the old manifest lists them: an old bundle without exits
# may hold an exits.png of an export before it, and a damaged manifest lists nothing. `edgerun pack`'s
# marker is edgerun's too (a pack unpacked there and exported over). Anything else is the user's.
WRITTEN = {
    FORMAT_NAME: re.compile(r"whole\.onnx|front\.(onnx|erg)|back\.onnx|samples\.npz|report\.json|exits\.png"
                            r"|exit\d+\.(onnx|erg)"),
    TOOLS_FORMAT_NAME: re.compile(r"encoder\.onnx|tokenizer\.json|tools\.json|tool_emb\.npz|report\.json"),
    LLM_FORMAT_NAME: re.compile(r"front\.onnx|back\.onnx|tokenizer\.json|report\.json"),
}
NAMED = 4  # foreign files named in the error; the rest counted
_WHAT = {FORMAT_NAME: "a model bundle", TOOLS_FORMAT_NAME: "a tool index", LLM_FORMAT_NAME: "an LLM bundle"}


def check_out_dir(out_dir: str | Path, format_name: str = FORMAT_NAME) -> Path:
    """The bundle directory ``out_dir`` as an absolute path, checked before any work is done.

    ``format_name``: what will be written there (a model bundle, a tool index or an LLM bundle). A
    directory that holds another kind (its manifest's ``format``) is refused: replacing it would lose it.

    Raises:
        ConfigError: it is a file or a directory that holds something else than a bundle, it holds
            files that are not part of the bundle there (``foreign_files``: they would be deleted with
            it), it is the working directory or one above it (the export replaces the whole directory:
            ``--out .`` inside an old bundle deleted it and the new one), or its parent cannot be written.
    """
    raw = str(out_dir)
    if not raw.strip():
        raise ConfigError("--out is empty; give the bundle directory to write, e.g. --out bundles/model")
    out = Path(raw).expanduser().resolve()
    if out.name.endswith((".tar", ".tar.gz", ".tgz")):
        raise ConfigError(f"--out {raw}: an export writes a bundle directory, not an archive; give a directory "
                          f"and archive it after (tar -czf {out.name.split('.tar')[0]}.tar.gz -C DIR .)")
    if out == Path(out.anchor) or out == Path.cwd().resolve() or out in Path.cwd().resolve().parents:
        raise ConfigError(f"--out {raw} is the directory you are in (or above it), and an export replaces "
                          "its --out directory whole; give a new directory, e.g. --out bundles/model")
    if out.exists() and (not out.is_dir() or ((any(out.iterdir())) and not (out / MANIFEST).exists())):
        raise ConfigError(f"{out} exists and is not a bundle; choose an empty or new --out directory")
    found = manifest_format(out)  # None for a damaged old bundle: re-exporting is how it is repaired
    if found is not None and found != format_name:
        what = _WHAT.get(found, f"a {found!r} directory")
        raise ConfigError(f"{out} holds {what}, which this would replace; choose an empty or new --out directory")
    if out.is_dir():
        _refuse_foreign(out, format_name)
    above = next(a for a in out.parents if a.exists())
    if not above.is_dir():  # said "cannot write the bundle beside x/b (File exists)"
        raise ConfigError(f"--out {raw}: {above} is a file, not a directory; choose an --out outside it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=out.parent)
        os.rmdir(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write the bundle beside {out} ({exc.strerror or exc}); "
                          "choose a writable --out directory") from exc
    return out


def foreign_files(directory: Path, format_name: str = FORMAT_NAME) -> list[str]:
    """What in ``directory`` (an old bundle at ``--out``) is not part of it: neither listed by its manifest
    nor a file the writer of ``format_name`` writes (``WRITTEN``). Paths relative to ``directory``, a folder
    with a trailing ``/`` (whole, unless the manifest lists files inside it); links are not followed."""
    listed = {MANIFEST, PACKED, *_listed(directory)}
    written = WRITTEN[format_name]
    found: list[str] = []

    def walk(d: Path, rel: str) -> None:
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            name = rel + entry.name
            if entry.is_dir(follow_symlinks=False):
                if any(n.startswith(name + "/") for n in listed):
                    walk(Path(entry.path), name + "/")
                else:
                    found.append(name + "/")
            elif name not in listed and not (not rel and written.fullmatch(name)):
                found.append(name)

    walk(directory, "")
    return found


def _listed(directory: Path) -> list[str]:
    """The file names the old manifest lists (none when it is missing or does not parse: a damaged bundle)."""
    try:
        files = json.loads((directory / MANIFEST).read_text()).get("files")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, AttributeError):
        return []
    return [n for n in files if isinstance(n, str)] if isinstance(files, dict) else []


def _refuse_foreign(out: Path, format_name: str) -> None:
    """ConfigError naming the first few ``foreign_files`` of ``out``; none: no error."""
    foreign = foreign_files(out, format_name)
    if not foreign:
        return
    more = f" and {len(foreign) - NAMED} more" if len(foreign) > NAMED else ""
    raise ConfigError(f"{out} holds {', '.join(foreign[:NAMED])}{more}, which {'is' if len(foreign) == 1 else 'are'} "
                      f"not part of the {_WHAT[format_name].split(' ', 1)[1]} there, and an export replaces its --out "
                      f"directory whole: move {'it' if len(foreign) == 1 else 'them'} out of {out.name}/, or choose "
                      "another --out")


@contextmanager
def building(final: Path, format_name: str = FORMAT_NAME) -> Iterator[Path]:
    """A new directory beside ``final`` to write into; swapped in at ``final`` when the block ends,
    deleted when it raises (a failed export leaves the old bundle, or index, intact)."""
    d = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield d
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    d.chmod(0o755)  # mkdtemp made it private
    swap_in(d, final, format_name)


def swap_in(new: Path, final: Path, format_name: str = FORMAT_NAME) -> None:
    """Put ``new`` at ``final``; an old bundle there is moved aside first and deleted only after.

    Raises:
        ConfigError: files not part of the old bundle appeared in ``final`` while the export ran (or it
            became something else); ``new`` is kept beside it under a name the error gives.
    """
    try:
        if final.exists() and (not final.is_dir() or any(final.iterdir())):
            if not final.is_dir() or not (final / MANIFEST).exists():
                raise ConfigError(f"{final} exists and is not a bundle; choose an empty or new --out directory")
            _refuse_foreign(final, format_name)
    except ConfigError as exc:
        kept = _keep_aside(new, final)
        raise ConfigError(f"{exc} (it changed while the export ran; the new one is kept at {kept})") from None
    if not final.exists():
        new.rename(final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    final.rename(old / final.name)
    try:
        new.rename(final)
    except BaseException:
        (old / final.name).rename(final)
        shutil.rmtree(new, ignore_errors=True)
        raise
    finally:
        if final.exists():  # the new bundle, or the old one put back: `old` holds nothing needed
            shutil.rmtree(old, ignore_errors=True)


def _keep_aside(new: Path, final: Path) -> Path:
    """``new`` under a visible name beside ``final`` (``<final>.new``, ``.new-2``...), where the user finds it."""
    for i in range(1, 100):
        there = final.with_name(f"{final.name}.new" + (f"-{i}" if i > 1 else ""))
        if not there.exists():
            new.rename(there)
            return there
    return new
