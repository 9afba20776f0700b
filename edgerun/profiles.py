"""Device, server and link profiles: what the planner and the bench know about the hardware.

Profiles are TOML files in ``devices/`` (format, units and the source of every number:
``devices/README.md``). A profile is named by its file stem (``rpi4``, ``wifi``) or given
as a path. Loading validates every field; a missing or malformed one is a ``ConfigError``
naming the file and the field.

Example:
    >>> from edgerun.profiles import load_link
    >>> wifi = load_link("wifi")                # doctest: +SKIP
    >>> wifi.network_ms(4096, 40)               # doctest: +SKIP
    4.83
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgerun.errors import ConfigError

PRECISIONS_KNOWN = ("fp32", "fp16", "int8", "int4")
DEVICES_DIR_ENV = "EDGERUN_DEVICES"


def devices_dir() -> Path:
    """The profile directory: ``$EDGERUN_DEVICES`` or the repository's ``devices/``."""
    env = os.environ.get(DEVICES_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parent.parent / "devices"


@dataclass(frozen=True)
class Compute:
    """Latency model of one precision: ``overhead_ms + macs / (gmacs * 1e6) + nodes * per_node_us / 1e3``."""

    gmacs: float            # effective multiply-accumulates per second, in 1e9
    overhead_ms: float = 0.0  # fixed cost per call (dispatch, input copy)
    per_node_us: float = 0.0  # cost per graph node (kernel launch, memory-bound elementwise work)

    def __post_init__(self) -> None:
        if not self.gmacs > 0:
            raise ValueError(f"gmacs must be > 0, got {self.gmacs}")
        if self.overhead_ms < 0 or self.per_node_us < 0:
            raise ValueError("overhead_ms and per_node_us must be >= 0")

    def ms(self, macs: int, nodes: int) -> float:
        """Predicted milliseconds for a graph of ``macs`` MACs and ``nodes`` nodes."""
        return self.overhead_ms + macs / (self.gmacs * 1e6) + nodes * self.per_node_us / 1e3


@dataclass(frozen=True)
class Measured:
    """A measured time of one model segment: prefix (device) or suffix (server) at a cut."""

    model: str
    cut: int          # cut index; -1 = nothing (0 ms); "whole" is stored as cut = 1_000_000
    precision: str
    ms: float


WHOLE = 1_000_000  # the ``cut`` value of a measurement of the whole model


@dataclass(frozen=True)
class _Machine:
    name: str
    path: str
    compute: dict[str, Compute]
    measured: tuple[Measured, ...] = ()
    memory_mb: float = 0.0
    description: str = ""
    cpu: str = ""  # the CPU it was measured on (``[meta] cpu``, written by `edgerun profile`)

    def precisions(self) -> list[str]:
        return sorted(self.compute)

    def lookup(self, model: str, cut: int, precision: str) -> float | None:
        """The measured ms for (model, cut, precision), or None."""
        for m in self.measured:
            if m.model == model and m.cut == cut and m.precision == precision:
                return m.ms
        return None

    def predict_ms(self, model: str, cut: int, precision: str, macs: int, nodes: int) -> tuple[float, str]:
        """Measured time when the profile has it, else the linear model; returns (ms, "measured"|"model").

        Raises:
            ConfigError: the profile has no compute entry for ``precision``.
        """
        got = self.lookup(model, cut, precision)
        if got is not None:
            return got, "measured"
        if precision not in self.compute:
            raise ConfigError(f"profile {self.path} has no [compute.{precision}] section; "
                              f"it has {self.precisions()}: add one or plan with another precision")
        return self.compute[precision].ms(macs, nodes), "model"


@dataclass(frozen=True)
class DeviceProfile(_Machine):
    """A device: compute per precision, memory, ISA; optional measured per-cut times."""

    isa: str = ""
    cores: int = 1

    def __post_init__(self) -> None:
        if not self.memory_mb > 0:
            raise ConfigError(f"profile {self.path}: field 'memory_mb' must be > 0")

    def scaled(self, factor: float, name: str, description: str) -> DeviceProfile:
        """This profile ``factor`` times slower: every measured time and model term scaled.

        Used for the emulated device of the bench (``SlowedEngine``): a device that is this
        machine slowed down by ``factor`` has exactly this profile.
        """
        if not factor >= 1.0:
            raise ConfigError(f"a device can only be emulated slower than this machine, got factor {factor}")
        comp = {p: Compute(c.gmacs / factor, c.overhead_ms * factor, c.per_node_us * factor)
                for p, c in self.compute.items()}
        meas = tuple(Measured(m.model, m.cut, m.precision, m.ms * factor) for m in self.measured)
        return DeviceProfile(name, self.path, comp, meas, self.memory_mb, description, self.cpu, self.isa, self.cores)


@dataclass(frozen=True)
class ServerProfile(_Machine):
    """A server: compute per precision for the back half (latency model + measured times)."""


@dataclass(frozen=True)
class LinkProfile:
    """A device <-> broker link. Bandwidths in megabits per second, times in ms, loss as a fraction."""

    name: str
    path: str
    rtt_ms: float
    up_mbps: float
    down_mbps: float
    jitter_ms: float = 0.0
    loss: float = 0.0
    description: str = ""
    outages: tuple[tuple[float, float], ...] = field(default=())  # (start_s, duration_s) for the emulator

    def __post_init__(self) -> None:
        for f in ("rtt_ms", "jitter_ms"):
            if getattr(self, f) < 0:
                raise ConfigError(f"profile {self.path}: field {f!r} must be >= 0")
        for f in ("up_mbps", "down_mbps"):
            if not getattr(self, f) > 0:
                raise ConfigError(f"profile {self.path}: field {f!r} must be > 0")
        if not 0 <= self.loss < 1:
            raise ConfigError(f"profile {self.path}: field 'loss' must be in [0, 1)")

    def network_ms(self, up_bytes: int, down_bytes: int) -> float:
        """Predicted request round trip: RTT + serialization both ways + one jitter (a p50-ish margin)."""
        ser = up_bytes * 8 / (self.up_mbps * 1e3) + down_bytes * 8 / (self.down_mbps * 1e3)
        return self.rtt_ms + ser + self.jitter_ms


# ---------------------------------------------------------------------------- loading
def _resolve(name_or_path: str | os.PathLike) -> Path:
    p = Path(name_or_path)
    # A bare name is a profile name even if a folder of that name sits in the working directory.
    if p.suffix == ".toml" or p.is_file() or len(p.parts) > 1:
        if not p.is_file():
            what = "is a directory, not a file" if p.is_dir() else "does not exist"
            raise ConfigError(f"profile file {p} {what}; give a name from {devices_dir()} or a path to a .toml file")
        return p
    cand = devices_dir() / f"{p.name}.toml"
    if not cand.is_file():
        have = sorted(x.stem for x in devices_dir().glob("*.toml")) if devices_dir().is_dir() else []
        raise ConfigError(f"no profile named {str(name_or_path)!r} in {devices_dir()} (have: {', '.join(have)}); "
                          "give one of those names or a path to a .toml file")
    return cand


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"profile {path} is not valid TOML ({exc}); fix the file") from exc


def _field(d: dict, key: str, path: Path, typ: type, *, default: Any = ..., where: str = "") -> Any:
    label = f"{where}.{key}" if where else key
    if key not in d:
        if default is ...:
            raise ConfigError(f"profile {path}: missing field {label!r}; see devices/README.md for the format")
        return default
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
        raise ConfigError(f"profile {path}: field {label!r} must be a {typ.__name__}, got {v!r}")
    if typ is float and not math.isfinite(v):  # NaN passed every `< 0` check and made NaN plans "feasible"
        raise ConfigError(f"profile {path}: field {label!r} must be a finite number, got {v!r}")
    return v


# The keys each kind of profile may hold: a misspelt optional key (`memroy_mb`) was ignored and its
# default used without a word.
_KEYS = {
    "device": {"kind", "name", "memory_mb", "description", "isa", "cores", "compute", "measured", "meta"},
    "server": {"kind", "name", "memory_mb", "description", "compute", "measured", "meta"},
    "link": {"kind", "name", "rtt_ms", "up_mbps", "down_mbps", "jitter_ms", "loss", "description", "outages"},
}
_COMPUTE_KEYS = {"gmacs", "overhead_ms", "per_node_us"}
_MEASURED_KEYS = {"model", "cut", "precision", "ms"}


def _no_unknown_keys(d: dict, allowed: set[str], path: Path, where: str = "") -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        at = f" in [{where}]" if where else ""
        raise ConfigError(f"profile {path}: unknown field(s) {unknown}{at}; the fields are {sorted(allowed)} "
                          "(see devices/README.md)")


def _load(name_or_path: str | os.PathLike, kind: str) -> tuple[Path, dict[str, Any]]:
    """Resolve, read and check the ``kind`` of a profile: ``(path, parsed TOML)``."""
    path = _resolve(name_or_path)
    d = _read(path)
    _kind(d, path, kind)
    _no_unknown_keys(d, _KEYS[kind], path)
    return path, d


def _kind(d: dict, path: Path, want: str) -> None:
    got = _field(d, "kind", path, str)
    if got != want:
        raise ConfigError(f"profile {path}: field 'kind' is {got!r} but a {want} profile is needed here")


def _compute(d: dict, path: Path) -> dict[str, Compute]:
    sec = _field(d, "compute", path, dict)
    out = {}
    for prec, c in sec.items():
        where = f"compute.{prec}"
        if prec not in PRECISIONS_KNOWN:
            raise ConfigError(f"profile {path}: section [{where}] names an unknown precision; use {PRECISIONS_KNOWN}")
        if not isinstance(c, dict):
            raise ConfigError(f"profile {path}: [{where}] must be a table")
        _no_unknown_keys(c, _COMPUTE_KEYS, path, where)
        try:
            out[prec] = Compute(_field(c, "gmacs", path, float, where=where),
                                _field(c, "overhead_ms", path, float, default=0.0, where=where),
                                _field(c, "per_node_us", path, float, default=0.0, where=where))
        except ValueError as exc:
            raise ConfigError(f"profile {path}: [{where}] {exc}") from None
    if not out:
        raise ConfigError(f"profile {path}: [compute] is empty; add at least [compute.fp32]")
    return out


def _measured(d: dict, path: Path) -> tuple[Measured, ...]:
    rows = _field(d, "measured", path, list, default=[])
    out = []
    for i, r in enumerate(rows):
        w = f"measured[{i}]"
        if not isinstance(r, dict):
            raise ConfigError(f"profile {path}: {w} must be a table")
        _no_unknown_keys(r, _MEASURED_KEYS, path, w)
        ms = _field(r, "ms", path, float, where=w)
        if ms < 0:  # a negative time was planned as the fastest candidate
            raise ConfigError(f"profile {path}: {w}.ms must be >= 0, got {ms}")
        out.append(Measured(_field(r, "model", path, str, where=w), _field(r, "cut", path, int, where=w),
                            _field(r, "precision", path, str, where=w), ms))
    return tuple(out)


def _machine_fields(d: dict, path: Path, memory_default: Any = ...) -> dict[str, Any]:
    """The fields device and server profiles share (see ``_Machine``)."""
    return {"name": _field(d, "name", path, str), "path": str(path), "compute": _compute(d, path),
            "measured": _measured(d, path), "memory_mb": _field(d, "memory_mb", path, float, default=memory_default),
            "description": _field(d, "description", path, str, default=""),
            "cpu": _field(_field(d, "meta", path, dict, default={}), "cpu", path, str, default="", where="meta")}


def load_device(name_or_path: str | os.PathLike) -> DeviceProfile:
    """Load a device profile by name (``rpi4``) or path.

    Raises:
        ConfigError: missing file, not a device profile, or a missing/malformed field (named).
    """
    path, d = _load(name_or_path, "device")
    return DeviceProfile(**_machine_fields(d, path), isa=_field(d, "isa", path, str, default=""),
                         cores=_field(d, "cores", path, int, default=1))


def cpu_name() -> str:
    """The CPU's model name with its vendor, family and model numbers (Linux ``/proc/cpuinfo``),
    else what ``platform`` knows.

    Profiles and benchmarks record it: the same code ranks differently on an AVX2-only AMD EPYC
    and an AVX-512 / AMX Xeon, and a KVM guest may name both a Zen 1 and a Zen 5 "AMD EPYC"
    (families 23 and 26). ``platform.processor()`` is empty on most Linux machines.
    """
    import platform

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "vendor_id", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break  # the first processor's block is enough
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        return (f"{fields['model name']} ({fields.get('vendor_id', '?')} family {fields['cpu family']} "
                f"model {fields['model']})")
    return fields["model name"]


def stale_profile_note(profile: DeviceProfile) -> str:
    """A warning when ``profile`` (this machine's) was measured on another CPU, else ``""``.

    ``devices/this-machine.toml`` describes whichever machine ran `edgerun profile`; on another
    CPU the emulated devices and the planner's device times are off by the two CPUs' ratio.
    """
    now = cpu_name()
    if profile.cpu == now:
        return ""
    was = f"on {profile.cpu!r}" if profile.cpu else "on a CPU it does not record"
    return (f"WARNING: {Path(profile.path).name} was measured {was}, this is {now!r}: re-run "
            "`edgerun profile` here before trusting its device times")


MAX_EMULATION_FACTOR = 10_000.0  # a 1 ms front half would take 10 s per request beyond this


def emulated_device(device: str | os.PathLike | None) -> tuple[DeviceProfile, float, str]:
    """The profile of ``device`` as the bench emulates it on this machine.

    The bench cannot run a Raspberry Pi; it runs this machine's native engine and waits
    ``factor - 1`` times the measured compute after each run, where ``factor`` is the fp32
    GMAC/s ratio of ``devices/this-machine.toml`` over the device's profile. The device that
    is measured is therefore ``this-machine`` scaled by ``factor`` (its per-cut measured times
    included), and that is the profile to plan with when checking the planner against it.

    Args:
        device: a device profile name or path; ``None`` or ``"this-machine"`` = no emulation.

    Returns:
        ``(profile, factor, note)``: the note says how the compute was emulated (for reports).

    Raises:
        ConfigError: a missing or malformed profile.
    """
    here = load_device("this-machine")
    stale = stale_profile_note(here)
    if device is None or str(device) == "this-machine":
        return here, 1.0, "measured on this machine, not scaled" + (f"; {stale}" if stale else "")
    there = load_device(device)
    for prof in (here, there):
        if "fp32" not in prof.compute:  # a KeyError traceback before
            raise ConfigError(f"profile {prof.path} has no [compute.fp32]: the emulation scales this machine's "
                              "measured compute by the two profiles' fp32 GMAC/s; add it")
    factor = max(1.0, here.compute["fp32"].gmacs / there.compute["fp32"].gmacs)
    if factor > MAX_EMULATION_FACTOR:  # 1e-300 GMAC/s overflowed the sleep
        raise ConfigError(f"{there.name} is {factor:.3g}x slower than this machine by its profile; the bench emulates "
                          f"at most {MAX_EMULATION_FACTOR:g}x: check its [compute.fp32] gmacs")
    note = (f"EMULATED {there.name}: this machine's measured device compute x{factor:.2f} "
            f"(fp32 GMAC/s of devices/this-machine.toml over devices/{Path(there.path).name})"
            + (f"; {stale}" if stale else ""))
    emu = here.scaled(factor, f"{there.name}-emulated", note)
    return dataclasses.replace(emu, memory_mb=there.memory_mb), factor, note


def load_server(name_or_path: str | os.PathLike) -> ServerProfile:
    """Load a server profile by name (``cpu-server``) or path.

    Raises:
        ConfigError: missing file, not a server profile, or a missing/malformed field (named).
    """
    path, d = _load(name_or_path, "server")
    fields = _machine_fields(d, path, memory_default=0.0)
    if fields["memory_mb"] < 0:
        raise ConfigError(f"profile {path}: field 'memory_mb' must be >= 0 (0 = not stated)")
    return ServerProfile(**fields)


def load_link(name_or_path: str | os.PathLike) -> LinkProfile:
    """Load a link profile by name (``wifi``) or path.

    Raises:
        ConfigError: missing file, not a link profile, or a missing/malformed field (named).
    """
    path, d = _load(name_or_path, "link")
    outs = _field(d, "outages", path, list, default=[])
    try:
        outages = tuple((float(a), float(b)) for a, b in outs)
    except (TypeError, ValueError):
        raise ConfigError(f"profile {path}: field 'outages' must be a list of [start_s, duration_s]") from None
    if any(not (math.isfinite(a) and math.isfinite(b) and a >= 0 and b > 0) for a, b in outages):
        raise ConfigError(f"profile {path}: field 'outages' needs [start_s >= 0, duration_s > 0] pairs of "
                          f"finite numbers, got {outs!r}")
    return LinkProfile(name=_field(d, "name", path, str), path=str(path), rtt_ms=_field(d, "rtt_ms", path, float),
                       up_mbps=_field(d, "up_mbps", path, float), down_mbps=_field(d, "down_mbps", path, float),
                       jitter_ms=_field(d, "jitter_ms", path, float, default=0.0),
                       loss=_field(d, "loss", path, float, default=0.0),
                       description=_field(d, "description", path, str, default=""), outages=outages)


__all__ = ["Compute", "DeviceProfile", "LinkProfile", "Measured", "ServerProfile", "WHOLE",
           "devices_dir", "load_device", "load_link", "load_server"]
