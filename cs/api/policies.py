"""Replication policies for the admin: ``/v1/policies`` (CRUD) and putting machines or groups under one."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors, http
from cs import model, policies, protection, validate
from cs.api import paging, spec
from cs.db.models import Policy
from cs.state import state_of

_FIELDS = {"rpo_threshold_s": spec.INT, "retention_window_s": spec.INT, "app_consistent_interval_s": spec.INT,
           "crash_consistent_interval_s": spec.nullable(spec.INT), "multi_machine_consistency": spec.BOOL,
           "low_space_action": {"type": "string", "enum": list(policies.LOW_SPACE_ACTIONS)}}
POLICY = spec.obj({"name": spec.STR, **_FIELDS, "machines": spec.INT, "groups": spec.INT,
                   "created_ns": spec.INT, "updated_ns": spec.INT})
NEW_POLICY = spec.obj({"name": spec.STR, **_FIELDS}, required=("name",), extra=False)
CHANGE_POLICY = spec.obj(_FIELDS, required=(), extra=False)
ASSIGN = spec.obj({"machines": spec.array(spec.HEX_ID), "groups": spec.array(spec.STR)}, required=(), extra=False)
MAX_ASSIGN = 1000


def _name(request: web.Request) -> str:
    return model.name(request.match_info["name"], "policy")


@spec.route(roles=spec.ADMIN, query=spec.PAGE_QUERY, response=spec.page_of(POLICY), tags=("policies",))
async def get_policies(request: web.Request) -> web.Response:
    """Replication policies by name, a page at a time, with how many machines and groups use each."""
    async def view(session: AsyncSession, p: Policy) -> dict[str, Any]:
        return policies.view(p, *await policies.usage(session, p.name))

    return await paging.named_page(request, Policy, view)


@spec.route(roles=spec.ADMIN, request=NEW_POLICY, response=POLICY, status=201, tags=("policies",))
async def post_policy(request: web.Request) -> web.Response:
    """Create a policy; fields not given take the default policy's defaults."""
    http.require_role(request, "admin")
    body = await http.read_json(request, max_bytes=8192)
    name = model.name(body.get("name"), "name")
    values = policies.parse(body)
    async with state_of(request).change() as session:
        policy = await policies.create(session, name, values)
    return web.json_response(policies.view(policy), status=201)


@spec.route(roles=spec.ADMIN, response=POLICY, tags=("policies",))
async def get_policy(request: web.Request) -> web.Response:
    """One policy."""
    http.require_role(request, "admin")
    name = _name(request)
    async with state_of(request).db.read() as session:
        policy = await model.get_or_404(session, Policy, name, "policy")
        return web.json_response(policies.view(policy, *await policies.usage(session, name)))


@spec.route(roles=spec.ADMIN, request=CHANGE_POLICY, response=POLICY, tags=("policies",))
async def patch_policy(request: web.Request) -> web.Response:
    """Change some fields of a policy; the result is checked as a whole (400, nothing changed)."""
    http.require_role(request, "admin")
    name = _name(request)
    body = await http.read_json(request, max_bytes=8192)
    async with state_of(request).change() as session:
        policy = await policies.update(session, name, body)
        usage = await policies.usage(session, name)
    return web.json_response(policies.view(policy, *usage))


@spec.route(roles=spec.ADMIN, response=spec.OK, tags=("policies",))
async def delete_policy(request: web.Request) -> web.Response:
    """Delete a policy nothing uses (409 for the default one or one in use)."""
    http.require_role(request, "admin")
    async with state_of(request).change() as session:
        await policies.delete(session, _name(request))
    return web.json_response({"ok": True})


@spec.route(roles=spec.ADMIN, request=ASSIGN, response=POLICY, tags=("policies",))
async def post_assign(request: web.Request) -> web.Response:
    """Put protected machines and replication groups under this policy."""
    http.require_role(request, "admin")
    name = _name(request)
    body = await http.read_json(request, max_bytes=128 * 1024)
    model.body_keys(body, allowed=("machines", "groups"))
    machines, groups = body.get("machines", []), body.get("groups", [])
    if not isinstance(machines, list) or not isinstance(groups, list) \
            or not 1 <= len(machines) + len(groups) <= MAX_ASSIGN:
        raise errors.BadRequest(f"machines and groups are lists, 1 to {MAX_ASSIGN} entries in all")
    machine_ids = [validate.hex_id(m, "a machine") for m in machines]
    group_names = [validate.string({"g": g}, "g", max_len=64) for g in groups]
    async with state_of(request).change() as session:
        await protection.set_policy(session, name, machine_ids)
        await policies.assign_groups(session, name, group_names)
        policy = await model.get_or_404(session, Policy, name, "policy")
        usage = await policies.usage(session, name)
    return web.json_response(policies.view(policy, *usage))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/policies", get_policies)
    app.router.add_post("/v1/policies", post_policy)
    app.router.add_get("/v1/policies/{name}", get_policy)
    app.router.add_patch("/v1/policies/{name}", patch_policy)
    app.router.add_delete("/v1/policies/{name}", delete_policy)
    app.router.add_post("/v1/policies/{name}/assign", post_assign)
