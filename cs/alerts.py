"""Health alerts: rules over heartbeat metrics raise and clear rows of the ``alerts`` table.

Pure core: :func:`conditions` turns one component's heartbeat metrics into the alert conditions
that hold now (None when the metrics do not say, so nothing changes); :func:`reconcile` compares
them with the source's open alerts of the codes the rules own and says what to raise and what to
clear. Shell: :func:`observe` runs in the heartbeat's write transaction; :func:`listing` pages
through alerts for the admin.

Rules (the emulated system's thresholds; more — CPU, memory, heartbeat age, RPO, with their
windows — plug in here as further rules):
- ``ps_throttled``: a PS throttles new batches (507) — ``critical`` and without a disk when the
  whole cache is under its free-space threshold, ``warning`` for one disk over its backlog limit.
  Cleared when the PS's heartbeat says the throttle lifted.

An alert is identified by (code, source component, disk or none); at most one of them is open.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common import logging as dlog
from cs.db import repo
from cs.db.models import Alert, Component
from cs.state import CSState

log = dlog.get("drlab.cs.alerts")

PS_THROTTLED = "ps_throttled"
OWNED_CODES = {"ps": (PS_THROTTLED,)}  # the codes heartbeat rules raise and clear, per role
MAX_PAGE = 1000
_DISK_ID = re.compile(r"^[0-9a-f]{32}$")

Key = tuple[str, str | None]  # (code, disk id)


@dataclass(frozen=True)
class Condition:
    code: str
    severity: str
    disk_id: str | None
    message: str

    @property
    def key(self) -> Key:
        return self.code, self.disk_id


# -- pure rules ------------------------------------------------------------------------------


def conditions(role: str, metrics: dict[str, Any]) -> list[Condition] | None:
    """The conditions ``metrics`` show for a component of ``role``; None: they do not say."""
    if role == "ps":
        return ps_conditions(metrics)
    return None


def ps_conditions(metrics: dict[str, Any]) -> list[Condition] | None:
    throttle = metrics.get("throttle")
    if not isinstance(throttle, dict) or not isinstance(throttle.get("active"), bool):
        return None
    out: list[Condition] = []
    if throttle["active"]:
        out.append(Condition(PS_THROTTLED, "critical", None,
                             f"the process server throttles every disk ({throttle.get('reason', '?')}): cache "
                             f"{_num(throttle.get('free_pct'))} % free, under {_num(throttle.get('threshold_pct'))} %"))
    disks = metrics.get("disks")
    for disk_id, disk in (disks.items() if isinstance(disks, dict) else ()):
        state = disk.get("throttle") if isinstance(disk, dict) else None
        if _DISK_ID.match(str(disk_id)) and isinstance(state, dict) and state.get("active") is True:
            out.append(Condition(PS_THROTTLED, "warning", str(disk_id),
                                 f"the process server throttles disk {disk_id} ({state.get('reason', '?')}): "
                                 f"{_num(disk.get('backlog_bytes'))} bytes not yet at the master target"))
    return out


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else "?"


def reconcile(open_keys: Iterable[Key], wanted: list[Condition]) -> tuple[list[Condition], list[Key]]:
    """(conditions to raise: not open yet, keys to clear: open but no longer wanted)."""
    opened = set(open_keys)
    wanted_keys = {c.key for c in wanted}
    to_raise = list({c.key: c for c in wanted if c.key not in opened}.values())
    return to_raise, sorted(opened - wanted_keys, key=lambda k: (k[0], k[1] or ""))


# -- the shell -------------------------------------------------------------------------------


async def observe(session: AsyncSession, comp: Component, metrics: dict[str, Any], now_ns: int) -> None:
    """Raise and clear ``comp``'s alerts from its heartbeat (inside the heartbeat's transaction)."""
    codes = OWNED_CODES.get(comp.role)
    wanted = conditions(comp.role, metrics) if codes else None
    if codes is None or wanted is None:
        return
    stmt = select(Alert).where(Alert.source_id == comp.component_id, Alert.cleared_ns.is_(None),
                               Alert.code.in_(codes))
    rows = {(a.code, a.disk_id): a for a in (await session.scalars(stmt)).all()}
    to_raise, to_clear = reconcile(rows, wanted)
    for c in to_raise:
        session.add(Alert(code=c.code, severity=c.severity, source_id=comp.component_id, disk_id=c.disk_id,
                          message=c.message, raised_ns=now_ns, cleared_ns=None))
        log.warning("alert_raised", code=c.code, severity=c.severity, source=comp.host_id, disk_id=c.disk_id,
                    message=c.message)
    for key in to_clear:
        alert = rows[key]
        alert.cleared_ns = now_ns
        log.info("alert_cleared", code=alert.code, source=comp.host_id, disk_id=alert.disk_id,
                 lasted_s=round((now_ns - alert.raised_ns) / 1e9, 3))


def alert_view(a: Alert, comp: Component | None) -> dict[str, Any]:
    return {"alert_id": a.alert_id, "code": a.code, "severity": a.severity, "source_id": a.source_id,
            "source_role": comp.role if comp else None, "source_host": comp.host_id if comp else None,
            "disk_id": a.disk_id, "message": a.message, "raised_ns": a.raised_ns, "cleared_ns": a.cleared_ns,
            "active": a.cleared_ns is None}


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
