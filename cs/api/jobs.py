"""Jobs: the admin reads them; the MT posts the result of one on its disks."""

from __future__ import annotations

from aiohttp import web

from common import http
from cs import components, jobs, validate
from cs.state import state_of


async def get_job(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    job_id = validate.hex_id(request.match_info["job_id"], "job_id")
    return web.json_response(await jobs.get(state_of(request), job_id))


async def post_result(request: web.Request) -> web.Response:
    mt = await components.caller(request, "mt")
    job_id = validate.hex_id(request.match_info["job_id"], "job_id")
    outcome = jobs.parse_result(await http.read_json(request, max_bytes=256 * 1024))
    await jobs.post_result(state_of(request), mt.component_id, job_id, outcome)
    return web.json_response({"ok": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    app.router.add_post("/v1/jobs/{job_id}/result", post_result)
