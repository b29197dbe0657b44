"""Jobs: the admin lists and reads them (steps, percent, times); the MT posts the result of one on its disks."""

from __future__ import annotations

import re

from aiohttp import web

from common import errors, http
from cs import components, jobs, plan_jobs, validate
from cs.api import paging, spec
from cs.state import state_of

QUERY = ("state", "kind", "target_id", "limit", "before", "cursor")
JOB_STATES = ("queued", "running", "succeeded", "failed")
MAX_PAGE = 1000
KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")


def _limit(text: str | None) -> int:
    if text is None:
        return 100
    return paging.bounded_int(text, "limit", MAX_PAGE)


@spec.route(roles=spec.ADMIN, response=spec.page_of(spec.ANY_OBJ), tags=("jobs",),
            query={**spec.PAGE_QUERY, "state": {"enum": list(JOB_STATES)}, "kind": spec.STR, "target_id": spec.HEX_ID,
                   "before": {"type": "string", "description": "the same as cursor (older name)"}})
async def list_jobs(request: web.Request) -> web.Response:
    """List jobs, newest first, with their steps and percent.

    Query: ``state`` (queued|running|succeeded|failed), ``kind``, ``target_id`` (the disk or machine),
    ``limit`` (1..1000, default 100), ``before`` (the ``next`` cursor of the previous page).
    Answer: ``{items: [job], next: cursor | null}``.
    """
    http.require_role(request, "admin")
    query = request.query
    unknown = sorted(set(query) - set(QUERY))
    if unknown:
        raise errors.BadRequest(f"unknown query parameter {unknown[0][:64]!r}; known: {', '.join(QUERY)}")
    job_state = validate.choice(dict(query), "state", JOB_STATES) if "state" in query else None
    kind = validate.string(dict(query), "kind", max_len=32, pattern=KIND) if "kind" in query else None
    target = validate.hex_id(query["target_id"], "target_id") if "target_id" in query else None
    cursor = jobs.parse_cursor(query.get("cursor", query.get("before")))
    page = await jobs.listing(state_of(request), job_state=job_state, kind=kind, target_id=target,
                              limit=_limit(query.get("limit")), before=cursor)
    return web.json_response(page)


@spec.route(roles=spec.ADMIN, response=spec.ANY_OBJ, tags=("jobs",))
async def get_job(request: web.Request) -> web.Response:
    """One job: kind, target, state, params, result or error, steps, percent and times."""
    http.require_role(request, "admin")
    job_id = validate.hex_id(request.match_info["job_id"], "job_id")
    return web.json_response(await jobs.get(state_of(request), job_id))


@spec.route(roles=("mt",), request=spec.obj({"state": {"enum": ["succeeded", "failed"]}, "result": spec.ANY_OBJ,
                                               "error": spec.STR}, required=("state",)),
            response=spec.OK, tags=("jobs",))
async def post_result(request: web.Request) -> web.Response:
    """The MT posts the final state (and result or error) of a job on one of its disks."""
    mt = await components.caller(request, "mt")
    job_id = validate.hex_id(request.match_info["job_id"], "job_id")
    outcome = jobs.parse_result(await http.read_json(request, max_bytes=256 * 1024))
    await jobs.post_result(state_of(request), mt.component_id, job_id, outcome)
    return web.json_response({"ok": True})


@spec.route(roles=spec.ADMIN, request=spec.obj({}, required=()),
            response=spec.obj({"job_id": spec.HEX_ID, "resumed": spec.STR}), tags=("jobs",))
async def post_resume(request: web.Request) -> web.Response:
    """Resume a recovery plan job paused at a manual step (its step ``waiting: INSTRUCTION``);
    409 unless the job is waiting for one."""
    http.require_role(request, "admin")
    job_id = validate.hex_id(request.match_info["job_id"], "job_id")
    if await http.read_json(request):
        raise errors.BadRequest("resume takes no parameters")
    return web.json_response(await plan_jobs.resume(state_of(request), job_id))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    app.router.add_post("/v1/jobs/{job_id}/result", post_result)
    app.router.add_post("/v1/jobs/{job_id}/resume", post_resume)
