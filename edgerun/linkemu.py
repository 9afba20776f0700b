"""A userspace TCP link emulator between a device and its broker.

The kernel here has no ``netem``, so the device connects to this emulator on a loopback
port and the emulator forwards to the broker, shaping each direction like a link:

* **bandwidth**: a serializer per direction shared by all connections (a token bucket
  whose depth is one segment): a segment of ``n`` bytes occupies the link for
  ``n * 8 / bits_per_s`` after the previous one left;
* **delay + jitter**: each segment arrives ``delay_ms + U(0, jitter_ms)`` after it left
  the serializer, never before the previous segment of its connection (TCP keeps order);
* **outages**: scheduled windows ``(start_s, duration_s)`` from ``start()``, or
  ``outage(duration_s)`` now. During an outage live connections are reset, queued data
  is dropped, and new connections are refused; after it, connections are accepted again
  (an MQTT client reconnects).

The round trip a request sees is ``2 * delay_ms`` + jitter of both directions + the
serialization of its bytes. ``measure(...)`` measures RTT and throughput through an
emulator with a given config, so a benchmark can report the emulated figures next to
the profile's.

Example:
    >>> from edgerun.linkemu import LinkConfig, LinkEmulator
    >>> with LinkEmulator(("127.0.0.1", 1883), LinkConfig(delay_ms=10, up_mbps=8)) as emu:  # doctest: +SKIP
    ...     url = emu.url    # give this to the Device instead of the broker's URL
"""

from __future__ import annotations

import asyncio
import random
import socket
import statistics
import struct
import threading
import time
from dataclasses import dataclass

from edgerun.errors import ConfigError, TransportError

SPIN_S = 0.0015  # the last part of a wait is spent yielding (see _sleep_until)
SEGMENT_BYTES = 16384  # shaping granularity: small enough that a 10 Mbit/s link sends one in 13 ms


@dataclass(frozen=True)
class LinkConfig:
    """One emulated link. Times in ms (one way), bandwidth in megabits per second (0 = unlimited)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    up_mbps: float = 0.0
    down_mbps: float = 0.0
    outages: tuple[tuple[float, float], ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        for f in ("delay_ms", "jitter_ms", "up_mbps", "down_mbps"):
            if getattr(self, f) < 0:
                raise ConfigError(f"LinkConfig.{f}={getattr(self, f)} must be >= 0")
        for start, dur in self.outages:
            if start < 0 or dur <= 0:
                raise ConfigError(f"outage ({start}, {dur}): start must be >= 0 and duration > 0 (seconds)")

    @staticmethod
    def from_profile(link, *, outages: tuple[tuple[float, float], ...] | None = None) -> "LinkConfig":
        """The emulator settings of a ``LinkProfile``: one-way delay = RTT / 2; U(0, jitter) each way,
        so the mean round trip is ``rtt_ms + jitter_ms`` (what the planner predicts)."""
        return LinkConfig(delay_ms=link.rtt_ms / 2, jitter_ms=link.jitter_ms, up_mbps=link.up_mbps,
                          down_mbps=link.down_mbps, outages=link.outages if outages is None else outages)


class _Direction:
    """The serializer of one direction, shared by every connection."""

    def __init__(self, mbps: float) -> None:
        self.bits_per_s = mbps * 1e6
        self.free_at = 0.0
        self.bytes = 0

    def depart(self, now: float, n: int) -> float:
        self.bytes += n
        if self.bits_per_s <= 0:
            return now
        self.free_at = max(now, self.free_at) + n * 8 / self.bits_per_s
        return self.free_at


class LinkEmulator:
    """Listen on ``listen`` (loopback, free port by default) and forward to ``target`` through the link.

    Args:
        target: (host, port) of the broker.
        config: the link.
        listen_host / listen_port: where devices connect (port 0 = a free one).

    Raises:
        TransportError (from ``start``): the listening socket cannot be opened.
    """

    def __init__(self, target: tuple[str, int], config: LinkConfig, *, listen_host: str = "127.0.0.1",
                 listen_port: int = 0) -> None:
        self.target = target
        self.config = config
        self.listen_host, self.port = listen_host, int(listen_port)
        self.up, self.down = _Direction(config.up_mbps), _Direction(config.down_mbps)
        self.connections = 0
        self.refused = 0
        self.reset = 0
        self._rng = random.Random(config.seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._manual_until = 0.0
        self._live: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------
    @property
    def url(self) -> str:
        """``mqtt://host:port`` that devices use instead of the broker's URL."""
        return f"mqtt://{self.listen_host}:{self.port}"

    def start(self) -> "LinkEmulator":
        self._thread = threading.Thread(target=self._run, name="edgerun-linkemu", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise TransportError(f"the link emulator could not listen on {self.listen_host}:{self.port} "
                                 f"({self._error}); choose another port")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> "LinkEmulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def outage(self, duration_s: float) -> None:
        """Start an outage now, lasting ``duration_s`` seconds."""
        if duration_s <= 0:
            raise ConfigError(f"outage duration {duration_s} must be > 0 s")
        self._manual_until = time.monotonic() + duration_s
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drop_all)

    def in_outage(self) -> bool:
        now = time.monotonic()
        if now < self._manual_until:
            return True
        rel = now - self._t0
        return any(s <= rel < s + d for s, d in self.config.outages)

    def stats(self) -> dict:
        return {"bytes_up": self.up.bytes, "bytes_down": self.down.bytes, "connections": self.connections,
                "refused": self.refused, "reset": self.reset}

    # -- event loop ----------------------------------------------------------
    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._accept, self.listen_host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._t0 = time.monotonic()
        self._ready.set()
        watcher = asyncio.ensure_future(self._watch_outages())
        await self._stop_event.wait()
        watcher.cancel()
        server.close()
        self._drop_all()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        await server.wait_closed()

    async def _watch_outages(self) -> None:
        was = False
        while True:
            now = self.in_outage()
            if now and not was:
                self._drop_all()
            was = now
            await asyncio.sleep(0.005)

    def _drop_all(self) -> None:
        for w in list(self._live):
            self.reset += 1
            _abort(w)
        self._live.clear()

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        if self.in_outage():
            self.refused += 1
            _abort(c_writer)
            return
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self.refused += 1
            _abort(c_writer)
            return
        self.connections += 1
        for w in (c_writer, t_writer):
            _nodelay(w)
            self._live.add(w)
        try:
            await asyncio.gather(self._pipe(c_reader, t_writer, self.up, c_writer),
                                 self._pipe(t_reader, c_writer, self.down, t_writer), return_exceptions=True)
        except asyncio.CancelledError:
            pass  # the emulator is stopping
        for w in (c_writer, t_writer):
            self._live.discard(w)
            _abort(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, d: _Direction,
                    peer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        sender = asyncio.ensure_future(self._deliver(queue, writer))
        last = 0.0
        try:
            while True:
                data = await reader.read(SEGMENT_BYTES)
                if not data or writer not in self._live:
                    break
                left = d.depart(time.monotonic(), len(data))
                arrive = max(left + self.config.delay_ms / 1e3 + self._rng.uniform(0, self.config.jitter_ms) / 1e3,
                             last)
                last = arrive
                queue.put_nowait((arrive, data))
        finally:
            queue.put_nowait((0.0, b""))  # end of stream once everything queued is delivered
            await asyncio.gather(sender, return_exceptions=True)
            _abort(peer)

    async def _deliver(self, queue: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        while True:
            arrive, data = await queue.get()
            if not data:
                return
            await _sleep_until(arrive)
            if writer not in self._live:
                return  # reset by an outage: what was in flight is lost
            writer.write(data)
            await writer.drain()


async def _sleep_until(t: float) -> None:
    """Sleep until monotonic ``t`` within ~0.1 ms: epoll rounds timeouts up to whole ms, so the
    last millisecond is spent yielding to the loop instead."""
    wait = t - time.monotonic()
    if wait > SPIN_S:
        await asyncio.sleep(wait - SPIN_S)
    while time.monotonic() < t:
        await asyncio.sleep(0)


def _abort(w: asyncio.StreamWriter) -> None:
    try:
        w.transport.abort()
    except Exception:  # already closed
        pass


def _nodelay(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


# ------------------------------------------------------------------------------ measuring
class _Probe:
    """A loopback TCP server the measurement talks to: b"P" -> echo, b"U"+len+data -> b"A", b"D"+len -> data."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                op = _recv_exact(conn, 1)
                if op == b"P":
                    conn.sendall(b"P")
                elif op == b"U":
                    (n,) = struct.unpack("<Q", _recv_exact(conn, 8))
                    _recv_exact(conn, n)
                    conn.sendall(b"A")
                elif op == b"D":
                    (n,) = struct.unpack("<Q", _recv_exact(conn, 8))
                    conn.sendall(bytes(n))
                else:
                    return
        except (OSError, EOFError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("peer closed")
        buf += chunk
    return bytes(buf)


def _bulk_bytes(mbps: float, seconds: float) -> int:
    if mbps <= 0:
        return 8 << 20
    return int(min(max(mbps * 1e6 / 8 * seconds, 4 << 10), 64 << 20))  # >= 4 KB: a slow link measures in seconds


def measure(config: LinkConfig, *, pings: int = 20, bulk_seconds: float = 0.4) -> dict:
    """Measure an emulator with ``config`` on loopback: RTT percentiles and throughput each way.

    Throughput is payload bits over (transfer time minus the minimum RTT), so the fixed
    delay does not count against the bandwidth.

    Returns:
        ``rtt_ms_p50``, ``rtt_ms_p95``, ``rtt_ms_min``, ``rtt_ms_mean``, ``up_mbps``, ``down_mbps``.
    """
    probe = _Probe()
    cfg = LinkConfig(config.delay_ms, config.jitter_ms, config.up_mbps, config.down_mbps, (), config.seed)
    try:
        with LinkEmulator(("127.0.0.1", probe.port), cfg) as emu:
            with socket.create_connection(("127.0.0.1", emu.port), timeout=30) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                rtts = []
                for _ in range(pings):
                    t0 = time.perf_counter()
                    s.sendall(b"P")
                    _recv_exact(s, 1)
                    rtts.append((time.perf_counter() - t0) * 1e3)
                base = min(rtts) / 1e3
                n_up = _bulk_bytes(config.up_mbps, bulk_seconds)
                t0 = time.perf_counter()
                s.sendall(b"U" + struct.pack("<Q", n_up) + bytes(n_up))
                _recv_exact(s, 1)
                up_s = time.perf_counter() - t0 - base
                n_down = _bulk_bytes(config.down_mbps, bulk_seconds)
                t0 = time.perf_counter()
                s.sendall(b"D" + struct.pack("<Q", n_down))
                _recv_exact(s, n_down)
                down_s = time.perf_counter() - t0 - base
    finally:
        probe.close()
    q = statistics.quantiles(rtts, n=20) if len(rtts) >= 2 else rtts * 19
    return {"rtt_ms_p50": statistics.median(rtts), "rtt_ms_p95": q[18], "rtt_ms_min": min(rtts),
            "rtt_ms_mean": statistics.fmean(rtts),
            "up_mbps": n_up * 8 / max(up_s, 1e-9) / 1e6, "down_mbps": n_down * 8 / max(down_s, 1e-9) / 1e6}


__all__ = ["LinkConfig", "LinkEmulator", "SEGMENT_BYTES", "measure"]
