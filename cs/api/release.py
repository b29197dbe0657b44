"""Disable protection of a machine, exclude one of its disks (cs/release.py has the rules)."""

from __future__ import annotations

from aiohttp import web

from common import http
from cs import release, validate
from cs.api import spec
from cs.state import state_of

BODY = spec.obj({"keep_points": spec.BOOL}, required=(), extra=False)
RESULT = spec.obj({"machine_id": spec.HEX_ID, "keep_points": spec.BOOL, "released": spec.array(spec.HEX_ID),
                   "protection_state": spec.STR, "disks": spec.array(spec.ANY_OBJ)})


@spec.route(roles=spec.ADMIN, request=BODY, response=RESULT, tags=("disks",))
async def post_disable(request: web.Request) -> web.Response:
    """Disable protection of a machine: every disk leaves its agent's, PS's and MT's settings.

    ``keep_points`` (default false) keeps the MT's replica, journal and points for a later enable;
    without it the MT deletes them. Disabling an unprotected machine changes nothing (200)."""
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    keep = release.parse_body(await http.read_json(request, max_bytes=4096))
    return web.json_response(await release.disable(state_of(request), machine_id, keep))


@spec.route(roles=spec.ADMIN, request=BODY, response=RESULT, tags=("disks",))
async def post_exclude(request: web.Request) -> web.Response:
    """Exclude one disk of a protected machine from protection; its other disks keep replicating
    (409 for a disk not protected, or the machine's last protected disk)."""
    http.require_role(request, "admin")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    keep = release.parse_body(await http.read_json(request, max_bytes=4096))
    return web.json_response(await release.exclude(state_of(request), disk_id, keep))


@spec.route(roles=spec.ADMIN, response=RESULT, tags=("disks",))
async def post_include(request: web.Request) -> web.Response:
    """Include an excluded disk again: protected at once when its machine is protected (a new
    initial replication), else taken by the machine's next protect (409 for a disk not excluded)."""
    http.require_role(request, "admin")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    return web.json_response(await release.include(state_of(request), disk_id))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/machines/{machine_id}/disable-protection", post_disable)
    app.router.add_post("/v1/disks/{disk_id}/exclude", post_exclude)
    app.router.add_post("/v1/disks/{disk_id}/include", post_include)
