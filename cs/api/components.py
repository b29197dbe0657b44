"""Heartbeats, settings long-poll and the admin's list of components."""

from __future__ import annotations

import math
import time

from aiohttp import web

from common import errors, http
from cs import components, settings
from cs.state import state_of


async def post_heartbeat(request: web.Request) -> web.Response:
    comp = await components.caller(request, *components.COMPONENT_ROLES)
    metrics = components.parse_metrics(await http.read_json(request))
    await components.heartbeat(state_of(request), comp.component_id, metrics)
    return web.json_response({"ok": True, "time_ns": time.time_ns()})


def _query_number(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise errors.BadRequest(f"{name} must be a number") from exc
    if not math.isfinite(value):
        raise errors.BadRequest(f"{name} must be finite")
    return value


async def get_settings(request: web.Request) -> web.Response:
    comp = await components.caller(request, *components.COMPONENT_ROLES)
    version = _query_number(request, "version", -1)
    wait_s = _query_number(request, "wait_s", 0)
    if version != int(version) or wait_s < 0:
        raise errors.BadRequest("version must be an integer and wait_s >= 0")
    reply = await settings.long_poll(state_of(request), comp.role, comp.component_id, int(version), wait_s)
    return web.json_response(reply)


async def get_components(request: web.Request) -> web.Response:
    http.require_role(request, "admin")
    return web.json_response({"items": await components.listing(state_of(request))})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/heartbeat", post_heartbeat)
    app.router.add_get("/v1/settings", get_settings)
    app.router.add_get("/v1/components", get_components)
