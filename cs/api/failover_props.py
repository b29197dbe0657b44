"""A machine's failover properties: ``GET`` / ``PATCH /v1/machines/{machine_id}/failover-properties``
(target name, size and network, validated when set: cs/failover_props.py)."""

from __future__ import annotations

from aiohttp import web

from common import errors, http
from cs import failover_props, validate
from cs.api import spec
from cs.db.models import Component
from cs.state import state_of

PROPS = spec.obj({"machine_id": spec.HEX_ID, "target_name": spec.nullable(spec.STR),
                  "target_size": spec.nullable({"enum": list(failover_props.SIZES)}),
                  "target_network": spec.nullable(spec.STR)})
CHANGE = spec.obj({"target_name": spec.nullable(spec.STR),
                   "target_size": spec.nullable({"enum": list(failover_props.SIZES)}),
                   "target_network": spec.nullable(spec.STR)}, required=(), extra=False)


@spec.route(roles=spec.ADMIN, response=PROPS, tags=("machines",))
async def get_props(request: web.Request) -> web.Response:
    """The machine's failover properties (null where unset)."""
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    async with state_of(request).db.read() as session:
        agent = await session.get(Component, machine_id)
        if agent is None or agent.role != "agent":
            raise errors.NotFound(f"no machine {machine_id}")
        props = await failover_props.read(session, machine_id)
    return web.json_response(failover_props.view(machine_id, props))


@spec.route(roles=spec.ADMIN, request=CHANGE, response=PROPS, tags=("machines",))
async def patch_props(request: web.Request) -> web.Response:
    """Set (or, with null, clear) failover properties. ``target_name``: 1-63 letters, digits and
    hyphens, starting and ending with a letter or digit; ``target_size``: one of the listed sizes;
    ``target_network``: a network name. Any bad value is 400 with the rule and changes nothing."""
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    body = await http.read_json(request, max_bytes=4096)
    if not isinstance(body, dict):
        raise errors.BadRequest("the body must be a JSON object")
    changes = failover_props.parse(body)
    async with state_of(request).db.write() as session:
        view = await failover_props.update(session, machine_id, changes)
    return web.json_response(view)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/machines/{machine_id}/failover-properties", get_props)
    app.router.add_patch("/v1/machines/{machine_id}/failover-properties", patch_props)
