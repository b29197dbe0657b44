"""Machines: their machine-consistent recovery points and their failover (every protected disk at
one write number W; docs/PROTOCOL.md, "Machine points and failover")."""

from __future__ import annotations

from aiohttp import web

from common import errors, http
from cs import machines, validate
from cs.state import state_of

LIST_QUERY = ("limit",)


async def get_points(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    unknown = sorted(set(request.query) - set(LIST_QUERY))
    if unknown:
        raise errors.BadRequest(f"unknown query parameter {unknown[0][:64]!r}; known: {', '.join(LIST_QUERY)}")
    text = request.query.get("limit", "100")
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= machines.MAX_LIST:
        raise errors.BadRequest(f"limit must be an integer in [1, {machines.MAX_LIST}]")
    return web.json_response(await machines.points(state_of(request), machine_id, int(text)))


async def post_failover(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    point = machines.parse_point(await http.read_json(request))
    return web.json_response({"job_id": await machines.failover(state_of(request), machine_id, point)}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/machines/{machine_id}/points", get_points)
    app.router.add_post("/v1/machines/{machine_id}/failover", post_failover)
