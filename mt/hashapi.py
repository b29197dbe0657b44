"""``GET /v1/disks/{disk}/hashes`` on the MT's data app (HTTPS 9443, PS certificates): block
hashes of the replica, for checksum resync and online verify (mt/hashes.py has the rules).

Order of checks: certificate and role -> disk held here (404) and served by the caller PS (403)
-> query parameters (400) -> generation not stale (409) -> the MT has applied seq 1 of that
generation (503 ``not_ready``, Retry-After) -> hash.

Why ``not_ready``: once the MT applied a batch of generation G, no batch of an older generation
can be applied any more (mt/apply.py ``next_key`` discards them), so hashes taken from then on
change only through G's own stream, which the agent tracks. Each piece is hashed under the disk
store's lock, i.e. between two applies, never in the middle of one.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from common import errors
from common import logging as dlog
from common.http import require_role
from mt.apply import DiskStore
from mt.hashes import HashQuery, block_hash, parse_query, pieces
from mt.ingest import CONTEXT, check_generation, disk_for, parse_disk_id
from mt.staging import Key

log = dlog.get("drlab.mt.hashapi")

NOT_READY_RETRY_S = 1.0


def install(app: web.Application) -> web.Application:
    """Add the route to the data app (built by mt.ingest.build_data_app); returns the app."""
    app.router.add_get("/v1/disks/{disk_id}/hashes", get_hashes)
    return app


def hash_store(store: DiskStore, q: HashQuery) -> tuple[Key, list[str]]:
    """Hash the pieces of ``q`` (blocking: a worker thread), each between two applies; returns the
    applied (gen, seq) before the first piece (the replica reflects at least that batch)."""
    first: Key | None = None
    out: list[str] = []
    for pos, n in pieces(q.offset, q.length, q.block):
        with store.lock:
            if store.closed:
                raise errors.Unavailable("the disk store is closing")
            if first is None:
                first = store.applied
            out.append(block_hash(store.replica.read(pos, n)))
    assert first is not None
    return first, out


def check_ready(store: DiskStore, generation: int) -> None:
    if store.applied < (generation, 1):
        raise errors.Unavailable(f"generation {generation} has no applied batch yet (applied "
                                 f"{store.applied[0]}/{store.applied[1]})", code="not_ready",
                                 retry_after_s=NOT_READY_RETRY_S)


async def get_hashes(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    ident = require_role(request, "ps")
    disk_id = parse_disk_id(request.match_info["disk_id"])
    disk, worker = disk_for(ctx, disk_id, ident)
    assert disk is not None  # a PS caller only gets here for a disk in the settings
    q = parse_query(request.query, disk.size_bytes, ctx.cfg.hash_max_bytes)
    check_generation(worker, disk, q.generation)
    check_ready(worker.store, q.generation)
    applied, hashes = await asyncio.get_running_loop().run_in_executor(ctx.executor, hash_store, worker.store, q)
    check_generation(worker, disk, q.generation)  # a newer generation started meanwhile: the caller is fenced
    log.debug("hashes_served", disk=disk_id, gen=q.generation, offset=q.offset, length=q.length, block=q.block)
    return web.json_response({"generation": q.generation, "applied": list(applied), "offset": q.offset,
                              "length": q.length, "block": q.block, "hashes": hashes})
