"""A protected disk was resized: it is ``resync-required`` (reason ``disk_resize``) until protection
is disabled — keeping its recovery points — and enabled again (issue 7, point 7; as documented for
the product: a resized volume sends the machine into a critical state).

Rules:

- The agent reports its disks' sizes (``PUT /v1/machines/self/disks``, at start and whenever it
  sees a disk file's size differ from the size it protects). A protected disk reported at another
  size keeps its protected size (``size_bytes``); it goes ``resync-required`` and a ``meta`` row
  ``disk_resized:{disk_id}`` = ``{"old_size_bytes", "new_size_bytes", "at_ns", "reason"}`` keeps the
  new size; a CRITICAL alert ``disk_resized`` (source: the machine, with the disk) says what to do.
- Replication of the disk stops: it leaves its agent's and its PS's settings documents (the agent
  sends nothing more, the PS accepts no batch of it), it stays in its MT's (its points stay).
  Progress reports of the agent no longer change its state.
- A resync request (the admin's or the agent's) is refused (409, with the rule in the message);
  only disable + enable clears the state.
- Protecting the disk again (after a disable, keeping points or not) protects it at its new size
  (a new generation: a checksum resync against kept points, else a full copy), drops the row and
  clears the alert.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import delete, select

from common import errors
from common import logging as dlog
from cs import alerts
from cs.db import meta
from cs.db.models import Alert, Component, Disk, Meta
from cs.health.windows import Condition

log = dlog.get("drlab.cs.resize")

PREFIX = "disk_resized:"
CODE = "disk_resized"
REASON = "disk_resize"
STATE = "resync-required"


def rule(machine_id: str) -> str:
    """What the admin must do (pure): the documented way out of the state."""
    return (f"disable protection keeping its recovery points (drlab machine disable {machine_id} --keep-points) "
            f"and enable it again (drlab protect {machine_id}); a resync does not clear it")


def message(disk: Disk, old: int, new: int) -> str:
    return (f"disk {disk.name} ({disk.disk_id}) was resized from {old} to {new} bytes: replication of it "
            f"stopped (resync required, reason {REASON}); {rule(disk.machine_id)}")


def stopped(disk: Disk) -> bool:
    """Whether the disk waits for disable + enable after a resize (pure: its state)."""
    return disk.state == STATE


async def record(session: Any, disk_id: str) -> dict[str, Any] | None:
    value = await meta.get(session, PREFIX + disk_id)
    return json.loads(value) if value else None


async def on_report(session: Any, disk: Disk, new_size: int) -> None:
    """The agent reported ``disk`` at ``new_size`` (in a settings-changing transaction): a protected
    disk of another size goes ``resync-required``; an unprotected one takes the size."""
    previous = await record(session, disk.disk_id)
    if previous is None and new_size == disk.size_bytes:
        return
    old = disk.size_bytes
    if disk.ps_id is None:  # unprotected (or disabled after a resize): the size simply follows
        disk.size_bytes = new_size
        if previous is not None:
            await meta.put(session, PREFIX + disk.disk_id, json.dumps({**previous, "new_size_bytes": new_size}))
        log.info("disk_size_changed", disk_id=disk.disk_id, old=old, new=new_size)
        return
    await meta.put(session, PREFIX + disk.disk_id, json.dumps(
        {"old_size_bytes": old, "new_size_bytes": new_size, "at_ns": time.time_ns(), "reason": REASON}))
    if previous is not None and previous.get("new_size_bytes") == new_size:
        return
    disk.state, disk.percent, disk.bytes_done = STATE, 0.0, 0
    log.warning("disk_resized", disk_id=disk.disk_id, machine_id=disk.machine_id, old=old, new=new_size)
    comp = await session.get(Component, disk.machine_id)
    if comp is not None:
        now = time.time_ns()
        current = await _open(session, disk)
        if current is not None:  # resized again: the message says the newest size
            await alerts.close_alert(session, current, comp, now)
        await alerts.open_alert(session, comp, Condition(CODE, "critical", disk.disk_id, message(disk, old, new_size)),
                                now)


async def refuse_resync(session: Any, disk: Disk) -> None:
    """409 for a resync of a disk waiting for disable + enable after a resize."""
    if not stopped(disk):
        return
    found = await record(session, disk.disk_id)
    sizes = f" from {found['old_size_bytes']} to {found['new_size_bytes']} bytes" if found else ""
    raise errors.Conflict(f"disk {disk.disk_id} was resized{sizes}: a resync does not clear that; "
                          f"{rule(disk.machine_id)}")


async def on_enable(session: Any, disk: Disk) -> None:
    """Protection enabled again: the disk takes its new size, the row goes, the alert clears."""
    found = await record(session, disk.disk_id)
    if found is None:
        return
    disk.size_bytes = int(found["new_size_bytes"])
    await session.execute(delete(Meta).where(Meta.key == PREFIX + disk.disk_id))
    current = await _open(session, disk)
    if current is not None:
        await alerts.close_alert(session, current, await session.get(Component, disk.machine_id), time.time_ns())
    log.info("disk_resize_done", disk_id=disk.disk_id, size_bytes=disk.size_bytes)


async def _open(session: Any, disk: Disk) -> Alert | None:
    stmt = select(Alert).where(Alert.code == CODE, Alert.disk_id == disk.disk_id, Alert.cleared_ns.is_(None))
    return (await session.scalars(stmt)).first()
