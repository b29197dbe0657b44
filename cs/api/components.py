"""Heartbeats, settings long-poll and the admin's list of components."""

from __future__ import annotations

import math
import time

from aiohttp import web
from sqlalchemy import select

from common import errors, http
from cs import alerts, components, revocation, settings, upgrade
from cs.api import paging, spec
from cs.db.models import Component
from cs.health import clock
from cs.state import state_of


@spec.route(roles=("admin", "reader", "cs", *spec.COMPONENTS), tags=("components",),
            response=spec.obj({"ok": spec.BOOL, "time_ns": spec.INT, "role": spec.STR}))
async def get_ping(request: web.Request) -> web.Response:
    """Liveness over mutual TLS: any verified certificate, no database access.

    The reference of the heartbeat benchmark (bench/cs_heartbeats.py): the cost of TLS, HTTP and
    JSON on this server without the database. Replies ``{ok, time_ns, role}``.
    """
    ident = http.identity(request)
    return web.json_response({"ok": True, "time_ns": time.time_ns(), "role": ident.role})


@spec.route(roles=spec.COMPONENTS, request=spec.obj({"metrics": spec.ANY_OBJ, "time_ns": spec.INT,
                                                    "rtt_ns": spec.INT, "version": spec.STR}, required=()),
            tags=("components",),
            response=spec.obj({"ok": spec.BOOL, "time_ns": spec.INT}))
async def post_heartbeat(request: web.Request) -> web.Response:
    """Record a component's heartbeat and metrics; health alerts follow from the metrics.

    Body ``{metrics: {...}, time_ns, rtt_ns, version}``; replies ``{ok, time_ns}`` once the heartbeat is
    committed. The component's clock skew (cs/health/clock.py) is stored as ``metrics.clock_skew_s``.
    """
    received_ns = time.time_ns()
    writer = request.app[components.HEARTBEATS]
    component_id = await writer.known.caller(request, *components.COMPONENT_ROLES)
    body = await http.read_json(request)
    metrics = clock.with_skew(body, components.parse_metrics(body, request.content_length), received_ns)
    # the version it runs now (409 when newer than the CS; recorded and warned about: cs/upgrade.py)
    await upgrade.observe_heartbeat(state_of(request).db, component_id, upgrade.parse_heartbeat_version(body))
    await writer.submit(component_id, metrics)
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


@spec.route(roles=spec.COMPONENTS, response=spec.ANY_OBJ, tags=("components",),
            query={"version": {"type": "integer", "default": -1}, "wait_s": {"type": "number", "minimum": 0}})
async def get_settings(request: web.Request) -> web.Response:
    """The caller's settings document; waits up to ``wait_s`` for one newer than ``version``."""
    comp = await components.caller(request, *components.COMPONENT_ROLES)
    version = _query_number(request, "version", -1)
    wait_s = _query_number(request, "wait_s", 0)
    if version != int(version) or wait_s < 0:
        raise errors.BadRequest("version must be an integer and wait_s >= 0")
    reply = await settings.long_poll(state_of(request), comp.role, comp.component_id, int(version), wait_s)
    return web.json_response(reply)


COMPONENT = spec.obj({"component_id": spec.HEX_ID, "role": spec.STR, "host_id": spec.STR, "address": spec.STR,
                      "ports": spec.ANY_OBJ, "version": spec.STR, "registered_at": spec.INT,
                      "last_heartbeat": spec.nullable(spec.INT), "metrics": spec.ANY_OBJ,
                      "health": {"type": "string", "enum": ["ok", "warning", "critical"],
                                 "description": "the worst open alert of the component"},
                      "state": {"type": "string", "enum": list(revocation.STATES),
                                "description": "registration state, by the component's current certificate"}},
                     required=("component_id", "role", "host_id"))


@spec.route(roles=spec.ADMIN, query=spec.PAGE_QUERY, response=spec.page_of(COMPONENT), tags=("components",))
async def get_components(request: web.Request) -> web.Response:
    """Registered components in the order they registered, a page at a time."""
    http.require_role(request, "admin")
    paging.check_query(request.query, paging.PAGE_PARAMS)
    page = paging.parse(request.query)
    async with state_of(request).db.read() as session:
        rows, nxt = await paging.fetch(session, select(Component), [Component.registered_at, Component.component_id],
                                       page)
        health = await alerts.health_by_source(session)
        states = await revocation.states_of(session, rows)
    return web.json_response({"items": [{**components.component_view(c), "health": health.get(c.component_id, "ok"),
                                         "state": states[c.component_id]} for c in rows], "next": nxt})


def add_routes(app: web.Application) -> None:
    components.install_writer(app)  # group commit of heartbeats (its flusher task lives with the app)
    app.router.add_get("/v1/ping", get_ping)
    app.router.add_post("/v1/heartbeat", post_heartbeat)
    app.router.add_get("/v1/settings", get_settings)
    app.router.add_get("/v1/components", get_components)
