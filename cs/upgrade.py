"""Component versions at the configuration server: the registration check and the upgrade-order alerts.

- :func:`check` refuses (409 ``component_newer_than_cs``) a PS, MT or agent newer than this CS, at
  registration, re-registration and certificate renewal, before anything is stored; a malformed
  version is a 400 (common/versions.py).
- :func:`refresh` runs in the transaction that records a component's version and raises or clears
  the warnings of common.versions.advice: ``upgrade_order`` (an MT newer than a PS) and
  ``version_mismatch`` (a PS or MT not at the CS's version), each naming what to upgrade next.
  They clear once the versions are consistent. The health rules do not own these codes, so
  heartbeats leave them alone (cs/health/windows.py).
- :func:`observe_heartbeat` records the ``version`` a heartbeat reports, so a component upgraded
  in place (restarted, not registered again) is seen, checked and warned about the same way.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common import __version__, errors, versions
from common import logging as dlog
from cs import alerts
from cs.db.engine import Database
from cs.db.models import Alert, Component
from cs.health.windows import Condition

log = dlog.get("drlab.cs.upgrade")

CODES = ("upgrade_order", "version_mismatch")
ROLES = ("ps", "mt")  # the roles whose versions the upgrade order is about
SEVERITY = "warning"


def check(role: str, version: str, cs_version: str = __version__) -> None:
    """Raise unless ``version`` parses and is not newer than the CS's."""
    versions.check_not_newer(role, version, cs_version)


async def refresh(session: AsyncSession, cs_version: str = __version__, now_ns: int | None = None) -> None:
    """Raise and clear the upgrade warnings of every PS and MT (inside the caller's write transaction)."""
    now = time.time_ns() if now_ns is None else now_ns
    comps = list((await session.scalars(select(Component).where(Component.role.in_(ROLES)))).all())
    by_id = {c.component_id: c for c in comps}
    due = versions.advice(cs_version, {c.component_id: c.version for c in comps if c.role == "ps"},
                          {c.component_id: c.version for c in comps if c.role == "mt"})
    held = list((await session.scalars(select(Alert).where(Alert.code.in_(CODES), Alert.cleared_ns.is_(None)))).all())
    for alert in held:
        want = due.get(alert.source_id)
        if want is None or want[0] != alert.code or want[1] != alert.message:
            await alerts.close_alert(session, alert, by_id.get(alert.source_id), now)
    for cid, (code, message) in due.items():
        await alerts.open_alert(session, by_id[cid], Condition(code, SEVERITY, None, message), now)


_SEEN: dict[str, str] = {}  # component id -> version this process last saw recorded (ids are never reused)
MAX_SEEN = 1_000_000


def parse_heartbeat_version(body: dict[str, Any]) -> str | None:
    """The optional ``version`` of a heartbeat body (what the component runs now); 400 if malformed."""
    version = body.get("version")
    if version is None:
        return None
    if not isinstance(version, str):
        raise errors.BadRequest("version must be a string")
    versions.parse(version)
    return version


async def observe_heartbeat(db: Database, component_id: str, version: str | None) -> None:
    """Record the version a heartbeat reports (a component upgraded in place restarts without
    registering again): refused (409) when newer than the CS; the upgrade warnings follow. Costs
    one read the first time this process sees a component's version, a write only when it changed."""
    if version is None or _SEEN.get(component_id) == version:
        return
    async with db.read() as session:
        comp = await session.get(Component, component_id)
    if comp is None:
        return  # the heartbeat itself is refused
    check(comp.role, version)
    if comp.version != version:
        async with db.write() as session:
            row = await session.get(Component, component_id)
            if row is not None and row.version != version:
                log.info("component_version_changed", role=row.role, component_id=component_id,
                         old=row.version, new=version)
                row.version = version
                if row.role in ROLES:
                    await refresh(session)
    if len(_SEEN) >= MAX_SEEN:
        _SEEN.clear()
    _SEEN[component_id] = version
