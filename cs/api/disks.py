"""Disks: agents report theirs and their progress; the admin lists, protects and fails over."""

from __future__ import annotations

from aiohttp import web

from common import http
from cs import components, disks, jobs, validate
from cs.db import repo
from cs.state import state_of


async def put_my_disks(request: web.Request) -> web.Response:
    machine = await components.caller(request, "agent")
    reported = disks.parse_reported(await http.read_json(request))
    return web.json_response({"disks": await disks.report(state_of(request), machine.component_id, reported)})


async def post_progress(request: web.Request) -> web.Response:
    machine = await components.caller(request, "agent")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    values = disks.parse_progress(await http.read_json(request))
    await disks.progress(state_of(request), machine.component_id, disk_id, values)
    return web.json_response({"ok": True})


async def post_resync(request: web.Request) -> web.Response:
    machine = await components.caller(request, "agent")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    body = await http.read_json(request)
    reason = validate.string(body, "reason", max_len=64) if "reason" in body else "unspecified"
    generation = await disks.resync(state_of(request), machine.component_id, disk_id, reason)
    return web.json_response({"generation": generation})


async def get_disks(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    async with state_of(request).db.read() as session:
        items = [disks.disk_view(d) for d in await repo.disks(session)]
    return web.json_response({"items": items})


async def post_protect(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    return web.json_response({"disks": await disks.protect(state_of(request), machine_id)})


async def post_failover(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    point = jobs.parse_point(await http.read_json(request))
    return web.json_response({"job_id": await jobs.failover(state_of(request), disk_id, point)}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_put("/v1/machines/self/disks", put_my_disks)
    app.router.add_post("/v1/disks/{disk_id}/progress", post_progress)
    app.router.add_post("/v1/disks/{disk_id}/resync", post_resync)
    app.router.add_get("/v1/disks", get_disks)
    app.router.add_post("/v1/machines/{machine_id}/protect", post_protect)
    app.router.add_post("/v1/disks/{disk_id}/failover", post_failover)
