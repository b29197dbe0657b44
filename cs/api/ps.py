"""Process servers: switch (every machine of a PS) and load balance (selected machines) as jobs.

Both answer 202 ``{job_id}``; the job (cs/switch_jobs.py) records its steps and progress, read
with ``GET /v1/jobs/{job_id}``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from common import errors, http
from cs import switch_jobs, validate
from cs.api import spec
from cs.state import state_of

MAX_MACHINES = 1000
MAX_SECONDS = 24 * 3600.0
OPTIONS = ("to_ps_id", "machine_ids", "old_ps_dead", "dead_after_s", "timeout_s", "sample_s")
SECONDS = ("dead_after_s", "timeout_s", "sample_s")

MOVE_BODY = spec.obj({"to_ps_id": spec.HEX_ID, "machine_ids": spec.array(spec.HEX_ID), "old_ps_dead": spec.BOOL,
                      "dead_after_s": spec.NUM, "timeout_s": spec.NUM, "sample_s": spec.NUM},
                     required=(), extra=False)
JOB_REPLY = spec.obj({"job_id": spec.HEX_ID})


def parse_move(ps_id: str, body: dict[str, Any], *, need_machines: bool) -> dict[str, Any]:
    """The job's params from a request body (BadRequest on anything unknown or malformed)."""
    unknown = sorted(set(body) - set(OPTIONS))
    if unknown:
        raise errors.BadRequest(f"unknown field {unknown[0][:64]!r}; known: {', '.join(OPTIONS)}")
    params: dict[str, Any] = {"from_ps_id": ps_id}
    if body.get("to_ps_id") is not None:
        params["to_ps_id"] = validate.hex_id(body["to_ps_id"], "to_ps_id")
        if params["to_ps_id"] == ps_id:
            raise errors.BadRequest("to_ps_id is the process server the machines move away from")
    machines = body.get("machine_ids")
    if machines is not None:
        if not isinstance(machines, list) or not 1 <= len(machines) <= MAX_MACHINES:
            raise errors.BadRequest(f"machine_ids must be a list of 1 to {MAX_MACHINES} ids")
        params["machine_ids"] = sorted({validate.hex_id(m, "machine_ids[]") for m in machines})
    elif need_machines:
        raise errors.BadRequest("machine_ids is required (POST .../switch moves every machine)")
    if "old_ps_dead" in body:
        if not isinstance(body["old_ps_dead"], bool):
            raise errors.BadRequest("old_ps_dead must be true or false")
        params["old_ps_dead"] = body["old_ps_dead"]
    for name in SECONDS:
        if name in body:
            params[name] = validate.number(body, name, low=0.0 if name == "sample_s" else 0.1, high=MAX_SECONDS)
    return params


@spec.route(roles=spec.ADMIN, request=MOVE_BODY, response=JOB_REPLY, status=202, tags=("ps",))
async def post_switch(request: web.Request) -> web.Response:
    """Move every machine of a process server to another (a ps-switch job).

    Body (all optional): ``to_ps_id`` (else each machine goes to the least loaded live PS, by
    measured churn and backlog), ``machine_ids`` (a subset), ``old_ps_dead`` (skip the drain:
    re-send the un-applied regions under a new generation), ``dead_after_s``, ``timeout_s``,
    ``sample_s``. Replies 202 ``{job_id}``.
    """
    http.require_role(request, "admin")
    ps_id = validate.hex_id(request.match_info["ps_id"], "ps_id")
    params = parse_move(ps_id, await http.read_json(request, max_bytes=256 * 1024), need_machines=False)
    return web.json_response({"job_id": await switch_jobs.request(state_of(request), "ps-switch", params)},
                             status=202)


@spec.route(roles=spec.ADMIN, request=MOVE_BODY, response=JOB_REPLY, status=202, tags=("ps",))
async def post_balance(request: web.Request) -> web.Response:
    """Move the machines named in ``machine_ids`` off a process server (a ps-balance job).

    Body: ``machine_ids`` (required), ``to_ps_id`` (else picked by measured churn and backlog),
    ``old_ps_dead``, ``dead_after_s``, ``timeout_s``, ``sample_s``. Replies 202 ``{job_id}``.
    """
    http.require_role(request, "admin")
    ps_id = validate.hex_id(request.match_info["ps_id"], "ps_id")
    params = parse_move(ps_id, await http.read_json(request, max_bytes=256 * 1024), need_machines=True)
    return web.json_response({"job_id": await switch_jobs.request(state_of(request), "ps-balance", params)},
                             status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/ps/{ps_id}/switch", post_switch)
    app.router.add_post("/v1/ps/{ps_id}/balance", post_balance)
