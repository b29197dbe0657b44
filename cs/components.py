"""Registered components: who is calling, heartbeats and the admin's list."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from common import errors, http
from cs import alerts
from cs.db import repo
from cs.db.models import Component
from cs.state import CSState, state_of

COMPONENT_ROLES = ("ps", "mt", "agent")
MAX_METRICS_BYTES = 256 * 1024


async def caller(request: web.Request, *roles: str) -> Component:
    """The calling component's row: its certificate must have one of ``roles`` and be known here."""
    ident = http.require_role(request, *roles)
    async with state_of(request).db.read() as session:
        comp = await session.get(Component, ident.component_id)
    if comp is None or comp.role != ident.role:
        raise errors.Unauthorized(f"component {ident.component_id} is not registered here")
    return comp


def component_view(comp: Component) -> dict[str, Any]:
    return {"component_id": comp.component_id, "role": comp.role, "host_id": comp.host_id,
            "address": comp.address, "ports": comp.ports, "version": comp.version,
            "registered_at": comp.registered_at, "last_heartbeat": comp.last_heartbeat, "metrics": comp.metrics}


def parse_metrics(body: dict[str, Any]) -> dict[str, Any]:
    metrics = body.get("metrics", {})
    if not isinstance(metrics, dict):
        raise errors.BadRequest("metrics must be an object")
    if len(json.dumps(metrics)) > MAX_METRICS_BYTES:
        raise errors.TooLarge(f"metrics exceed {MAX_METRICS_BYTES} bytes")
    return metrics


async def heartbeat(state: CSState, component_id: str, metrics: dict[str, Any]) -> int:
    now = time.time_ns()
    async with state.db.write() as session:
        comp = await session.get(Component, component_id)
        if comp is None:
            raise errors.Unauthorized(f"component {component_id} is not registered here")
        comp.last_heartbeat, comp.metrics = now, metrics
        await alerts.observe(session, comp, metrics, now)
    return now


async def listing(state: CSState) -> list[dict[str, Any]]:
    async with state.db.read() as session:
        return [component_view(c) for c in await repo.components(session)]
