"""The load generator: a closed loop of requests over many keep-alive mutual-TLS connections.

Every simulated component has its own connection (its own certificate), opened before the
measurement and kept alive across phases. ``concurrency`` workers take an idle component, send
one request on its connection, wait for the whole reply and put the component back, so at most
``concurrency`` requests are in flight and every component gets its turn. The client speaks
plain HTTP/1.1 over asyncio streams (pre-built request bytes) to spend as little CPU as
possible on its own side. Pure helpers: :func:`percentile`, :func:`summarise`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

CONNECT_CONCURRENCY = 32
MAX_HEADER_BYTES = 16 * 1024


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending list; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarise(latencies_s: list[float], errors: int, elapsed_s: float) -> dict[str, Any]:
    """Rate and latency figures (milliseconds) of one phase."""
    ordered = sorted(latencies_s)
    ms = [round(1000.0 * percentile(ordered, q), 3) for q in (50, 90, 99)]
    return {"requests": len(ordered), "errors": errors, "elapsed_s": round(elapsed_s, 3),
            "rate_per_s": round(len(ordered) / elapsed_s, 1) if elapsed_s > 0 else 0.0,
            "p50_ms": ms[0], "p90_ms": ms[1], "p99_ms": ms[2],
            "max_ms": round(1000.0 * ordered[-1], 3) if ordered else 0.0}


def build_request(method: str, path: str, host: str, body: dict[str, Any] | None) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return head.encode() + b"\r\n" + payload


COUNTER = b"@@@@@@@@@@"  # in a request template: replaced by a 10-digit request counter


class Template:
    """A request's bytes, with :data:`COUNTER` (if present) replaced by a fresh number each time, so
    that every heartbeat carries different metrics, as real ones do."""

    def __init__(self, request: bytes) -> None:
        self.parts = request.split(COUNTER, 1)
        self.sent = 0

    def render(self) -> bytes:
        self.sent += 1
        if len(self.parts) == 1:
            return self.parts[0]
        return b"%s%010d%s" % (self.parts[0], self.sent % 10**10, self.parts[1])


class BadReply(Exception):
    pass


@dataclass
class Connection:
    """One component's keep-alive connection."""

    host: str
    port: int
    ctx: ssl.SSLContext
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, ssl=self.ctx,
                                                                 server_hostname=self.host)

    async def call(self, request: bytes) -> int:
        """Send one request, read the whole reply; its status."""
        if self.writer is None or self.reader is None:
            await self.open()
        assert self.writer is not None and self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEADER_BYTES:
            raise BadReply("reply header too large")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = next((int(v) for k, _, v in (ln.partition(b":") for ln in lines[1:])
                       if k.strip().lower() == b"content-length"), None)
        if length is None:
            raise BadReply("reply without Content-Length")
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
            self.writer = self.reader = None


@dataclass
class Phase:
    """One measured phase: each connection's request bytes, how long, how many in flight."""

    name: str
    requests: list[Template]
    duration_s: float
    warmup_s: float
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0


async def open_all(conns: list[Connection]) -> None:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(c: Connection) -> None:
        async with gate:
            await c.open()

    await asyncio.gather(*(one(c) for c in conns))


async def run_phase(conns: list[Connection], phase: Phase) -> dict[str, Any]:
    """Drive ``phase`` over ``conns`` (index-aligned with ``phase.requests``); its summary."""
    idle = collections.deque(range(len(conns)))
    start = time.perf_counter()
    measure_from = start + phase.warmup_s
    stop_at = measure_from + phase.duration_s

    async def worker() -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            if not idle:
                await asyncio.sleep(0.001)  # more workers than connections
                continue
            i = idle.popleft()
            try:
                ok = await conns[i].call(phase.requests[i].render()) == 200
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, BadReply, ValueError):
                ok = False
                await conns[i].close()  # reopened on its next turn
            t1 = time.perf_counter()
            idle.append(i)
            if t0 >= measure_from and t1 <= stop_at:
                if ok:
                    phase.latencies.append(t1 - t0)
                else:
                    phase.errors += 1

    await asyncio.gather(*(asyncio.create_task(worker(), name=f"bench-worker-{w}")
                           for w in range(phase.concurrency)))
    return summarise(phase.latencies, phase.errors, phase.duration_s)
