"""``GET /metrics``: the CS's Prometheus series, read from the database at scrape time.

Who may scrape: the admin certificate or an operator session (``admin``, or ``reader`` — a GET);
component certificates get 403, nobody 401 (the auth middleware, common/http.py). The path is
Prometheus's default, outside ``/v1``: the OpenAPI document (JSON routes) does not list it.

| series | kind | labels |
|---|---|---|
| ``drlab_component_heartbeat_age_seconds`` (since the last heartbeat) | gauge | role, host, component |
| ``drlab_components`` | gauge | role |
| ``drlab_disk_rpo_seconds`` (now - the latest point the MT reported; cs/health's RPO) | gauge | machine, disk |
| ``drlab_disk_rpo_threshold_seconds`` (the machine's policy, else the default) | gauge | machine, disk |
| ``drlab_disks`` | gauge | state |
| ``drlab_jobs`` | gauge | state, kind |
| ``drlab_alerts_active`` (open alerts) | gauge | severity |
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from common import http, promexport
from cs.api import spec
from cs.db.models import Alert, Component, Disk, Job
from cs.health import engine as health
from cs.state import CSState, state_of

NS = 1e9
SEVERITIES = ("warning", "critical")


async def _counts(session: AsyncSession, *columns: Any) -> dict[tuple[str, ...], float]:
    rows = (await session.execute(select(*columns, func.count()).group_by(*columns))).all()
    return {tuple(str(v) for v in row[:-1]): float(row[-1]) for row in rows}


async def families(state: CSState, now_ns: int) -> list[Any]:
    """Every CS series at ``now_ns``, from one read transaction."""
    async with state.db.read() as session:
        comps = {c.component_id: c for c in (await session.scalars(select(Component))).all()}
        rpo = await health.rpo_inputs(session, state.cfg.health, comps)
        disks = await _counts(session, Disk.state)
        jobs = await _counts(session, Job.state, Job.kind)
        alerts = await _open_alerts(session)
    ages = {(c.role, c.host_id, c.component_id): max(0.0, (now_ns - (c.last_heartbeat or c.registered_at)) / NS)
            for c in comps.values()}
    roles: dict[tuple[str, ...], float] = {}
    for c in comps.values():
        roles[(c.role,)] = roles.get((c.role,), 0.0) + 1
    rpo_s = {(m, d.disk_id): max(0.0, (now_ns - d.point_ns) / NS) for m, items in rpo.items() for d in items}
    thresholds = {(m, d.disk_id): d.threshold_s for m, items in rpo.items() for d in items}
    g = promexport.gauge
    return [
        g("drlab_component_heartbeat_age_seconds", "Seconds since the component's last heartbeat "
          "(since its registration if none).", labels=("role", "host", "component"), values=ages),
        g("drlab_components", "Registered components.", labels=("role",), values=roles),
        g("drlab_disk_rpo_seconds", "Now minus the source time of the disk's latest recovery point at the MT.",
          labels=("machine", "disk"), values=rpo_s),
        g("drlab_disk_rpo_threshold_seconds", "The disk's RPO alert threshold (its machine's policy).",
          labels=("machine", "disk"), values=thresholds),
        g("drlab_disks", "Disks by protection state.", labels=("state",), values=disks),
        g("drlab_jobs", "Jobs by state and kind.", labels=("state", "kind"), values=jobs),
        g("drlab_alerts_active", "Open alerts by severity.", labels=("severity",), values=alerts),
    ]


async def _open_alerts(session: AsyncSession) -> dict[tuple[str, ...], float]:
    rows = (await session.execute(select(Alert.severity, func.count()).where(Alert.cleared_ns.is_(None))
                                  .group_by(Alert.severity))).all()
    found: dict[tuple[str, ...], float] = {(str(sev),): float(n) for sev, n in rows}
    return {(sev,): found.get((sev,), 0.0) for sev in SEVERITIES} | found


@spec.route(roles=spec.ADMIN, tags=("metrics",))
async def get_metrics(request: web.Request) -> web.Response:
    """The CS's series in the Prometheus text format (admin certificate or operator session)."""
    http.require_role(request, "admin")
    body = promexport.render_families(await families(state_of(request), time.time_ns()))
    return promexport.response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", get_metrics)
