"""Bundle archives: a ``.tar`` / ``.tar.gz`` of one sealed directory (a model bundle, a split LLM
bundle, a tool index), unpacked into a temporary directory only after its declared size is checked
against a limit and the disk's free space, and read to its very end so a damaged or truncated
archive says so. What the directory holds is checked by ``edgerun/bundle.py``.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgerun.errors import BundleError, ConfigError

if TYPE_CHECKING:
    from edgerun.bundle import _Kind as Kind  # the words of the messages for one kind of sealed directory

try:
    from lzma import LZMAError
except ImportError:  # a Python built without lzma: tarfile cannot open .tar.xz either
    LZMAError = zlib.error  # type: ignore[misc,assignment]

MANIFEST = "manifest.json"
# An archive that declares more than this unpacked is refused (EDGERUN_MAX_BUNDLE_MB overrides):
# the zoo's EfficientNet bundles are ~42 MiB; an fp32 LLM half of a few hundred MiB fits.
MAX_BUNDLE_MB = 8192
# What a damaged compressed stream raises while tarfile reads it: gzip's CRC / length check and a
# bad header (gzip.BadGzipFile, an OSError), a stream cut short (EOFError), bad deflate or xz data.
_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, LZMAError)


def extract_archive(p: Path, k: Kind) -> tuple[Path, Any]:
    """Unpack an archive into a temporary directory; return the bundle directory in it and the handle.

    A damaged or truncated archive must say so: tarfile alone stops quietly at a bad member header
    after the first and never reads the gzip trailer (its CRC), so such an archive unpacked to a
    part of the bundle and read as "found 0 manifest.json" or as a missing file.
    """
    if not tarfile.is_tarfile(p):
        if _looks_like_archive(p):
            raise _damaged_archive(p, "its first header cannot be read", k)
        raise BundleError(f"{p} is neither a {k.noun} directory nor a tar archive of one")
    limit = _max_bundle_bytes()  # a wrong setting fails before anything is unpacked
    tmp = tempfile.TemporaryDirectory(prefix="edgerun-bundle-")
    try:  # any failure from here on removes what was unpacked
        try:
            with tarfile.open(p) as tf:
                _check_unpacked_size(p, tf.getmembers(), Path(tmp.name), limit, k)
                tf.extractall(tmp.name, filter="data")
                _check_archive_end(p, tf, k)  # after: extractall left the stream just before the end, no rewind
        except tarfile.FilterError as exc:  # a member the "data" filter refuses: an absolute path, a link out
            raise BundleError(
                f"archive {p} is not a {k.noun} {k.writer} writes ({exc}); do not use it: get the {k.noun} again "
                f"from its source or {k.redo}"
            ) from exc
        except _STREAM_ERRORS as exc:
            raise _damaged_archive(p, f"{type(exc).__name__}: {exc}", k) from exc
        except OSError as exc:
            if exc.errno is None:  # a decoder's complaint (bz2: "Invalid data stream"), not the file system's
                raise _damaged_archive(p, f"{type(exc).__name__}: {exc}", k) from exc
            raise BundleError(  # the disk it is unpacked to (full, read-only), not the archive
                f"archive {p} could not be unpacked into {tmp.name} ({exc}); free space there or point TMPDIR "
                "at a writable disk, or unpack it yourself (tar -xf) and pass the directory"
            ) from exc
        found = sorted(Path(tmp.name).rglob(MANIFEST))
        if len(found) != 1:
            where = [str(f.relative_to(tmp.name)) for f in found]
            todo = (f"it holds no {k.noun}: {k.make}" if not found else
                    f"it holds {len(found)} ({', '.join(where[:4])}): archive each {k.noun} alone, or unpack it "
                    "(tar -xf) and pass the directory of the one to use")
            raise BundleError(f"archive {p} must hold exactly one {MANIFEST}, found {len(found)}; {todo}")
    except BaseException:
        tmp.cleanup()
        raise
    return found[0].parent, tmp


def _looks_like_archive(p: Path) -> bool:
    """True when the file starts like a gzip / bzip2 / xz stream or a tar header ("ustar" magic)."""
    with open(p, "rb") as f:
        head = f.read(tarfile.BLOCKSIZE)
    return head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar"


def _damaged_archive(p: Path, why: str, k: Kind) -> BundleError:
    return BundleError(
        f"archive {p} is damaged or truncated ({why}); copy it again (check that the copy finished) "
        f"or {k.redo_whole}"
    )


def _check_archive_end(p: Path, tf: tarfile.TarFile, k: Kind) -> None:
    """Refuse an archive whose member list did not end at tar's end-of-archive block, or whose
    compressed stream fails its own check.

    ``getmembers`` returns what it read up to the first header it cannot parse (damaged, or cut
    off by a truncated copy) as if the archive ended there; only a block of zeros ends it
    properly. gzip checks its CRC-32 and length only at the end of the stream, which tarfile
    never reads: reading the rest here does (a few KiB of padding in a good archive).
    """
    f: Any = tf.fileobj
    f.seek(tf.offset)
    if f.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise _damaged_archive(p, f"the member header at byte {tf.offset} of the tar stream is damaged or cut off", k)
    while f.read(1 << 20):
        pass


def _max_bundle_bytes() -> int:
    """The unpacked-size limit in bytes: EDGERUN_MAX_BUNDLE_MB (MiB, fractions allowed) or the default.

    Read and checked where it is used, so a wrong value is one clear message: ``inf`` used to end
    in an OverflowError, ``0.1`` printed as a 0 MiB limit and ``-1`` as a -1 MiB one. Empty means
    unset.
    """
    raw = os.environ.get("EDGERUN_MAX_BUNDLE_MB", "").strip() or str(MAX_BUNDLE_MB)
    try:
        mb = float(raw)
    except ValueError:
        mb = math.nan
    if not (math.isfinite(mb) and mb * 2**20 >= 1):
        raise ConfigError(
            f"EDGERUN_MAX_BUNDLE_MB={os.environ.get('EDGERUN_MAX_BUNDLE_MB')!r} is not a positive number of MiB "
            f"(it takes a finite number > 0, fractions allowed, e.g. 512 or 0.5); unset it for the default "
            f"{MAX_BUNDLE_MB}, or give one"
        )
    return int(mb * 2**20)


def _size(n: int) -> str:
    """A byte count for a message: MiB with one decimal from 1 MiB on, bytes below."""
    return f"{n / 2**20:.1f}".removesuffix(".0") + " MiB" if n >= 2**20 else f"{n} bytes"


def _check_unpacked_size(p: Path, members: list[tarfile.TarInfo], dest: Path, limit: int, k: Kind) -> None:
    """Refuse an archive that would not fit where it is unpacked, before writing a byte of it.

    A damaged (or hostile) .tar.gz of a few KB can declare gigabytes; unpacking it would fill the
    disk the device runs from and then fail with a misleading 'corrupted'.
    """
    total = sum(m.size for m in members if m.isfile())
    if total > limit:
        have, cap = _size(total), _size(limit)
        if have == cap or limit < 2**20:  # rounded alike, or under 1 MiB: both in bytes, the limit also in MiB
            have, cap = f"{total} bytes", f"{limit} bytes ({limit / 2**20:.3g} MiB)"
        raise BundleError(
            f"archive {p} unpacks to {have}, over the {cap} limit for a {k.noun}; "
            f"it is damaged or not a {k.noun}. If it really is that large, unpack it yourself "
            "(tar -xf) and pass the directory, or raise EDGERUN_MAX_BUNDLE_MB"
        )
    free = shutil.disk_usage(dest).free
    if total > free:
        have, room = (_size(total), _size(free)) if _size(total) != _size(free) else (f"{total} bytes", f"{free} bytes")
        raise BundleError(
            f"archive {p} unpacks to {have} but {dest.parent} has {room} free; "
            "free space there, point TMPDIR at a larger disk, or unpack it yourself and pass the directory"
        )
