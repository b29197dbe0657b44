"""Sites and machines for the admin: ``/v1/sites`` (CRUD, members) and ``/v1/machines`` (inventory)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors, http
from cs import model, protection, sites, validate
from cs.api import paging, spec
from cs.db.models import Site
from cs.state import state_of

SITE = spec.obj({"name": spec.STR, "kind": {"enum": list(sites.KINDS)}, "description": spec.STR,
                 "members": spec.INT, "created_ns": spec.INT, "updated_ns": spec.INT})
NEW_SITE = spec.obj({"name": spec.STR, "kind": {"enum": list(sites.KINDS)}, "description": spec.STR},
                    required=("name", "kind"), extra=False)
CHANGE_SITE = spec.obj({"kind": {"enum": list(sites.KINDS)}, "description": spec.STR}, required=(), extra=False)
MEMBERS = spec.obj({"members": spec.array(spec.HEX_ID)}, extra=False)
MACHINE = spec.obj({"machine_id": spec.HEX_ID, "name": spec.STR, "host_id": spec.STR,
                    "site": spec.nullable(spec.STR), "policy": spec.nullable(spec.STR),
                    "protection_state": spec.STR, "protected_ns": spec.nullable(spec.INT),
                    "disks": spec.array(spec.ANY_OBJ)})


def _name(request: web.Request) -> str:
    return model.name(request.match_info["name"])


@spec.route(roles=spec.ADMIN, query=spec.PAGE_QUERY, response=spec.page_of(SITE), tags=("sites",))
async def get_sites(request: web.Request) -> web.Response:
    """Sites by name, a page at a time, with their number of members."""
    async def view(session: AsyncSession, s: Site) -> dict[str, Any]:
        return sites.view(s, await sites.member_count(session, s.name))

    return await paging.named_page(request, Site, view)


@spec.route(roles=spec.ADMIN, request=NEW_SITE, response=SITE, status=201, tags=("sites",))
async def post_site(request: web.Request) -> web.Response:
    """Create a site (``on-prem`` or ``cloud``); 409 if the name exists."""
    http.require_role(request, "admin")
    fields = sites.parse(await http.read_json(request, max_bytes=8192), create=True)
    async with state_of(request).db.write() as session:
        site = await sites.create(session, fields)
    return web.json_response(sites.view(site), status=201)


@spec.route(roles=spec.ADMIN, response=spec.obj({"site": SITE, "components": spec.array(spec.ANY_OBJ)}),
            tags=("sites",))
async def get_site(request: web.Request) -> web.Response:
    """One site and its member components (agents are machines)."""
    http.require_role(request, "admin")
    name = _name(request)
    async with state_of(request).db.read() as session:
        site = await model.get_or_404(session, Site, name, "site")
        members = await sites.members(session, name)
    return web.json_response({"site": sites.view(site, len(members)), "components": members})


@spec.route(roles=spec.ADMIN, request=CHANGE_SITE, response=SITE, tags=("sites",))
async def patch_site(request: web.Request) -> web.Response:
    """Change a site's kind or description."""
    http.require_role(request, "admin")
    name = _name(request)
    fields = sites.parse(await http.read_json(request, max_bytes=8192), create=False)
    async with state_of(request).db.write() as session:
        site = await sites.update(session, name, fields)
        count = await sites.member_count(session, name)
    return web.json_response(sites.view(site, count))


@spec.route(roles=spec.ADMIN, response=spec.OK, tags=("sites",))
async def delete_site(request: web.Request) -> web.Response:
    """Delete a site without members (409 otherwise)."""
    http.require_role(request, "admin")
    async with state_of(request).db.write() as session:
        await sites.delete(session, _name(request))
    return web.json_response({"ok": True})


@spec.route(roles=spec.ADMIN, request=MEMBERS, response=spec.OK, tags=("sites",))
async def post_members(request: web.Request) -> web.Response:
    """Put components (and machines, by their agent's id) in this site, moving them from any other."""
    http.require_role(request, "admin")
    name = _name(request)
    members = sites.parse_members(await http.read_json(request, max_bytes=128 * 1024))
    async with state_of(request).db.write() as session:
        await sites.assign(session, name, members)
    return web.json_response({"ok": True})


@spec.route(roles=spec.ADMIN, query={**spec.PAGE_QUERY, "site": spec.STR, "policy": spec.STR},
            response=spec.page_of(MACHINE), tags=("machines",))
async def get_machines(request: web.Request) -> web.Response:
    """Machines (every registered agent) with site, policy, protection state and disks, a page at a time."""
    http.require_role(request, "admin")
    paging.check_query(request.query, (*paging.PAGE_PARAMS, "site", "policy"))
    page = paging.parse(request.query)
    after = validate.hex_id(page.after[0], "cursor") if page.after else None
    site = model.name(request.query["site"], "site") if "site" in request.query else None
    policy = model.name(request.query["policy"], "policy") if "policy" in request.query else None
    async with state_of(request).db.read() as session:
        items, last = await protection.listing(session, limit=page.limit, after=after, site=site, policy=policy)
    return web.json_response({"items": items, "next": paging.encode([last]) if last else None})


@spec.route(roles=spec.ADMIN, response=MACHINE, tags=("machines",))
async def get_machine(request: web.Request) -> web.Response:
    """One machine: site, policy, protection state and disks."""
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    async with state_of(request).db.read() as session:
        return web.json_response(await protection.get(session, machine_id))


@spec.route(roles=spec.ADMIN, request=spec.obj({"name": spec.STR}, extra=False), response=MACHINE,
            tags=("machines",))
async def patch_machine(request: web.Request) -> web.Response:
    """Rename a machine (its display name; the id stays)."""
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    body = await http.read_json(request, max_bytes=4096)
    model.body_keys(body, allowed=("name",), required=("name",))
    name = validate.string(body, "name", max_len=255)
    if not name.isprintable():
        raise errors.BadRequest("name must be printable")
    async with state_of(request).db.write() as session:
        await protection.rename(session, machine_id, name)
        view = await protection.get(session, machine_id)
    return web.json_response(view)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/sites", get_sites)
    app.router.add_post("/v1/sites", post_site)
    app.router.add_get("/v1/sites/{name}", get_site)
    app.router.add_patch("/v1/sites/{name}", patch_site)
    app.router.add_delete("/v1/sites/{name}", delete_site)
    app.router.add_post("/v1/sites/{name}/members", post_members)
    app.router.add_get("/v1/machines", get_machines)
    app.router.add_get("/v1/machines/{machine_id}", get_machine)
    app.router.add_patch("/v1/machines/{machine_id}", patch_machine)
