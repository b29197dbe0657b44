"""Registered components: who is calling, heartbeats and the admin's list.

Heartbeats take a fast path (thousands per second, see bench/cs_heartbeats.py):

- **Who is calling** without the database: :class:`KnownComponents` remembers which component
  ids are registered with which role. Both facts never change once true (ids are never reused
  nor deleted; re-registering keeps the id and the role), so the cache needs no invalidation;
  a revoked or stale certificate is refused before, on every request, by the in-memory serial
  check of the auth middleware (cs/revocation.py).
- **Group commit**: :class:`HeartbeatWriter` queues heartbeats in memory and its flusher task
  (``cs-heartbeat-flusher``) writes all those waiting in one write transaction — one UPDATE
  executed for every row, then ``alerts.observe_many`` over the batch (the health rules' batch
  form of ``alerts.observe``, which :func:`heartbeat` calls for one) — while the next ones
  queue. A request is answered only once its batch committed, so an acknowledged heartbeat is
  durable. When a batch fails, its heartbeats are retried one transaction each, so one bad
  heartbeat fails alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlalchemy.orm.attributes import set_committed_value

from common import errors, http
from common import logging as dlog
from cs import alerts
from cs.db.models import Base, Component
from cs.state import STATE, CSState, state_of

log = dlog.get("drlab.cs.components")

COMPONENT_ROLES = ("ps", "mt", "agent")
MAX_METRICS_BYTES = 256 * 1024
MAX_BATCH = 256  # heartbeats per transaction: bounds how long one batch holds the write lock


async def caller(request: web.Request, *roles: str) -> Component:
    """The calling component's row: its certificate must have one of ``roles`` and be known here."""
    ident = http.require_role(request, *roles)
    async with state_of(request).db.read() as session:
        comp = await session.get(Component, ident.component_id)
    if comp is None or comp.role != ident.role:
        raise errors.Unauthorized(f"component {ident.component_id} is not registered here")
    return comp


def component_view(comp: Component) -> dict[str, Any]:
    return {"component_id": comp.component_id, "role": comp.role, "host_id": comp.host_id,
            "address": comp.address, "ports": comp.ports, "version": comp.version,
            "registered_at": comp.registered_at, "last_heartbeat": comp.last_heartbeat, "metrics": comp.metrics}


def parse_metrics(body: dict[str, Any], body_bytes: int | None = None) -> dict[str, Any]:
    """The metrics of a heartbeat body; ``body_bytes`` (the body's length, when known) spares
    re-encoding bodies too small to hold too much (an encoded character is at most 6 bytes)."""
    metrics = body.get("metrics", {})
    if not isinstance(metrics, dict):
        raise errors.BadRequest("metrics must be an object")
    small = body_bytes is not None and body_bytes * 6 <= MAX_METRICS_BYTES
    if not small and len(json.dumps(metrics)) > MAX_METRICS_BYTES:
        raise errors.TooLarge(f"metrics exceed {MAX_METRICS_BYTES} bytes")
    return metrics


async def heartbeat(state: CSState, component_id: str, metrics: dict[str, Any], now_ns: int | None = None) -> int:
    """One heartbeat in a transaction of its own (the writer's fallback); its time."""
    now = time.time_ns() if now_ns is None else now_ns
    async with state.db.write() as session:
        comp = await session.get(Component, component_id)
        if comp is None:
            raise errors.Unauthorized(f"component {component_id} is not registered here")
        await _record(state, session, comp, metrics, now)
    return now


async def _record(state: CSState, session: AsyncSession, comp: Component, metrics: dict[str, Any],
                  now_ns: int) -> None:
    comp.last_heartbeat, comp.metrics = now_ns, metrics
    await alerts.observe(session, comp, metrics, now_ns, health=state.cfg.health)


class KnownComponents:
    """Which component ids are registered, with their role (see the module docstring)."""

    MAX_ENTRIES = 1_000_000  # a bound on memory, far above any fleet; past it the cache restarts

    def __init__(self) -> None:
        self._roles: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"KnownComponents({len(self._roles)})"

    async def caller(self, request: web.Request, *roles: str) -> str:
        """The calling component's id: its certificate must have one of ``roles`` and be known here."""
        ident = http.require_role(request, *roles)
        role = self._roles.get(ident.component_id)
        if role is None:
            role = (await caller(request, *roles)).role
            if len(self._roles) >= self.MAX_ENTRIES:
                self._roles.clear()
            self._roles[ident.component_id] = role
        if role != ident.role:
            raise errors.Unauthorized(f"component {ident.component_id} is not registered here")
        return ident.component_id

    def forget(self, component_id: str) -> None:
        self._roles.pop(component_id, None)


@dataclass
class _Beat:
    component_id: str
    metrics: dict[str, Any]
    now_ns: int
    done: asyncio.Future[None]


class HeartbeatWriter:
    """Group commit of heartbeats (see the module docstring): :meth:`submit` returns once the
    heartbeat is committed. At most ``max_batch`` heartbeats go in one transaction."""

    def __init__(self, state: CSState, *, max_batch: int = MAX_BATCH) -> None:
        self.state = state
        self.max_batch = max_batch
        self.known = KnownComponents()
        self._queue: list[_Beat] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = self.written = 0

    def __repr__(self) -> str:
        return f"HeartbeatWriter(queued={len(self._queue)}, batches={self.batches}, written={self.written})"

    def start(self) -> None:
        # one flusher: batches commit in the order they were queued (a component's heartbeats too)
        self._task = asyncio.create_task(self._run(), name="cs-heartbeat-flusher")

    async def stop(self) -> None:
        """Write what is queued, then stop the flusher; later heartbeats are refused (503)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def submit(self, component_id: str, metrics: dict[str, Any]) -> int:
        """Queue one heartbeat and wait for its commit; its time (ns)."""
        if self._closing or self._task is None or self._task.done():
            raise errors.Unavailable("the configuration server is stopping", retry_after_s=1.0)
        beat = _Beat(component_id, metrics, time.time_ns(), asyncio.get_running_loop().create_future())
        self._queue.append(beat)
        self._wake.set()
        await beat.done
        return beat.now_ns

    async def _run(self) -> None:
        while self._queue or not self._closing:
            if not self._queue:
                await self._wake.wait()
                self._wake.clear()
                continue
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            try:
                await self._flush(batch)
            except Exception as exc:  # noqa: BLE001 - the batch is retried one by one below
                log.warning("heartbeat_batch_failed", size=len(batch), error=f"{type(exc).__name__}: {exc}")
                await self._one_by_one(batch)

    async def _flush(self, batch: list[_Beat]) -> None:
        """One transaction for ``batch``. Not ``exclusive`` (on PostgreSQL: without the advisory lock
        every exclusive writer of every CS process queues on; SQLite serialises it anyway): it
        updates rows by key, in key order so that two batches cannot deadlock, and the health
        rules' writes are idempotent per key (cs/health/engine.py), so the batches of several CS
        processes may overlap — the heartbeats of a whole fleet do not queue on one lock. (A
        component sends its next heartbeat only once the last one is answered.)"""
        async with self.state.db.write(exclusive=False) as session:
            rows = await _rows_of(session, {b.component_id for b in batch})
            found = [b for b in batch if b.component_id in rows]
            if found:
                await _update_rows(session, found)
                for beat in found:
                    comp = rows[beat.component_id]
                    set_committed_value(comp, "last_heartbeat", beat.now_ns)  # the row has it already
                    set_committed_value(comp, "metrics", beat.metrics)
                await alerts.observe_many(session, [(rows[b.component_id], b.metrics, b.now_ns) for b in found],
                                          health=self.state.cfg.health)
        self.batches += 1
        for beat in batch:
            if beat.component_id in rows:
                self.written += 1
                _settle(beat, None)
            else:
                self.known.forget(beat.component_id)
                _settle(beat, errors.Unauthorized(f"component {beat.component_id} is not registered here"))

    async def _one_by_one(self, batch: list[_Beat]) -> None:
        for beat in batch:
            try:
                await heartbeat(self.state, beat.component_id, beat.metrics, beat.now_ns)
            except Exception as exc:  # noqa: BLE001 - handed to the request that sent it
                _settle(beat, exc)
            else:
                _settle(beat, None)


_COMPONENTS = Base.metadata.tables["components"]
_UPDATE = (update(_COMPONENTS).where(_COMPONENTS.c.component_id == bindparam("b_id"))
           .values(last_heartbeat=bindparam("b_at"), metrics=bindparam("b_metrics")))


async def _rows_of(session: AsyncSession, ids: set[str]) -> dict[str, Component]:
    """The batch's component rows, without their previous metrics (not read: each is replaced by
    its heartbeat's, with ``set_committed_value``, before ``alerts.observe`` sees the row)."""
    stmt = select(Component).where(Component.component_id.in_(ids)).options(defer(Component.metrics))
    return {c.component_id: c for c in (await session.scalars(stmt)).all()}


async def _update_rows(session: AsyncSession, beats: list[_Beat]) -> None:
    """One UPDATE statement executed for every heartbeat (executemany). A Core statement, below the
    ORM: the two columns are volatile for the audit log (cs/audit.py), which records nothing for
    them either way."""
    conn = await session.connection()
    ordered = sorted(beats, key=lambda b: b.component_id)  # stable: a component's last heartbeat last
    await conn.execute(_UPDATE, [{"b_id": b.component_id, "b_at": b.now_ns, "b_metrics": b.metrics}
                                 for b in ordered])


def _settle(beat: _Beat, exc: BaseException | None) -> None:
    if beat.done.done():  # its request went away (client gone): nothing to answer
        return
    if exc is None:
        beat.done.set_result(None)
    else:
        beat.done.set_exception(exc)


HEARTBEATS = web.AppKey("cs_heartbeats", HeartbeatWriter)


def install_writer(app: web.Application) -> None:
    """Run a :class:`HeartbeatWriter` with the app: started on startup, drained on cleanup."""

    async def writer_ctx(app: web.Application) -> AsyncIterator[None]:
        writer = HeartbeatWriter(app[STATE])
        writer.start()
        app[HEARTBEATS] = writer
        yield
        await writer.stop()

    app.cleanup_ctx.append(writer_ctx)
