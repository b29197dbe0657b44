"""Bookmarks and replication groups: the admin starts and reads bookmarks, the member agents report;
the sweeper (an owned task for the app's lifetime) aborts bookmarks past their deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from common import errors, http
from common import logging as dlog
from cs import bookmarks, components, validate
from cs.state import STATE, CSState, state_of

log = dlog.get("drlab.cs.api.bookmarks")

LIST_QUERY = ("limit", "state", "group")


def _group_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not bookmarks.GROUP_NAME.match(name):
        raise errors.BadRequest("a group name is 1-64 characters of [A-Za-z0-9_.-], starting alphanumeric")
    return name


async def post_bookmark(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    state = state_of(request)
    req = bookmarks.parse_request(await http.read_json(request, max_bytes=64 * 1024), state.cfg.bookmark_max_timeout_s)
    return web.json_response(await bookmarks.create(state, req), status=202)


async def get_bookmarks(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    q = request.query
    unknown = sorted(set(q) - set(LIST_QUERY))
    if unknown:
        raise errors.BadRequest(f"unknown query parameter {unknown[0][:64]!r}; known: {', '.join(LIST_QUERY)}")
    text = q.get("limit", "100")
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= bookmarks.MAX_PAGE:
        raise errors.BadRequest(f"limit must be an integer in [1, {bookmarks.MAX_PAGE}]")
    state_filter = q.get("state")
    if state_filter is not None and state_filter not in bookmarks.STATES:
        raise errors.BadRequest(f"state must be one of {', '.join(bookmarks.STATES)}")
    group = q.get("group")
    if group is not None and not bookmarks.GROUP_NAME.match(group):
        raise errors.BadRequest("group is not a group name")
    items = await bookmarks.listing(state_of(request), int(text), state_filter, group)
    return web.json_response({"items": items})


async def get_bookmark(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    bookmark_id = validate.hex_id(request.match_info["bookmark_id"], "bookmark_id")
    return web.json_response(await bookmarks.get(state_of(request), bookmark_id))


async def post_report(request: web.Request) -> web.Response:
    machine = await components.caller(request, "agent")
    bookmark_id = validate.hex_id(request.match_info["bookmark_id"], "bookmark_id")
    rep = bookmarks.parse_report(await http.read_json(request, max_bytes=64 * 1024))
    return web.json_response(await bookmarks.report(state_of(request), machine.component_id, bookmark_id, rep))


async def put_group(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    name = _group_name(request)
    machines = bookmarks.parse_group(await http.read_json(request, max_bytes=64 * 1024))
    return web.json_response(await bookmarks.put_group(state_of(request), name, machines))


async def get_groups(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    return web.json_response({"items": await bookmarks.groups(state_of(request))})


async def get_group(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    return web.json_response(await bookmarks.get_group(state_of(request), _group_name(request)))


async def delete_group(request: web.Request) -> web.Response:
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
