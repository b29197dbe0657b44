"""Machines: their machine-consistent recovery points and their failover (every protected disk at
one write number W; docs/PROTOCOL.md, "Machine points and failover")."""

from __future__ import annotations

from aiohttp import web

from common import errors, http
from cs import machines, validate
from cs.api import spec
from cs.state import state_of

LIST_QUERY = ("limit",)


@spec.route(roles=spec.ADMIN, tags=("machines",),
            query={"limit": {"type": "integer", "minimum": 1, "maximum": machines.MAX_LIST, "default": 100}},
            response=spec.obj({"machine_id": spec.HEX_ID, "latest_wnum": spec.nullable(spec.INT),
                               "disks": spec.array(spec.ANY_OBJ), "items": spec.array(spec.ANY_OBJ)}))
async def get_points(request: web.Request) -> web.Response:
    """The machine's newest ``limit`` consistent points (every protected disk at one W), oldest first.

    Not a paged list: the points are asked of the MTs at each call (a probe job per disk)."""
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    unknown = sorted(set(request.query) - set(LIST_QUERY))
    if unknown:
        raise errors.BadRequest(f"unknown query parameter {unknown[0][:64]!r}; known: {', '.join(LIST_QUERY)}")
    text = request.query.get("limit", "100")
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= machines.MAX_LIST:
        raise errors.BadRequest(f"limit must be an integer in [1, {machines.MAX_LIST}]")
    return web.json_response(await machines.points(state_of(request), machine_id, int(text)))


@spec.route(roles=spec.ADMIN, request=spec.obj({"point": {"type": ["string", "object"]}}, required=()),
            response=spec.obj({"job_id": spec.HEX_ID}), status=202, tags=("machines",))
async def post_failover(request: web.Request) -> web.Response:
    """Fail every protected disk of the machine over to one machine-consistent point (a job)."""
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    point = machines.parse_point(await http.read_json(request))
    return web.json_response({"job_id": await machines.failover(state_of(request), machine_id, point)}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/machines/{machine_id}/points", get_points)
    app.router.add_post("/v1/machines/{machine_id}/failover", post_failover)
