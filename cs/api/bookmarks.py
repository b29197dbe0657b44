"""Bookmarks and replication groups: the admin starts and reads bookmarks, the member agents report;
the sweeper (an owned task for the app's lifetime) aborts bookmarks past their deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy import select

from common import errors, http
from common import logging as dlog
from cs import bookmarks, bookmarks_core, components, validate
from cs.api import paging, spec
from cs.db.models import Bookmark, ReplicationGroup
from cs.state import STATE, CSState, state_of

log = dlog.get("drlab.cs.api.bookmarks")

LIST_QUERY = ("limit", "cursor", "state", "group")
BOOKMARK = spec.obj({"bookmark_id": spec.HEX_ID, "tag": spec.STR, "group": spec.nullable(spec.STR),
                     "consistency": {"enum": ["app", "crash"]}, "state": {"enum": list(bookmarks_core.STATES)},
                     "reason": spec.nullable(spec.STR), "members": spec.array(spec.ANY_OBJ)},
                    required=("bookmark_id", "tag", "state", "members"))
GROUP = spec.obj({"name": spec.STR, "machines": spec.array(spec.HEX_ID), "created_ns": spec.INT,
                  "updated_ns": spec.INT})
MACHINES = spec.obj({"machines": spec.array(spec.HEX_ID)})


def _group_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not bookmarks.GROUP_NAME.match(name):
        raise errors.BadRequest("a group name is 1-64 characters of [A-Za-z0-9_.-], starting alphanumeric")
    return name


@spec.route(roles=spec.ADMIN, status=202, response=BOOKMARK, tags=("bookmarks",),
            request=spec.obj({"group": spec.STR, "machines": spec.array(spec.HEX_ID), "name": spec.STR,
                              "consistency": {"enum": ["app", "crash"]}, "timeout_s": spec.NUM}, required=()))
async def post_bookmark(request: web.Request) -> web.Response:
    """Start a multi-machine bookmark (two-phase: freeze every member, tag every disk, thaw)."""
    http.require_role(request, "admin")
    state = state_of(request)
    req = bookmarks.parse_request(await http.read_json(request, max_bytes=64 * 1024), state.cfg.bookmark_max_timeout_s)
    return web.json_response(await bookmarks.create(state, req), status=202)


@spec.route(roles=spec.ADMIN, response=spec.page_of(BOOKMARK), tags=("bookmarks",),
            query={**spec.PAGE_QUERY, "state": {"enum": list(bookmarks_core.STATES)}, "group": spec.STR})
async def get_bookmarks(request: web.Request) -> web.Response:
    """Bookmarks, newest first, a page at a time (filters: ``state``, ``group``)."""
    http.require_role(request, "admin")
    q = request.query
    paging.check_query(q, LIST_QUERY)
    page = paging.parse(q, max_limit=bookmarks.MAX_PAGE)
    state_filter = q.get("state")
    if state_filter is not None and state_filter not in bookmarks_core.STATES:
        raise errors.BadRequest(f"state must be one of {', '.join(bookmarks_core.STATES)}")
    group = q.get("group")
    if group is not None and not bookmarks.GROUP_NAME.match(group):
        raise errors.BadRequest("group is not a group name")
    stmt = select(Bookmark)
    if state_filter is not None:
        stmt = stmt.where(Bookmark.state == state_filter)
    if group is not None:
        stmt = stmt.where(Bookmark.group_name == group)
    async with state_of(request).db.read() as session:
        rows, nxt = await paging.fetch(session, stmt, [Bookmark.created_ns, Bookmark.bookmark_id], page,
                                       descending=True)
    return web.json_response({"items": [bookmarks.view(b) for b in rows], "next": nxt})


@spec.route(roles=spec.ADMIN, response=BOOKMARK, tags=("bookmarks",))
async def get_bookmark(request: web.Request) -> web.Response:
    """One bookmark with its members' states and points."""
    http.require_role(request, "admin")
    bookmark_id = validate.hex_id(request.match_info["bookmark_id"], "bookmark_id")
    return web.json_response(await bookmarks.get(state_of(request), bookmark_id))


@spec.route(roles=("agent",), request=spec.ANY_OBJ, response=spec.obj({"ok": spec.BOOL, "phase": spec.STR},
                                                                        required=("ok",)), tags=("bookmarks",))
async def post_report(request: web.Request) -> web.Response:
    """A member agent reports its phase of a bookmark; answers what it should do now."""
    machine = await components.caller(request, "agent")
    bookmark_id = validate.hex_id(request.match_info["bookmark_id"], "bookmark_id")
    rep = bookmarks.parse_report(await http.read_json(request, max_bytes=64 * 1024))
    return web.json_response(await bookmarks.report(state_of(request), machine.component_id, bookmark_id, rep))


@spec.route(roles=spec.ADMIN, request=MACHINES, response=GROUP, tags=("bookmarks",))
async def put_group(request: web.Request) -> web.Response:
    """Create or replace a replication group (machines whose points must be consistent together)."""
    http.require_role(request, "admin")
    name = _group_name(request)
    machines = bookmarks.parse_group(await http.read_json(request, max_bytes=64 * 1024))
    return web.json_response(await bookmarks.put_group(state_of(request), name, machines))


@spec.route(roles=spec.ADMIN, query=spec.PAGE_QUERY, response=spec.page_of(GROUP), tags=("bookmarks",))
async def get_groups(request: web.Request) -> web.Response:
    """Replication groups by name, a page at a time."""
    http.require_role(request, "admin")
    paging.check_query(request.query, paging.PAGE_PARAMS)
    page = paging.parse(request.query)
    async with state_of(request).db.read() as session:
        rows, nxt = await paging.fetch(session, select(ReplicationGroup), [ReplicationGroup.name], page)
    return web.json_response({"items": [bookmarks.group_view(g) for g in rows], "next": nxt})


@spec.route(roles=spec.ADMIN, response=GROUP, tags=("bookmarks",))
async def get_group(request: web.Request) -> web.Response:
    """One replication group."""
    http.require_role(request, "admin")
    return web.json_response(await bookmarks.get_group(state_of(request), _group_name(request)))


@spec.route(roles=spec.ADMIN, response=spec.OK, tags=("bookmarks",))
async def delete_group(request: web.Request) -> web.Response:
    """Delete a replication group (its bookmarks stay)."""
    http.require_role(request, "admin")
    await bookmarks.delete_group(state_of(request), _group_name(request))
    return web.json_response({"ok": True})


async def _sweep_forever(state: CSState) -> None:
    while True:
        await asyncio.sleep(state.cfg.bookmark_sweep_interval_s)
        try:
            await bookmarks.sweep(state)
        except Exception as exc:  # the database may be busy or gone for a moment: try again next round
            log.error("bookmark_sweep_failed", error=f"{type(exc).__name__}: {exc}")


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_sweep_forever(app[STATE]), name="cs-bookmark-sweeper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/bookmarks", post_bookmark)
    app.router.add_get("/v1/bookmarks", get_bookmarks)
    app.router.add_get("/v1/bookmarks/{bookmark_id}", get_bookmark)
    app.router.add_post("/v1/bookmarks/{bookmark_id}/report", post_report)
    app.router.add_get("/v1/groups", get_groups)
    app.router.add_put("/v1/groups/{name}", put_group)
    app.router.add_get("/v1/groups/{name}", get_group)
    app.router.add_delete("/v1/groups/{name}", delete_group)
    app.cleanup_ctx.append(_sweeper)
