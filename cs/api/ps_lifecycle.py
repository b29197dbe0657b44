"""Decommission (``DELETE /v1/ps/{ps_id}``) and purge (``POST /v1/ps/{ps_id}/purge``) a process
server; the rules are cs/ps_lifecycle.py's."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from common import errors, http
from cs import ps_lifecycle, validate
from cs.api import spec
from cs.api.ps import MAX_SECONDS
from cs.state import state_of

PURGE_OPTIONS = ("to_ps_id", "force", "dead_after_s", "timeout_s")
PURGE_BODY = spec.obj({"to_ps_id": spec.HEX_ID, "force": spec.BOOL, "dead_after_s": spec.NUM,
                       "timeout_s": spec.NUM}, required=(), extra=False)
REMOVED = spec.obj({"ps_id": spec.HEX_ID, "removed": spec.BOOL, "revoked_serials": spec.array(spec.STR)})
JOB_REPLY = spec.obj({"job_id": spec.HEX_ID})


def parse_purge(ps_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(job params, force) from a purge body; BadRequest on anything unknown or malformed."""
    unknown = sorted(set(body) - set(PURGE_OPTIONS))
    if unknown:
        raise errors.BadRequest(f"unknown field {unknown[0][:64]!r}; known: {', '.join(PURGE_OPTIONS)}")
    params: dict[str, Any] = {}
    if body.get("to_ps_id") is not None:
        params["to_ps_id"] = validate.hex_id(body["to_ps_id"], "to_ps_id")
        if params["to_ps_id"] == ps_id:
            raise errors.BadRequest("to_ps_id is the process server being purged")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise errors.BadRequest("force must be true or false")
    for name in ("dead_after_s", "timeout_s"):
        if name in body:
            params[name] = validate.number(body, name, low=0.1, high=MAX_SECONDS)
    return params, force


@spec.route(roles=spec.ADMIN, response=REMOVED, tags=("ps",))
async def delete_ps(request: web.Request) -> web.Response:
    """Decommission a process server: refused 409 while disks are assigned to it (move them
    first: ``drlab ps switch PS --to OTHER``); otherwise its certificates are revoked and its
    component row deleted."""
    http.require_role(request, "admin")
    ps_id = validate.hex_id(request.match_info["ps_id"], "ps_id")
    return web.json_response(await ps_lifecycle.remove(state_of(request), ps_id))


@spec.route(roles=spec.ADMIN, request=PURGE_BODY, response=JOB_REPLY, status=202, tags=("ps",))
async def post_purge(request: web.Request) -> web.Response:
    """Purge a disconnected process server (a ps-purge job): its machines move to another PS
    (``to_ps_id``, else the least loaded) under a new generation, their agents re-send what is
    un-applied, then the PS is removed and revoked. Refused 409 while the PS heartbeats (newer
    than ``dead_after_s``, default 90 s) unless ``force``. Replies 202 ``{job_id}``."""
    http.require_role(request, "admin")
    ps_id = validate.hex_id(request.match_info["ps_id"], "ps_id")
    params, force = parse_purge(ps_id, await http.read_json(request, max_bytes=64 * 1024))
    job_id = await ps_lifecycle.request_purge(state_of(request), ps_id, params, force=force)
    return web.json_response({"job_id": job_id}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_delete("/v1/ps/{ps_id}", delete_ps)
    app.router.add_post("/v1/ps/{ps_id}/purge", post_purge)
