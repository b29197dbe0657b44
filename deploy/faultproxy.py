"""A TCP fault proxy for drills: put it between two daemons (agent -> PS, PS -> MT) and make the
network misbehave on purpose, at run time.

Rules:
- It listens on loopback only (a drill tool, never a relay for the outside world).
- Every accepted connection is forwarded to one target; bytes keep their order in each direction.
- ``latency_s`` (+ up to ``jitter_s``) delays each chunk from the moment it was read; jitter never
  reorders (a chunk is never delivered before the one read before it).
- ``bandwidth_bps`` caps each direction of the whole proxy (all connections share one token bucket
  per direction, like one link); 0: no cap.
- Each new connection draws one *fate* from the schedule (pure, seeded: :func:`plan_fate`): with
  probability ``drop_p`` it is closed (FIN both ways), ``reset_p`` reset (RST: SO_LINGER 0 on both
  sockets), ``half_open_p`` one direction stops being forwarded while both sockets stay open;
  ``after_s`` (uniform in ``[0, fault_window_s]``) after it was accepted. Otherwise it lives on.
- :meth:`FaultProxy.partition` cuts the link: ``blackhole`` stalls every connection, old and new,
  (bytes held, as a network that drops packets until it heals); ``refuse`` resets every open
  connection and every new one as soon as it is accepted. :meth:`FaultProxy.heal` restores the link; blackholed
  connections resume where they stopped.
- Settings change at run time (:meth:`FaultProxy.set`); a connection's fate is drawn when it is
  accepted, and drawn again for every open connection when the settings change (the network
  turns bad for long-lived connections too), from that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass, field, replace
from typing import Any

from common import errors
from common import logging as dlog
from common.config import is_loopback

log = dlog.get("drlab.faultproxy")

CHUNK = 64 * 1024
QUEUE_CHUNKS = 32  # chunks held per direction before the reader stops reading (backpressure)
FATES = ("none", "drop", "reset", "half_open")
DIRECTIONS = ("up", "down")  # up: client -> target; down: target -> client


# -- pure core -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Faults:
    """What the proxy does to the traffic (every probability per connection, in [0, 1])."""

    latency_s: float = 0.0
    jitter_s: float = 0.0
    bandwidth_bps: float = 0.0  # bytes per second per direction; 0: no cap
    drop_p: float = 0.0
    reset_p: float = 0.0
    half_open_p: float = 0.0
    fault_window_s: float = 2.0  # a fated connection meets its fault within this many seconds

    def __post_init__(self) -> None:
        if min(self.latency_s, self.jitter_s, self.bandwidth_bps, self.fault_window_s) < 0:
            raise errors.BadRequest("latency, jitter, bandwidth and the fault window must be >= 0")
        probs = (self.drop_p, self.reset_p, self.half_open_p)
        if min(probs) < 0 or sum(probs) > 1:
            raise errors.BadRequest("drop_p, reset_p and half_open_p must be >= 0 and add up to at most 1")


@dataclass(frozen=True)
class Fate:
    """What happens to one connection: ``kind`` (FATES) ``after_s`` after it was accepted;
    ``direction``: the one that stops for a half-open connection."""

    kind: str = "none"
    after_s: float = 0.0
    direction: str = "up"


def plan_fate(faults: Faults, rng: random.Random) -> Fate:
    """One connection's fate drawn from the schedule (always three draws: replayable by seed)."""
    pick, after, side = rng.random(), rng.uniform(0.0, faults.fault_window_s), rng.choice(DIRECTIONS)
    bounds = (("drop", faults.drop_p), ("reset", faults.reset_p), ("half_open", faults.half_open_p))
    edge = 0.0
    for kind, p in bounds:
        edge += p
        if pick < edge:
            return Fate(kind, after, side)
    return Fate()


def delivery_time(read_at: float, previous: float, faults: Faults, rng: random.Random) -> float:
    """When a chunk read at ``read_at`` may be written: after the latency (and jitter), never
    before the previous chunk of the same direction (``previous``)."""
    jitter = rng.uniform(0.0, faults.jitter_s) if faults.jitter_s else 0.0
    return max(previous, read_at + faults.latency_s + jitter)


@dataclass
class TokenBucket:
    """A bandwidth cap: :meth:`take` returns how long to wait before sending ``n`` bytes at
    ``rate`` bytes/s (0: never). The burst is a tenth of a second's worth (at least one chunk)."""

    rate: float = 0.0
    tokens: float = 0.0
    stamp: float = 0.0

    def take(self, n: int, now: float) -> float:
        if self.rate <= 0:
            return 0.0
        burst = max(float(CHUNK), self.rate / 10)
        self.tokens = min(burst, self.tokens + (now - self.stamp) * self.rate) if self.stamp else burst
        self.stamp = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass
class Stats:
    connections: int = 0
    fates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FATES, 0))  # drawn
    met: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FATES[1:], 0))  # happened
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    refused: int = 0


# -- asyncio shell ---------------------------------------------------------------------------


class FaultProxy:
    """``FaultProxy(listen_host, listen_port, target_host, target_port, faults, seed)``; ``await
    start()``, then ``port`` is the listening port (``listen_port`` 0: any); ``await close()``."""

    def __init__(self, listen_host: str, listen_port: int, target_host: str, target_port: int,
                 faults: Faults | None = None, seed: int = 0) -> None:
        if not is_loopback(listen_host):
            raise errors.BadRequest(f"the fault proxy listens on loopback only, not {listen_host!r}")
        self.listen = (listen_host, listen_port)
        self.target = (target_host, target_port)
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.buckets = {d: TokenBucket() for d in DIRECTIONS}
        self.mode = ""  # "" (link up) | blackhole | refuse
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self.closed = False
        self.port = 0

    def __repr__(self) -> str:
        return f"FaultProxy({self.listen[0]}:{self.port} -> {self.target[0]}:{self.target[1]}, {self.mode or 'up'})"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen[0], self.listen[1], reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("faultproxy_started", listen=f"{self.listen[0]}:{self.port}",
                 target=f"{self.target[0]}:{self.target[1]}")

    async def close(self) -> None:
        self.closed = True
        if self._server is not None:
            self._server.close()
        self._open.set()
        for conn in list(self._conns):
            conn.abort(reset=False)
        if self._server is not None:
            await self._server.wait_closed()
        log.info("faultproxy_closed", listen=f"{self.listen[0]}:{self.port}", faults=self.stats.met)

    def set(self, **changes: Any) -> Faults:
        """Change the faults (keywords of :class:`Faults`; BadRequest for bad values, nothing
        changed); every open connection draws its fate again from the new ones, as new ones will."""
        self.faults = replace(self.faults, **changes)
        for d in DIRECTIONS:
            self.buckets[d].rate = self.faults.bandwidth_bps
        for conn in list(self._conns):
            conn.destine(self._draw())
        log.info("faultproxy_set", listen=f"{self.listen[0]}:{self.port}", faults=str(self.faults))
        return self.faults

    def strike(self, kind: str, direction: str = "up") -> int:
        """Every open connection meets fault ``kind`` (drop, reset, half_open) now; returns how many."""
        if kind not in FATES[1:] or direction not in DIRECTIONS:
            raise errors.BadRequest(f"no fault {kind!r} in direction {direction!r}")
        conns = [c for c in self._conns if c.tasks]
        for conn in conns:
            conn.destine(Fate(kind, 0.0, direction))
        return len(conns)

    def partition(self, mode: str = "blackhole") -> None:
        """Cut the link (module docstring): ``blackhole`` stalls, ``refuse`` resets and refuses."""
        if mode not in ("blackhole", "refuse"):
            raise errors.BadRequest(f"partition mode must be blackhole or refuse, not {mode!r}")
        self.mode = mode
        self._open.clear()
        if mode == "refuse":
            for conn in list(self._conns):
                conn.abort(reset=True)
        log.info("faultproxy_partitioned", listen=f"{self.listen[0]}:{self.port}", mode=mode)

    def heal(self) -> None:
        self.mode = ""
        self._open.set()
        log.info("faultproxy_healed", listen=f"{self.listen[0]}:{self.port}")

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def _draw(self) -> Fate:
        fate = plan_fate(self.faults, self.rng)
        self.stats.fates[fate.kind] += 1
        return fate

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            self.stats.refused += 1
            _reset(writer)
            return
        self.stats.connections += 1
        conn = _Conn(self, reader, writer, self._draw())
        self._conns.add(conn)
        try:
            await conn.run()
        finally:
            self._conns.discard(conn)


class _Conn:
    """One proxied connection: two pumps (up, down) and the timer of its fate."""

    def __init__(self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 fate: Fate) -> None:
        self.proxy, self.fate = proxy, fate
        self.client = (reader, writer)
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.stopped: set[str] = set()  # half-open: the direction no longer forwarded
        self.tasks: list[asyncio.Task[None]] = []
        self.fate_task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        await self.proxy._open.wait()  # a blackhole holds new connections too
        if self.proxy.closed:
            self.client[1].close()
            return
        try:
            self.upstream = await asyncio.open_connection(*self.proxy.target)
        except OSError:
            _reset(self.client[1])  # the target is down: the client sees its connection reset
            return
        self.tasks = [asyncio.create_task(self._pump("up", self.client[0], self.upstream[1])),
                      asyncio.create_task(self._pump("down", self.upstream[0], self.client[1]))]
        self.destine(self.fate)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self.tasks[:2], return_exceptions=True)
        self.abort(reset=False)

    def destine(self, fate: Fate) -> None:
        """Replace the connection's fate (still to come) by ``fate``, from now on."""
        self.fate = fate
        if self.fate_task is not None:
            self.fate_task.cancel()
        self.fate_task = asyncio.create_task(self._meet_fate()) if fate.kind != "none" and self.tasks else None

    async def _meet_fate(self) -> None:
        await asyncio.sleep(self.fate.after_s)
        self.proxy.stats.met[self.fate.kind] += 1
        if self.fate.kind == "half_open":
            self.stopped.add(self.fate.direction)
            log.info("faultproxy_half_open", direction=self.fate.direction)
        else:
            log.info("faultproxy_fault", kind=self.fate.kind)
            self.abort(reset=self.fate.kind == "reset")

    def abort(self, reset: bool) -> None:
        """Close both sockets (``reset``: with RST) and stop the pumps."""
        for writer in (self.client[1], *(self.upstream[1:] if self.upstream else ())):
            if reset:
                _reset(writer)
            else:
                writer.close()
        for task in (*self.tasks, self.fate_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()

    async def _pump(self, direction: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read chunks, hold each until its delivery time, its bandwidth and an open link; EOF is
        passed on as a half-close."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        sender = asyncio.create_task(self._send(direction, queue, writer))
        previous = 0.0
        try:
            while True:
                data = await reader.read(CHUNK)
                previous = delivery_time(time.monotonic(), previous, self.proxy.faults, self.proxy.rng)
                await queue.put((previous, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()

    async def _send(self, direction: str, queue: asyncio.Queue[tuple[float, bytes]],
                    writer: asyncio.StreamWriter) -> None:
        proxy = self.proxy
        while True:
            at, data = await queue.get()
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            await proxy._open.wait()
            if direction in self.stopped:  # half-open: held for ever, the socket stays open
                await asyncio.Event().wait()
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            await asyncio.sleep(proxy.buckets[direction].take(len(data), time.monotonic()))
            await proxy._open.wait()
            writer.write(data)
            await writer.drain()
            proxy.stats.bytes[direction] += len(data)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER on, 0 s (the peer's next read fails with ECONNRESET)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
