"""Recovery plans for the admin: ``/v1/plans`` (CRUD) and running them (``plan-failover``,
``plan-cleanup`` and ``plan-commit`` jobs, cs/plan_jobs.py)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from common import http
from cs import model, plan_jobs, plans
from cs.api import paging, spec
from cs.db.models import RecoveryPlan
from cs.state import state_of

ACTION = {"oneOf": [
    spec.obj({"kind": {"const": "script"}, "name": spec.STR, "script": spec.STR, "timeout_s": spec.INT},
             required=("kind", "name", "script"), extra=False),
    spec.obj({"kind": {"const": "manual"}, "name": spec.STR, "instruction": spec.STR}, extra=False)]}
GROUP = spec.obj({"machines": spec.array(spec.HEX_ID), "pre": spec.array(ACTION), "post": spec.array(ACTION)},
                 required=("machines",), extra=False)
PLAN = spec.obj({"name": spec.STR, "description": spec.STR, "groups": spec.array(GROUP), "machines": spec.INT,
                 "created_ns": spec.INT, "updated_ns": spec.INT})
NEW_PLAN = spec.obj({"name": spec.STR, "description": spec.STR, "groups": spec.array(GROUP)},
                    required=("name", "groups"), extra=False)
CHANGE_PLAN = spec.obj({"description": spec.STR, "groups": spec.array(GROUP)}, required=(), extra=False)
MAX_BODY = 1024 * 1024


def _name(request: web.Request) -> str:
    return model.name(request.match_info["name"], "plan")


@spec.route(roles=spec.ADMIN, query=spec.PAGE_QUERY, response=spec.page_of(PLAN), tags=("plans",))
async def get_plans(request: web.Request) -> web.Response:
    """Recovery plans by name, a page at a time."""
    async def view(_: AsyncSession, p: RecoveryPlan) -> dict[str, Any]:
        return plans.view(p)

    return await paging.named_page(request, RecoveryPlan, view)


@spec.route(roles=spec.ADMIN, request=NEW_PLAN, response=PLAN, status=201, tags=("plans",))
async def post_plan(request: web.Request) -> web.Response:
    """Create a recovery plan: ordered groups of machines with pre/post actions (scripts or manual steps)."""
    http.require_role(request, "admin")
    fields = plans.parse(await http.read_json(request, max_bytes=MAX_BODY), create=True)
    async with state_of(request).db.write() as session:
        plan = await plans.create(session, fields)
    return web.json_response(plans.view(plan), status=201)


@spec.route(roles=spec.ADMIN, response=PLAN, tags=("plans",))
async def get_plan(request: web.Request) -> web.Response:
    """One recovery plan."""
    http.require_role(request, "admin")
    async with state_of(request).db.read() as session:
        plan = await model.get_or_404(session, RecoveryPlan, _name(request), "recovery plan")
    return web.json_response(plans.view(plan))


@spec.route(roles=spec.ADMIN, request=CHANGE_PLAN, response=PLAN, tags=("plans",))
async def patch_plan(request: web.Request) -> web.Response:
    """Change a plan's description or replace its groups."""
    http.require_role(request, "admin")
    name = _name(request)
    fields = plans.parse(await http.read_json(request, max_bytes=MAX_BODY), create=False)
    async with state_of(request).db.write() as session:
        plan = await plans.update(session, name, fields)
    return web.json_response(plans.view(plan))


@spec.route(roles=spec.ADMIN, response=spec.OK, tags=("plans",))
async def delete_plan(request: web.Request) -> web.Response:
    """Delete a recovery plan."""
    http.require_role(request, "admin")
    async with state_of(request).db.write() as session:
        await plans.delete(session, _name(request))
    return web.json_response({"ok": True})


JOB = spec.obj({"job_id": spec.HEX_ID})


@spec.route(roles=spec.ADMIN, request=spec.obj({"mode": {"enum": list(plan_jobs.FAILOVER_MODES)},
                                               "point": {"type": ["string", "object"]}, "image": spec.BOOL},
                                  required=("mode",)),
            response=JOB, status=202, tags=("plans",))
async def post_plan_failover(request: web.Request) -> web.Response:
    """Fail a plan over (a ``plan-failover`` job): groups in order, each group's machines in parallel
    (test or unplanned failover to ``point``, or planned failover: each source stops and drains, no
    point; ``"image": true``: with every disk's image file), pre/post actions; a manual action pauses
    the job until POST /v1/jobs/{id}/resume. 409 while a job of the plan runs or a machine is not ready."""
    http.require_role(request, "admin")
    name = _name(request)
    mode, point, image = plan_jobs.parse_request(await http.read_json(request))
    return web.json_response({"job_id": await plan_jobs.request(state_of(request), name, mode, point, image)},
                             status=202)


@spec.route(roles=spec.ADMIN, request=spec.obj({}, required=()), response=JOB, status=202, tags=("plans",))
async def post_plan_cleanup(request: web.Request) -> web.Response:
    """Clean up a plan's test failover (a ``plan-cleanup`` job): every machine of the plan that has a
    test failover, group by group."""
    http.require_role(request, "admin")
    name = _name(request)
    model.body_keys(await http.read_json(request), allowed=())
    return web.json_response({"job_id": await plan_jobs.request(state_of(request), name, "cleanup")}, status=202)


@spec.route(roles=spec.ADMIN, request=spec.obj({}, required=()), response=JOB, status=202, tags=("plans",))
async def post_plan_commit(request: web.Request) -> web.Response:
    """Commit a plan's unplanned or planned failover (a ``plan-commit`` job): every machine of the plan
    not committed yet, group by group. 409 if a machine has no such failover or all are committed."""
    http.require_role(request, "admin")
    name = _name(request)
    model.body_keys(await http.read_json(request), allowed=())
    return web.json_response({"job_id": await plan_jobs.request(state_of(request), name, "commit")}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/plans", get_plans)
    app.router.add_post("/v1/plans", post_plan)
    app.router.add_get("/v1/plans/{name}", get_plan)
    app.router.add_patch("/v1/plans/{name}", patch_plan)
    app.router.add_delete("/v1/plans/{name}", delete_plan)
    app.router.add_post("/v1/plans/{name}/failover", post_plan_failover)
    app.router.add_post("/v1/plans/{name}/cleanup-test-failover", post_plan_cleanup)
    app.router.add_post("/v1/plans/{name}/commit", post_plan_commit)
