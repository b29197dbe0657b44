"""The audit log for the admin (``GET /v1/audit``), and the middleware that names each request's actor."""

from __future__ import annotations

from aiohttp import web

from common import errors, http
from cs import audit, model, validate
from cs.api import paging, spec
from cs.db.models import Disk
from cs.state import state_of

QUERY = ("limit", "cursor", "entity", "entity_id", "actor")
EVENT = spec.obj({"audit_id": spec.INT, "at_ns": spec.INT, "actor": spec.STR, "entity": spec.STR,
                  "entity_id": spec.STR, "action": {"enum": ["create", "update", "delete"]},
                  "changes": spec.ANY_OBJ})
MAX_PAGE = spec.MAX_PAGE
MAX_CURSOR = 2**63 - 1  # an audit id (a signed 64-bit column)


def _int(text: str | None, what: str, default: int | None, high: int) -> int | None:
    """``default`` when absent, else ``text`` as an integer in [1, ``high``] (400 otherwise, a huge
    or malformed number too: :func:`paging.bounded_int`)."""
    return default if text is None else paging.bounded_int(text, what, high)


def _short(text: str | None, what: str) -> str | None:
    if text is not None and (not text or len(text) > 255 or not text.isprintable()):
        raise errors.BadRequest(f"{what} must be 1 to 255 printable characters")
    return text


@spec.route(roles=spec.ADMIN, response=spec.page_of(EVENT), tags=("audit",),
            query={**spec.PAGE_QUERY, "entity": spec.STR, "entity_id": spec.STR, "actor": spec.STR})
async def get_audit(request: web.Request) -> web.Response:
    """The audit log, newest first, a page at a time; filter by ``entity`` (table), ``entity_id``, ``actor``."""
    http.require_role(request, "admin")
    query = request.query
    paging.check_query(query, QUERY)
    limit = _int(query.get("limit"), "limit", spec.DEFAULT_PAGE, MAX_PAGE)
    before = _int(query.get("cursor"), "cursor", None, MAX_CURSOR)
    entity = model.name(query["entity"], "entity") if "entity" in query else None
    assert limit is not None
    async with state_of(request).db.read() as session:
        page = await audit.listing(session, limit=limit, before=before, entity=entity,
                                   entity_id=_short(query.get("entity_id"), "entity_id"),
                                   actor=_short(query.get("actor"), "actor"))
    return web.json_response(page)


@spec.route(roles=spec.ADMIN, query={"limit": spec.PAGE_QUERY["limit"]}, tags=("audit",),
            response=spec.obj({"items": spec.array(spec.ANY_OBJ)}))
async def get_assignments(request: web.Request) -> web.Response:
    """A disk's assignment history (PS and MT), newest first, from the audit log."""
    http.require_role(request, "admin")
    paging.check_query(request.query, ("limit",))
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    limit = _int(request.query.get("limit"), "limit", spec.DEFAULT_PAGE, MAX_PAGE)
    assert limit is not None
    async with state_of(request).db.read() as session:
        if await session.get(Disk, disk_id) is None:
            raise errors.NotFound(f"no disk {disk_id}")
        items = await audit.assignments(session, disk_id, limit)
    return web.json_response({"items": items})


@web.middleware
async def actor_middleware(request: web.Request, handler: http.Handler) -> web.StreamResponse:
    """Changes made while serving a request are the verified caller's (``role:id``) in the audit log."""
    ident = request.get(http.IDENTITY)  # type: ignore[call-overload]
    if ident is None:
        return await handler(request)
    with audit.acting_as(audit.actor_of(ident.role, ident.component_id)):
        return await handler(request)


def add_routes(app: web.Application) -> None:
    app.middlewares.append(actor_middleware)  # after the auth middleware: the identity is known
    app.router.add_get("/v1/audit", get_audit)
    app.router.add_get("/v1/disks/{disk_id}/assignments", get_assignments)
