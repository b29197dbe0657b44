"""Hypervisors, the discovered inventory and push installs (cs/hypervisors.py, cs/push_install.py).

Admin: ``/v1/hypervisors`` (CRUD, discover now), ``GET /v1/inventory``,
``POST /v1/inventory/{hypervisor}/{vm}/install`` (202 ``{job_id}``).
PS (mTLS, only for its own hypervisors and jobs, else 403): ``/v1/ps/self/hypervisors/{name}/...``
(credentials, inventory report) and ``/v1/ps/self/push/{job_id}/...`` (claim, result).
Passwords and tokens go only to the PS that needs them, never into a view, a job or a log.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from common import http
from common import logging as dlog
from cs import accounts, components, hypervisors, model, push_install, validate
from cs.api import accounts as api_accounts
from cs.api import paging, spec
from cs.db import meta
from cs.db.inventory import Hypervisor
from cs.state import state_of

log = dlog.get("drlab.cs.api.hypervisors")

HYPERVISOR = spec.obj({"name": spec.STR, "address": spec.STR, "port": spec.INT, "account": spec.STR,
                       "ps_id": spec.HEX_ID, "fingerprint": spec.nullable(spec.STR), "discover_seq": spec.INT,
                       "last_discovery_ns": spec.nullable(spec.INT), "last_error": spec.nullable(spec.ANY_OBJ),
                       "machines": spec.INT})
NEW_HYPERVISOR = spec.obj({"name": spec.STR, "address": spec.STR, "port": spec.INT, "account": spec.STR,
                           "ps_id": spec.HEX_ID, "fingerprint": spec.STR},
                          required=("name", "address", "account", "ps_id"), extra=False)
DISK = spec.obj({"name": spec.STR, "size_bytes": spec.INT})
ITEM = spec.obj({"hypervisor": spec.STR, "vm": spec.STR, "host_id": spec.STR, "address": spec.STR, "os": spec.STR,
                 "power_state": spec.STR, "disks": spec.array(DISK), "agent_installed": spec.BOOL,
                 "seen_ns": spec.INT, "component_id": spec.nullable(spec.HEX_ID), "protected": spec.BOOL})
REPORT = spec.obj({"fingerprint": spec.STR, "machines": spec.array(spec.ANY_OBJ),
                   "error": spec.obj({"code": spec.STR, "message": spec.STR}, required=("code",))}, required=())
CREDENTIALS = spec.obj({"username": spec.STR, "password": spec.STR})
CLAIM = spec.obj({"username": spec.STR, "password": spec.STR, "enroll_token": spec.STR, "address": spec.STR,
                  "port": spec.INT, "fingerprint": spec.nullable(spec.STR)})
RESULT = spec.obj({"ok": spec.BOOL, "code": spec.STR, "message": spec.STR}, required=("ok",), extra=False)
INSTALL = spec.obj({"account": spec.STR, "ps_id": spec.HEX_ID}, required=("account",), extra=False)
JOB = spec.obj({"job_id": spec.HEX_ID})
TAGS = ("hypervisors",)


def _name(request: web.Request) -> str:
    return model.name(request.match_info["name"], "hypervisor")


async def _view(session: AsyncSession, hv: Hypervisor) -> dict[str, Any]:
    return await hypervisors.view_of(session, hv)


@spec.route(roles=spec.ADMIN, query=spec.PAGE_QUERY, response=spec.page_of(HYPERVISOR), tags=TAGS)
async def get_hypervisors(request: web.Request) -> web.Response:
    """Hypervisors by name, with their discovery state and how many machines they hold."""
    return await paging.named_page(request, Hypervisor, _view)


@spec.route(roles=spec.ADMIN, request=NEW_HYPERVISOR, response=HYPERVISOR, status=201, tags=TAGS)
async def post_hypervisor(request: web.Request) -> web.Response:
    """Add a hypervisor discovered by ``ps_id`` with account ``account`` (404 if either is unknown,
    409 if the name is taken); ``fingerprint`` pins its certificate, else the first discovery does."""
    http.require_role(request, "admin")
    fields = hypervisors.parse_new(await http.read_json(request, max_bytes=8192))
    async with state_of(request).change() as session:
        hv = await hypervisors.create(session, fields)
        body = hypervisors.view(hv, 0)
    return web.json_response(body, status=201)


@spec.route(roles=spec.ADMIN, response=HYPERVISOR, tags=TAGS)
async def get_hypervisor(request: web.Request) -> web.Response:
    """One hypervisor."""
    http.require_role(request, "admin")
    async with state_of(request).db.read() as session:
        hv = await model.get_or_404(session, Hypervisor, _name(request), "hypervisor")
        body = await hypervisors.view_of(session, hv)
    return web.json_response(body)


@spec.route(roles=spec.ADMIN, response=spec.OK, tags=TAGS)
async def delete_hypervisor(request: web.Request) -> web.Response:
    """Delete a hypervisor and its discovered machines (its PS stops discovering it)."""
    http.require_role(request, "admin")
    async with state_of(request).change() as session:
        await hypervisors.remove(session, _name(request))
    return web.json_response({"ok": True})


@spec.route(roles=spec.ADMIN, response=HYPERVISOR, tags=TAGS)
async def post_discover(request: web.Request) -> web.Response:
    """Discover now: bumps ``discover_seq`` in the PS's settings; the PS discovers at once."""
    http.require_role(request, "admin")
    async with state_of(request).change() as session:
        hv = await hypervisors.discover_now(session, _name(request))
        body = await hypervisors.view_of(session, hv)
    return web.json_response(body)


@spec.route(roles=spec.ADMIN, query={"hypervisor": spec.STR}, response=spec.obj({"items": spec.array(ITEM)}),
            tags=TAGS)
async def get_inventory(request: web.Request) -> web.Response:
    """Every discovered machine (``?hypervisor=`` for one hypervisor's), with the id of the agent
    registered with its host id (or null) and whether that machine is protected."""
    http.require_role(request, "admin")
    paging.check_query(request.query, ("hypervisor",))
    name = request.query.get("hypervisor")
    async with state_of(request).db.read() as session:
        items = await hypervisors.inventory(session, None if name is None else model.name(name, "hypervisor"))
    return web.json_response({"items": items})


@spec.route(roles=spec.ADMIN, request=INSTALL, response=JOB, status=202, tags=TAGS)
async def post_install(request: web.Request) -> web.Response:
    """Push-install the agent on a discovered VM with the guest account ``account``, through
    ``ps_id`` (default: the hypervisor's PS): a ``push-install`` job, 202 ``{job_id}``."""
    http.require_role(request, "admin")
    account, ps_id = push_install.parse_install(await http.read_json(request, max_bytes=8192))
    async with state_of(request).change() as session:
        job_id = await push_install.submit(session, request.match_info["hypervisor"], request.match_info["vm"],
                                           account, ps_id)
    return web.json_response({"job_id": job_id}, status=202)


# ------------------------------------------------------------------ the PS's routes


@spec.route(roles=("ps",), response=CREDENTIALS, tags=TAGS)
async def post_credentials(request: web.Request) -> web.Response:
    """The account credentials of one of the caller's hypervisors (403 for another PS's)."""
    comp = await components.caller(request, "ps")
    key = api_accounts._key(request)
    async with state_of(request).db.read() as session:
        hv = await hypervisors.owned(session, request.match_info["name"], comp.component_id)
        username, password = await accounts.reveal(session, key, hv.account)
    log.info("hypervisor_credentials_sent", hypervisor=hv.name, account=hv.account, ps_id=comp.component_id)
    return web.json_response({"username": username, "password": password})


@spec.route(roles=("ps",), request=REPORT, status=204, tags=TAGS)
async def put_inventory(request: web.Request) -> web.Response:
    """A discovery's report: ``{fingerprint, machines}`` replaces the hypervisor's machines, or
    ``{error: {code, message}}`` records the failure; 409 (nothing stored) for a certificate other
    than the pinned one."""
    comp = await components.caller(request, "ps")
    seen, machines, error = hypervisors.parse_report(await http.read_json(request, max_bytes=8 * 1024 * 1024))
    state = state_of(request)
    async with state.db.write() as session:
        hv = await hypervisors.owned(session, request.match_info["name"], comp.component_id, for_update=True)
        pinned = await hypervisors.store_report(session, hv, seen, machines, error)
        if pinned:  # the PS document shows the fingerprint now
            await meta.bump_version(session)
    if pinned:
        await state.watch.changed()
    return web.Response(status=204)


@spec.route(roles=("ps",), response=CLAIM, tags=TAGS)
async def post_claim(request: web.Request) -> web.Response:
    """Claim a push install (once; 409 after): the guest credentials, the hypervisor, and a fresh
    single-use enrollment token for the VM's host id."""
    comp = await components.caller(request, "ps")
    job_id = validate.hex_id(request.match_info["job_id"], "job_id")
    reply = await push_install.claim(state_of(request), api_accounts._key(request), job_id, comp.component_id)
    return web.json_response(reply)


@spec.route(roles=("ps",), request=RESULT, status=204, tags=TAGS)
async def post_result(request: web.Request) -> web.Response:
    """The outcome of a claimed push install: ``{ok, code?, message?}`` (once)."""
    comp = await components.caller(request, "ps")
    job_id = validate.hex_id(request.match_info["job_id"], "job_id")
    outcome = push_install.parse_result(await http.read_json(request, max_bytes=8192))
    await push_install.post_result(state_of(request), job_id, comp.component_id, outcome)
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/hypervisors", get_hypervisors)
    app.router.add_post("/v1/hypervisors", post_hypervisor)
    app.router.add_get("/v1/hypervisors/{name}", get_hypervisor)
    app.router.add_delete("/v1/hypervisors/{name}", delete_hypervisor)
    app.router.add_post("/v1/hypervisors/{name}/discover", post_discover)
    app.router.add_get("/v1/inventory", get_inventory)
    app.router.add_post("/v1/inventory/{hypervisor}/{vm}/install", post_install)
    app.router.add_post("/v1/ps/self/hypervisors/{name}/credentials", post_credentials)
    app.router.add_put("/v1/ps/self/hypervisors/{name}/inventory", put_inventory)
    app.router.add_post("/v1/ps/self/push/{job_id}/claim", post_claim)
    app.router.add_post("/v1/ps/self/push/{job_id}/result", post_result)
