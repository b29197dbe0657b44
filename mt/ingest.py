"""The MT's two apps: data (HTTPS 9443, PS certificates: sealed batches in) and control
(HTTPS 9080: status for the PS and admins, recovery points and `/metrics` for admins).

Order of checks for a PUT: certificate and role -> settings loaded (503 just after a restart)
-> disk held here (404) and served by the caller PS, or by a PS still draining it after a PS
switch (403) -> generation not stale (409)
-> body size (413) -> open the seal (400 tampered / malformed), seal header == URL, full batch
check with the disk size (400) -> durable staging (409 checksum mismatch) -> 201 (200 for an
identical re-send). Nothing is staged on any error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from common import batchfront, errors, promexport
from common import logging as dlog
from common.config import MTConfig
from common.http import authorize, make_app, require_role
from common.tls import Identity
from common.wire import batch as wbatch
from common.wire import seal
from mt import prom
from mt.settings import DiskSettings, Registry
from mt.worker import DiskWorker

log = dlog.get("drlab.mt.ingest")

U64_MAX = (1 << 64) - 1
BATCH_PATH = "/v1/disks/{disk_id}/batches/{gen}/{seq}"


@dataclass
class IngestContext:
    cfg: MTConfig
    registry: Registry
    workers: dict[str, DiskWorker]
    executor: Executor | None


CONTEXT: web.AppKey[IngestContext] = web.AppKey("mt_ingest", IngestContext)


def build_data_app(ctx: IngestContext) -> web.Application:
    app = make_app(revoked=ctx.registry.is_revoked, client_max_size=sealed_limit(ctx.cfg.max_batch_bytes))
    app[CONTEXT] = ctx
    app.router.add_put(BATCH_PATH, put_batch)
    return app


def build_control_app(ctx: IngestContext) -> web.Application:
    app = make_app(revoked=ctx.registry.is_revoked)
    app[CONTEXT] = ctx
    app.router.add_get("/v1/disks/{disk_id}/status", get_status)
    app.router.add_get("/v1/disks/{disk_id}/points", get_points)
    app.router.add_get("/metrics", get_metrics)  # Prometheus (mt/prom.py): the admin certificate
    return app


def sealed_limit(max_plain: int) -> int:
    """Largest sealed body a ``max_plain``-byte batch can make (lz4 worst case + header + tag)."""
    return max_plain + max_plain // 128 + 1024 + seal.HEADER_SIZE + seal.TAG_SIZE


def parse_disk_id(text: str) -> str:
    if len(text) != 32 or text != text.lower() or not all(c in "0123456789abcdef" for c in text):
        raise errors.NotFound(f"no disk {text[:64]!r}")
    return text


def parse_u64(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= U64_MAX:
        raise errors.BadRequest(f"{what} must be an integer in [1, 2^64)")
    return int(text)


def disk_for(ctx: IngestContext, disk_id: str, ident: Identity) -> tuple[DiskSettings | None, DiskWorker]:
    """The disk's settings and worker if it is held here and the caller may use it. Until the
    first settings document is applied (just after a restart) a PS gets 503 (retriable), never
    404: the MT cannot yet tell whether it holds the disk."""
    disk = ctx.registry.disks.get(disk_id)
    worker = ctx.workers.get(disk_id)
    if not ctx.registry.loaded and ident.role != "admin" and (worker is None or disk is None):
        raise errors.Unavailable("this master target has not loaded its settings yet")
    if worker is None or (disk is None and ident.role != "admin"):
        raise errors.NotFound(f"disk {disk_id} is not held by this master target")
    if ident.role == "ps" and (disk is None or not disk.sent_by(ident.component_id)):
        raise errors.Forbidden(f"disk {disk_id} is not served by the calling process server")
    return disk, worker


def open_batch(body: bytes | bytearray, disk: DiskSettings, key_for: Callable[[int], bytes], gen: int, seq: int,
               max_bytes: int) -> tuple[bytes, wbatch.ChangeBatch]:
    """Open the seal and fully check the change batch inside (CPU: worker thread): the batch's
    bytes and the batch decoded."""
    hdr, plain = seal.open_sealed(body, key_for, max_plain=max_bytes)
    if (hdr.disk_id.hex(), hdr.generation, hdr.seq) != (disk.disk_id, gen, seq):
        raise errors.MalformedBatch("sealed batch (disk, generation, seq) differs from the URL")
    return plain, wbatch.decode(plain, disk_size=disk.size_bytes, max_bytes=max_bytes)


def check_generation(worker: DiskWorker, disk: DiskSettings, gen: int) -> None:
    current = worker.store.current_generation(disk.generation)
    if gen < current:
        raise errors.StaleGeneration(f"generation {gen} is older than the disk's generation {current}")


async def admit_batch(ctx: IngestContext, ident: Identity | None, disk_text: str, gen_text: str, seq_text: str,
                      length: int | None) -> tuple[DiskSettings, DiskWorker, int, int]:
    """Every check of a batch PUT that does not need its body, in the order of the module
    docstring (``ident``: the verified, unrevoked caller or None; ``length``: the body's announced
    length). Returns (disk, worker, generation, seq); raises the refusal."""
    ident = authorize(ident, ("ps",), "PUT", BATCH_PATH)
    disk_id = parse_disk_id(disk_text)
    gen = parse_u64(gen_text, "generation")
    seq = parse_u64(seq_text, "seq")
    disk, worker = disk_for(ctx, disk_id, ident)
    assert disk is not None  # a PS caller only gets here for a disk in the settings
    check_generation(worker, disk, gen)
    limit = sealed_limit(ctx.cfg.max_batch_bytes)
    if length is not None and length > limit:
        raise errors.TooLarge(f"body of {length} bytes exceeds {limit}")
    return disk, worker, gen, seq


async def ingest_batch(ctx: IngestContext, ident: Identity | None, disk_text: str, gen_text: str, seq_text: str,
                       body: bytes | bytearray) -> tuple[int, dict[str, int]]:
    """A batch PUT once its body is here, whatever carried it (this app, or the threaded TLS front
    via mt/front.py): the checks of :func:`admit_batch` again (the generation may have moved while
    the body arrived), the seal opened and the batch checked, durable staging. Returns (201 | 200,
    progress); raises refusals."""
    disk, worker, gen, seq = await admit_batch(ctx, ident, disk_text, gen_text, seq_text, len(body))
    loop = asyncio.get_running_loop()
    disk_id = disk.disk_id
    plain, batch = await loop.run_in_executor(ctx.executor, open_batch, body, disk,
                                       lambda epoch: ctx.registry.key_for(disk_id, epoch), gen, seq,
                                       ctx.cfg.max_batch_bytes)
    check_generation(worker, disk, gen)
    created = await loop.run_in_executor(ctx.executor, worker.store.receive, gen, seq, plain, batch)
    if created:
        worker.wake()
        log.debug("batch_staged", disk=disk_id, gen=gen, seq=seq, bytes=len(plain))
    received, applied = worker.store.progress(gen)
    return (201 if created else 200), {"mt_received": received, "mt_applied": applied}


async def put_batch(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    route = batchfront.route_of(ctx, admit_batch, ingest_batch, "master target")
    return await batchfront.serve_put(request, route, "ps", sealed_limit(ctx.cfg.max_batch_bytes))


def status_of(worker: DiskWorker, disk: DiskSettings | None) -> dict[str, Any]:
    store = worker.store
    gen = store.current_generation(disk.generation if disk else 0)
    received, applied = store.progress(gen)
    return {"generation": gen, "mt_received": received, "mt_applied": applied, "applied_gen": store.applied[0]}


async def get_status(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    ident = require_role(request, "ps", "admin")
    disk, worker = disk_for(ctx, parse_disk_id(request.match_info["disk_id"]), ident)
    return web.json_response(status_of(worker, disk))


async def get_points(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    ident = require_role(request, "admin")
    disk_id = parse_disk_id(request.match_info["disk_id"])
    _, worker = disk_for(ctx, disk_id, ident)
    text = request.query.get("limit", "1000")
    if not text.isdigit() or int(text) < 1:
        raise errors.BadRequest("limit must be a positive integer")
    limit = min(int(text), 1 << 62)
    tag = request.query.get("tag")  # only the points carrying this tag (bookmarks)
    if tag is not None and not 1 <= len(tag.encode()) <= wbatch.MAX_TAG_LEN:
        raise errors.BadRequest(f"tag must be 1 to {wbatch.MAX_TAG_LEN} bytes")
    items = await asyncio.get_running_loop().run_in_executor(ctx.executor, worker.store.catalog.listing,
                                                             disk_id, limit, tag)
    return web.json_response({"items": items})


async def get_metrics(request: web.Request) -> web.Response:
    """The MT's series in the Prometheus text format (mt/prom.py); admin certificate only. Collected
    in a worker thread (the catalog is read) from the disks held at the moment of the request."""
    ctx = request.app[CONTEXT]
    require_role(request, "admin")
    workers = dict(ctx.workers)  # on the loop: settings may add or release disks meanwhile
    registry = promexport.new_registry(lambda: prom.families(workers, ctx.registry))  # this scrape's own
    body = await asyncio.get_running_loop().run_in_executor(ctx.executor, promexport.render, registry)
    return promexport.response(body)
