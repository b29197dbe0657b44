"""``GET /v1/disks/{disk}/hashes`` on the PS data app (HTTPS 9443, agent certificates): the MT's
block hashes of a replica range, forwarded for the agent, which never talks to the MT itself.

Order of checks: certificate and role (agent) -> the disk is served here and belongs to the
caller's machine (404 / 403) -> query parameters (400) -> generation not older than the disk's
(409 stale_generation) -> forward to the disk's MT with this PS's certificate. The MT's refusals
come back as they are (400, 409, 503 ``not_ready`` with Retry-After); an MT that cannot be reached
or does not know the disk yet (its settings lag) is 503 ``unavailable``; an answer that does not
match the request is 503 too. Nothing is cached: hashes change with every apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from common import errors
from common import logging as dlog
from common.http import query_u64, require_role
from ps.ingest import CONTEXT, parse_disk_id, served_disk
from ps.uploader import Clients

log = dlog.get("drlab.ps.hashproxy")

CLIENTS: web.AppKey[Clients] = web.AppKey("ps_hash_clients", Clients)
PARAMS = ("generation", "offset", "length", "block")
MIN_BLOCK, MAX_BLOCK = 4096, 64 << 20
RETRY_S = 1.0


def install(app: web.Application, clients: Clients | None) -> web.Application:
    """Add the route to the data app (built by ps.ingest.build_app); returns the app."""
    if clients is None:
        raise RuntimeError("the hash proxy needs the PS's MT clients")
    app[CLIENTS] = clients
    app.router.add_get("/v1/disks/{disk_id}/hashes", get_hashes)
    return app


@dataclass(frozen=True)
class Query:
    generation: int
    offset: int
    length: int
    block: int

    def params(self) -> dict[str, int]:
        return {"generation": self.generation, "offset": self.offset, "length": self.length, "block": self.block}


def parse_query(query: Mapping[str, str], size_bytes: int) -> Query:
    if set(query) - set(PARAMS):
        raise errors.BadRequest(f"unknown query parameters; expected {', '.join(PARAMS)}")
    q = Query(*(query_u64(query, name, 0 if name == "offset" else 1) for name in PARAMS))
    if q.block & (q.block - 1) or not MIN_BLOCK <= q.block <= MAX_BLOCK:
        raise errors.BadRequest(f"block must be a power of two in [{MIN_BLOCK}, {MAX_BLOCK}]")
    if q.offset >= size_bytes or q.length > size_bytes - q.offset:
        raise errors.BadRequest(f"range [{q.offset}, +{q.length}) is outside the disk ({size_bytes} bytes)")
    return q


def check_answer(body: Any, q: Query) -> dict[str, Any]:
    """The MT's answer, re-built from checked fields (503 if it does not answer ``q``)."""
    try:
        applied = [int(body["applied"][0]), int(body["applied"][1])]
        offset, length, block = int(body["offset"]), int(body["length"]), int(body["block"])
        hashes = list(body["hashes"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise errors.Unavailable(f"malformed hashes answer from the MT: {type(exc).__name__}") from exc
    whole = length == q.length or length % block == 0
    if (offset, block) != (q.offset, q.block) or not 0 < length <= q.length or not whole:
        raise errors.Unavailable("the MT's hashes answer covers another range")
    if len(hashes) != -(-length // block) or not all(_is_hash(h) for h in hashes):
        raise errors.Unavailable("the MT's hashes answer has malformed hashes")
    return {"generation": q.generation, "applied": applied, "offset": offset, "length": length, "block": block,
            "hashes": hashes}


def _is_hash(h: object) -> bool:
    return isinstance(h, str) and len(h) == 32 and all(c in "0123456789abcdef" for c in h)


async def get_hashes(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    ident = require_role(request, "agent")
    disk_id = parse_disk_id(request.match_info["disk_id"])
    disk = await served_disk(ctx, disk_id, ident)
    q = parse_query(request.query, disk.size_bytes)
    current = ctx.registry.generation(disk_id)
    if q.generation < current:
        raise errors.StaleGeneration(f"generation {q.generation} is older than the disk's generation {current}")
    client = request.app[CLIENTS].get(disk.mt_url)
    try:
        body = await client.get(f"/v1/disks/{disk_id}/hashes", params=q.params(), timeout_s=ctx.cfg.request_timeout_s)
    except (errors.NotFound, errors.Forbidden, errors.Unauthorized, errors.TransportError) as exc:
        raise errors.Unavailable(f"the MT cannot answer for disk {disk_id} now: {exc.message}",
                                 retry_after_s=RETRY_S) from exc
    return web.json_response(check_answer(body, q))
