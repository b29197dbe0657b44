"""Disable protection of a machine, exclude one of its disks, include it again: each a job
(cs/release_jobs.py; cs/release.py has the rules). Refusals (404, 409, 400) come at the request
and change nothing; 202 ``{"job_id"}`` means the job is queued (GET /v1/jobs/{id} follows it)."""

from __future__ import annotations

from aiohttp import web

from common import http
from cs import release, release_jobs, validate
from cs.api import spec
from cs.state import state_of

BODY = spec.obj({"keep_points": spec.BOOL}, required=(), extra=False)
JOB = spec.obj({"job_id": spec.HEX_ID})


def _queued(job_id: str) -> web.Response:
    return web.json_response({"job_id": job_id}, status=202)


@spec.route(roles=spec.ADMIN, request=BODY, response=JOB, status=202, tags=("disks",))
async def post_disable(request: web.Request) -> web.Response:
    """Disable protection of a machine (a job): every disk leaves its agent's, PS's and MT's settings.

    ``keep_points`` (default false) keeps the MT's replica, journal and points for a later enable;
    without it the MT deletes them. The job's steps: ``released``, ``MT released``; its result
    lists the released disks (none for an unprotected machine)."""
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    keep = release.parse_body(await http.read_json(request, max_bytes=4096))
    return _queued(await release_jobs.submit_disable(state_of(request), machine_id, keep))


@spec.route(roles=spec.ADMIN, request=BODY, response=JOB, status=202, tags=("disks",))
async def post_exclude(request: web.Request) -> web.Response:
    """Exclude one disk of a protected machine from protection (a job); its other disks keep
    replicating (409 for a disk not protected, or the machine's last protected disk)."""
    http.require_role(request, "admin")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    keep = release.parse_body(await http.read_json(request, max_bytes=4096))
    return _queued(await release_jobs.submit_exclude(state_of(request), disk_id, keep))


@spec.route(roles=spec.ADMIN, response=JOB, status=202, tags=("disks",))
async def post_include(request: web.Request) -> web.Response:
    """Include an excluded disk again (a job): protected at once when its machine is protected (a
    new initial replication), else taken by the machine's next protect (409 for a disk not excluded)."""
    http.require_role(request, "admin")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    return _queued(await release_jobs.submit_include(state_of(request), disk_id))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/machines/{machine_id}/disable-protection", post_disable)
    app.router.add_post("/v1/disks/{disk_id}/exclude", post_exclude)
    app.router.add_post("/v1/disks/{disk_id}/include", post_include)
