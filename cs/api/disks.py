"""Disks: agents report theirs and their progress; the admin lists, protects, fails over, resyncs and
verifies them (the agent runs a verify and posts its result)."""

from __future__ import annotations

from aiohttp import web

from common import errors, http
from cs import components, disks, jobs, validate, verify
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
    """The agent (its own disk) or the admin (any disk, reason ``user`` by default) asks for a
    resync: a new generation, which the agent's settings then start."""
    ident = http.require_role(request, "agent", "admin")
    machine_id = None if ident.role == "admin" else (await components.caller(request, "agent")).component_id
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    body = await http.read_json(request)
    reason = disks.parse_reason(body, "user" if machine_id is None else "unspecified")
    generation = await disks.resync(state_of(request), machine_id, disk_id, reason)
    return web.json_response({"generation": generation})


async def get_disks(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    return web.json_response({"items": await disks.listing(state_of(request))})


async def get_resyncs(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    text = request.query.get("limit", "100")
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= disks.MAX_HISTORY:
        raise errors.BadRequest(f"limit must be an integer in [1, {disks.MAX_HISTORY}]")
    return web.json_response({"items": await disks.history(state_of(request), disk_id, int(text))})


async def post_verify(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    params = verify.parse_request(await http.read_json(request))
    return web.json_response(await verify.request(state_of(request), disk_id, params), status=202)


async def get_verify(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    verify_id = request.match_info.get("verify_id")
    if verify_id is not None:
        verify_id = validate.hex_id(verify_id, "verify_id")
    return web.json_response(await verify.get(state_of(request), disk_id, verify_id))


async def post_verify_result(request: web.Request) -> web.Response:
    machine = await components.caller(request, "agent")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    verify_id = validate.hex_id(request.match_info["verify_id"], "verify_id")
    body = await http.read_json(request, max_bytes=verify.MAX_RESULT_BYTES)
    await verify.post_result(state_of(request), machine.component_id, disk_id, verify_id, body)
    return web.json_response({"ok": True})


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
    app.router.add_get("/v1/disks/{disk_id}/resyncs", get_resyncs)
    app.router.add_post("/v1/disks/{disk_id}/verify", post_verify)
    app.router.add_get("/v1/disks/{disk_id}/verify", get_verify)
    app.router.add_get("/v1/disks/{disk_id}/verify/{verify_id}", get_verify)
    app.router.add_post("/v1/disks/{disk_id}/verify/{verify_id}", post_verify_result)
    app.router.add_post("/v1/machines/{machine_id}/protect", post_protect)
    app.router.add_post("/v1/disks/{disk_id}/failover", post_failover)
