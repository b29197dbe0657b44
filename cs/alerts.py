"""The alert store: rows of the ``alerts`` table raised and cleared, pages of them for the admin,
and each component's health (its worst open alert).

The rules that decide what to raise and clear are in cs/health/ (thresholds, windows, codes of
ARCHITECTURE.md §5). :func:`observe` is their hook in the heartbeat's write transaction; the
periodic evaluator (cs/health/monitor.py) covers what happens between heartbeats.

An alert is identified by (code, source component, disk or none); at most one of them is open —
the partial unique index holds it even across CS processes, and :func:`open_alert` /
:func:`close_alert` are written so that two processes racing on one key raise or clear it once.
While a webhook is configured, every raise and clear also writes its event to the outbox
(cs/webhook.py) in the same transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from common import logging as dlog
from common.config import HealthConfig
from cs.db import repo
from cs.db.models import Alert, AlertEvent, Component
from cs.health.rules import RANK
from cs.health.windows import Condition
from cs.state import CSState

log = dlog.get("drlab.cs.alerts")

MAX_PAGE = 1000


def insert_ignoring_conflicts(session: AsyncSession, table: Any) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the session's engine (SQLite or PostgreSQL)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


# -- raise and clear -------------------------------------------------------------------------


async def open_alerts(session: AsyncSession, sources: Collection[str] | None = None) -> list[Alert]:
    """Every open alert, or those of ``sources``."""
    stmt = select(Alert).where(Alert.cleared_ns.is_(None))
    if sources is not None:
        stmt = stmt.where(Alert.source_id.in_(list(sources)))
    return list((await session.scalars(stmt)).all())


async def open_alert(session: AsyncSession, comp: Component, c: Condition, now_ns: int, *,
                     notify: bool = False) -> Alert | None:
    """Raise ``c`` for ``comp``; None if an alert of that key is open already (raised elsewhere)."""
    values = {"code": c.code, "severity": c.severity, "source_id": comp.component_id, "disk_id": c.disk_id,
              "message": c.message, "raised_ns": now_ns, "cleared_ns": None}
    alert_id = (await session.execute(insert_ignoring_conflicts(session, Alert).values(**values)
                                      .returning(Alert.alert_id))).scalar()
    if alert_id is None:
        return None
    alert = Alert(alert_id=alert_id, **values)
    log.warning("alert_raised", code=c.code, severity=c.severity, source=comp.host_id, role=comp.role,
                disk_id=c.disk_id, message=c.message)
    if notify:
        enqueue(session, alert, comp, "raised", now_ns)
    return alert


async def close_alert(session: AsyncSession, alert: Alert, comp: Component | None, now_ns: int, *,
                      notify: bool = False) -> bool:
    """Clear ``alert``; False if it was cleared already (by another CS process)."""
    result = await session.execute(update(Alert).where(Alert.alert_id == alert.alert_id, Alert.cleared_ns.is_(None))
                                   .values(cleared_ns=now_ns).execution_options(synchronize_session=False))
    if not getattr(result, "rowcount", 0):
        return False
    alert.cleared_ns = now_ns
    log.info("alert_cleared", code=alert.code, source=comp.host_id if comp else alert.source_id,
             disk_id=alert.disk_id, lasted_s=round((now_ns - alert.raised_ns) / 1e9, 3))
    if notify:
        enqueue(session, alert, comp, "cleared", now_ns)
    return True


def enqueue(session: AsyncSession, alert: Alert, comp: Component | None, event: str, now_ns: int) -> None:
    """The webhook's outbox row for ``event`` (raised | cleared) of ``alert``."""
    session.add(AlertEvent(alert_id=alert.alert_id, event=event, body=alert_view(alert, comp), created_ns=now_ns,
                           delivered_ns=None, attempts=0, next_attempt_ns=0, lease_until_ns=0, last_error=None))


# -- the heartbeat hooks ---------------------------------------------------------------------


async def observe(session: AsyncSession, comp: Component, metrics: dict[str, Any], now_ns: int,
                  health: HealthConfig | None = None) -> None:
    """Raise and clear ``comp``'s alerts from its heartbeat (inside the heartbeat's transaction)."""
    from cs.health.engine import observe as evaluate  # the rules use this store: imported here

    cfg = health or HealthConfig()
    await evaluate(session, cfg, comp, metrics, now_ns, notify=bool(cfg.webhook_url))


async def observe_many(session: AsyncSession, beats: Sequence[tuple[Component, dict[str, Any], int]],
                       health: HealthConfig | None = None) -> None:
    """:func:`observe` for a batch of heartbeats written in one transaction: ``[(comp, metrics,
    now_ns)]``, one read for the whole batch when every component is healthy."""
    from cs.health.engine import observe_many as evaluate  # the rules use this store: imported here

    cfg = health or HealthConfig()
    await evaluate(session, cfg, beats, notify=bool(cfg.webhook_url))


# -- reading ---------------------------------------------------------------------------------


def alert_view(a: Alert, comp: Component | None) -> dict[str, Any]:
    return {"alert_id": a.alert_id, "code": a.code, "severity": a.severity, "source_id": a.source_id,
            "source_role": comp.role if comp else None, "source_host": comp.host_id if comp else None,
            "disk_id": a.disk_id, "message": a.message, "raised_ns": a.raised_ns, "cleared_ns": a.cleared_ns,
            "active": a.cleared_ns is None}


async def health_by_source(session: AsyncSession) -> dict[str, str]:
    """{component id: its worst open alert's severity} for components with open alerts."""
    rows = await session.execute(select(Alert.source_id, Alert.severity).where(Alert.cleared_ns.is_(None))
                                 .group_by(Alert.source_id, Alert.severity))
    out: dict[str, str] = {}
    for source_id, severity in rows.all():
        if RANK.get(severity, 0) > RANK.get(out.get(source_id, "ok"), 0):
            out[source_id] = severity
    return out


async def listing(state: CSState, *, active: bool | None, limit: int, before: int | None) -> dict[str, Any]:
    """One page of alerts, newest first: ``{items, next}``; ``next`` (a cursor for ``before``) is
    null on the last page."""
    stmt = select(Alert).order_by(Alert.alert_id.desc()).limit(limit + 1)
    if active is not None:
        stmt = stmt.where(Alert.cleared_ns.is_(None) if active else Alert.cleared_ns.is_not(None))
    if before is not None:
        stmt = stmt.where(Alert.alert_id < before)
    async with state.db.read() as session:
        rows = list((await session.scalars(stmt)).all())
        comps = await repo.components_by_id(session, {a.source_id for a in rows[:limit]})
    items = [alert_view(a, comps.get(a.source_id)) for a in rows[:limit]]
    return {"items": items, "next": str(rows[limit - 1].alert_id) if len(rows) > limit else None}
