"""The PS data app (HTTPS 9443): agents PUT change batches; nothing is cached on any error. Admins
scrape `GET /metrics` (ps/prom.py).

Order of checks for a PUT: certificate and role (middleware + agent role) -> the disk is served
here and belongs to the caller's machine (404 / 403) -> not draining (503: it moved to another
PS, whose URL the agent's settings give) -> generation not stale (409) -> body size
(413) -> full batch validation and header == URL (400) -> durable store: 200 for an idempotent
re-send (even while throttled), 409 checksum mismatch, 507 ``throttled`` with Retry-After for a new
batch while the cache or the disk is throttled or the batch does not fit (ps/cache.py,
ps/throttle.py) -> 201.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from common import batchfront, crashpoints, errors, promexport
from common import logging as dlog
from common.config import PSConfig
from common.http import authorize, make_app, require_role
from common.tls import Identity
from common.wire import batch as wbatch
from ps import check, prom
from ps.cache import BatchCache
from ps.state import DiskSettings, Registry

log = dlog.get("drlab.ps.ingest")

U64_MAX = (1 << 64) - 1
BATCH_PATH = "/v1/disks/{disk_id}/batches/{gen}/{seq}"


@dataclass
class IngestContext:
    cfg: PSConfig
    registry: Registry
    cache: BatchCache
    executor: Executor | None
    on_stored: Callable[[str], None]
    refresh_settings: Callable[[], Awaitable[None]] | None = None
    received: dict[str, tuple[int, int]] = field(default_factory=dict)  # disk -> new (batches, bytes) cached

    def count_received(self, disk_id: str, nbytes: int) -> None:
        batches, total = self.received.get(disk_id, (0, 0))
        self.received[disk_id] = (batches + 1, total + nbytes)


CONTEXT: web.AppKey[IngestContext] = web.AppKey("ps_ingest", IngestContext)
METRICS = web.AppKey("ps_metrics", promexport.CollectorRegistry)


def build_app(ctx: IngestContext) -> web.Application:
    app = make_app(revoked=ctx.registry.is_revoked, client_max_size=ctx.cfg.max_batch_bytes)
    app[CONTEXT] = ctx
    check.install(app, ctx.cfg.data_dir / "check")  # GET / (400 for browsers), drlab ps check (ps/check.py)
    app.router.add_put(BATCH_PATH, put_batch)
    app.router.add_get("/v1/disks/{disk_id}/status", get_status)
    app[METRICS] = promexport.new_registry(lambda: prom.families(ctx.registry, ctx.cache, ctx.received))
    app.router.add_get("/metrics", get_metrics)  # Prometheus (ps/prom.py): the admin certificate
    return app


def parse_disk_id(text: str) -> str:
    if len(text) != 32 or text != text.lower():
        raise errors.NotFound(f"no disk {text[:64]!r}")
    try:
        bytes.fromhex(text)
    except ValueError as exc:
        raise errors.NotFound(f"no disk {text[:64]!r}") from exc
    return text


def parse_u64(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= U64_MAX:
        raise errors.BadRequest(f"{what} must be an integer in [1, 2^64)")
    return int(text)


async def served_disk(ctx: IngestContext, disk_id: str, ident: Identity) -> DiskSettings:
    """The disk's settings if it is served here and the caller may use it. An unknown disk may
    be one the CS just assigned: the settings are fetched once more (rate-limited) before 404."""
    disk = ctx.registry.disks.get(disk_id)
    if disk is None and ctx.refresh_settings is not None:
        await ctx.refresh_settings()
        disk = ctx.registry.disks.get(disk_id)
    if disk is None:
        raise errors.NotFound(f"disk {disk_id} is not served by this process server")
    if ident.role != "admin" and disk.machine_id != ident.component_id:
        raise errors.Forbidden(f"disk {disk_id} is not assigned to the caller")
    return disk


def validate(body: bytes | bytearray, disk: DiskSettings, gen: int, seq: int, max_bytes: int) -> None:
    """Full check of the batch and of its identity against the URL (CPU: worker thread)."""
    batch = wbatch.decode(body, disk_size=disk.size_bytes, max_bytes=max_bytes)
    if (batch.disk_id, batch.generation, batch.seq) != (disk.disk_id_bytes, gen, seq):
        raise errors.MalformedBatch("batch header (disk, generation, seq) differs from the URL")


def ack(ctx: IngestContext, disk_id: str, gen: int, seq: int) -> dict[str, int]:
    received, applied = ctx.registry.progress_of(disk_id).mt_of(gen)
    return {"ps_durable": seq, "mt_received": received, "mt_applied": applied}


async def admit_batch(ctx: IngestContext, ident: Identity | None, disk_text: str, gen_text: str, seq_text: str,
                      length: int | None) -> tuple[DiskSettings, str, int, int]:
    """Every check of a batch PUT that does not need its body, in the order of the module
    docstring (``ident``: the verified, unrevoked caller or None; ``length``: the body's announced
    length). Returns (disk, disk id, generation, seq); raises the refusal."""
    ident = authorize(ident, ("agent",), "PUT", BATCH_PATH)
    disk_id = parse_disk_id(disk_text)
    gen = parse_u64(gen_text, "generation")
    seq = parse_u64(seq_text, "seq")
    disk = await served_disk(ctx, disk_id, ident)
    if disk.draining:  # moved to another PS: the agent's settings name it (retriable until it follows)
        raise errors.Unavailable(f"disk {disk_id} moved to another process server; this one only drains it")
    current = ctx.registry.generation(disk_id)
    if gen < current:
        raise errors.StaleGeneration(f"generation {gen} is older than the disk's generation {current}")
    if length is not None and length > ctx.cfg.max_batch_bytes:
        raise errors.TooLarge(f"body of {length} bytes exceeds {ctx.cfg.max_batch_bytes}")
    return disk, disk_id, gen, seq


async def ingest_batch(ctx: IngestContext, ident: Identity | None, disk_text: str, gen_text: str, seq_text: str,
                       body: bytes | bytearray) -> tuple[int, dict[str, int]]:
    """A batch PUT once its body is here, whatever carried it (this app, common/tlsfront.py via
    ps/front.py): the checks of :func:`admit_batch` again (the generation may have moved while
    the body arrived), full validation, durable store. Returns (201 | 200, ack); raises refusals."""
    disk, disk_id, gen, seq = await admit_batch(ctx, ident, disk_text, gen_text, seq_text, len(body))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(ctx.executor, validate, body, disk, gen, seq, ctx.cfg.max_batch_bytes)
    created = await ctx.cache.store(disk_id, gen, seq, body)  # type: ignore[arg-type]  # bytes-like
    if created:
        crashpoints.hit("ps", "after_cache_write")  # durable here, the agent has no ack yet
    ctx.registry.progress_of(disk_id).stored(gen, seq)
    if created:
        log.debug("batch_cached", disk=disk_id, gen=gen, seq=seq, bytes=len(body))
        ctx.count_received(disk_id, len(body))
        ctx.on_stored(disk_id)
    return (201 if created else 200), ack(ctx, disk_id, gen, seq)


async def put_batch(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    route = batchfront.route_of(ctx, admit_batch, ingest_batch, "process server")
    return await batchfront.serve_put(request, route, "agent", ctx.cfg.max_batch_bytes)


def status_of(ctx: IngestContext, disk_id: str) -> dict[str, Any]:
    progress = ctx.registry.progress_of(disk_id)
    gen = ctx.registry.generation(disk_id)
    received, applied = progress.mt_of(gen)
    batches, nbytes = ctx.cache.backlog(disk_id)
    held_from = next((e.seq for e in ctx.cache.pending(disk_id) if e.gen == gen), 0)
    throttle = ctx.cache.throttle
    disk_state = throttle.disks.get(disk_id)
    reason = throttle.cache.reason if throttle.cache.active else (
        disk_state.reason if disk_state is not None and disk_state.active else "")
    return {"generation": gen, "ps_durable": progress.ps_durable if progress.ps_gen == gen else 0,
            "mt_received": received, "mt_applied": applied, "backlog_batches": batches,
            "backlog_bytes": nbytes, "held_from": held_from, "throttled": bool(reason),
            "throttle_reason": reason}


async def get_status(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    ident = require_role(request, "agent", "admin")
    disk_id = parse_disk_id(request.match_info["disk_id"])
    await served_disk(ctx, disk_id, ident)
    return web.json_response(status_of(ctx, disk_id))


async def get_metrics(request: web.Request) -> web.Response:
    """The PS's series in the Prometheus text format (ps/prom.py); admin certificate only."""
    require_role(request, "admin")
    return promexport.response(promexport.render(request.app[METRICS]))
