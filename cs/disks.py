"""Disk operations: agents report and update their disks; the admin protects machines.

Protection puts every unprotected disk of a machine on the PS and the MT with the fewest
assigned disks, with generation 1, a fresh 32-byte key (epoch 1) and state ``enabling``.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import validate
from cs.db import repo
from cs.db.models import Component, Disk
from cs.state import CSState

log = dlog.get("drlab.cs.disks")

STATES = ("unprotected", "enabling", "initial-replication", "protected", "resync", "resync-required",
          "resyncing", "failover-in-progress", "failed-over", "committed", "reprotecting", "failback",
          "failed-back")
MAX_DISKS = 64


def disk_view(disk: Disk) -> dict[str, Any]:
    """The admin's view of a disk (never its key)."""
    return {"disk_id": disk.disk_id, "machine_id": disk.machine_id, "name": disk.name,
            "size_bytes": disk.size_bytes, "generation": disk.generation, "ps_id": disk.ps_id,
            "mt_id": disk.mt_id, "state": disk.state, "percent": disk.percent,
            "bytes_done": disk.bytes_done, "bytes_total": disk.bytes_total}


def parse_reported(body: dict[str, Any]) -> list[tuple[str, int]]:
    items = body.get("disks")
    if not isinstance(items, list) or len(items) > MAX_DISKS:
        raise errors.BadRequest(f"disks must be a list of at most {MAX_DISKS} items")
    out: dict[str, int] = {}
    for item in items:
        if not isinstance(item, dict):
            raise errors.BadRequest("each disk must be an object {name, size_bytes}")
        name = validate.string(item, "name", pattern=validate.NAME)
        if name in out:
            raise errors.BadRequest(f"disk {name} reported twice")
        out[name] = validate.integer(item, "size_bytes", low=1)
    return list(out.items())


async def report(state: CSState, machine_id: str, reported: list[tuple[str, int]]) -> list[dict[str, str]]:
    """Create the machine's new disks (ids are stable per (machine, name)); record size changes."""
    async with state.change() as session:
        known = {d.name: d for d in await repo.disks(session, machine_id=machine_id)}
        for name, size in reported:
            disk = known.get(name)
            if disk is None:
                disk = Disk(disk_id=uuid.uuid4().hex, machine_id=machine_id, name=name, size_bytes=size,
                            generation=0, key_epoch=0, state="unprotected", percent=0.0, bytes_done=0,
                            bytes_total=0)
                session.add(disk)
                known[name] = disk
                log.info("disk_reported", machine_id=machine_id, name=name, disk_id=disk.disk_id, size_bytes=size)
            elif disk.size_bytes != size:
                log.info("disk_resized", disk_id=disk.disk_id, old=disk.size_bytes, new=size)
                disk.size_bytes = size
    return [{"name": name, "disk_id": known[name].disk_id} for name, _ in reported]


async def own_disk(session: AsyncSession, disk_id: str, machine_id: str) -> Disk:
    disk = await session.get(Disk, disk_id)
    if disk is None:
        raise errors.NotFound(f"no disk {disk_id}")
    if disk.machine_id != machine_id:
        raise errors.Forbidden(f"disk {disk_id} does not belong to this machine")
    return disk


def parse_progress(body: dict[str, Any]) -> tuple[str, float, int, int]:
    done = validate.integer(body, "bytes_done")
    total = validate.integer(body, "bytes_total")
    return (validate.choice(body, "state", STATES), validate.number(body, "percent", low=0.0, high=100.0),
            done, total)


async def progress(state: CSState, machine_id: str, disk_id: str, values: tuple[str, float, int, int]) -> None:
    async with state.db.write() as session:
        disk = await own_disk(session, disk_id, machine_id)
        disk.state, disk.percent, disk.bytes_done, disk.bytes_total = values


async def resync(state: CSState, machine_id: str, disk_id: str, reason: str) -> int:
    async with state.change() as session:
        disk = await own_disk(session, disk_id, machine_id)
        if disk.ps_id is None:
            raise errors.Conflict(f"disk {disk_id} is not protected")
        disk.generation += 1
        disk.state, disk.percent, disk.bytes_done = "resync", 0.0, 0
        generation = disk.generation
    log.info("resync", disk_id=disk_id, generation=generation, reason=reason)
    return generation


def _least_loaded(candidates: list[Component], load: dict[str, int], what: str) -> Component:
    if not candidates:
        raise errors.Conflict(f"no {what} is registered")
    return min(candidates, key=lambda c: (load.get(c.component_id, 0), c.registered_at, c.component_id))


async def protect(state: CSState, machine_id: str) -> list[dict[str, Any]]:
    async with state.change() as session:
        machine = await session.get(Component, machine_id)
        if machine is None or machine.role != "agent":
            raise errors.NotFound(f"no machine {machine_id}")
        disks = list(await repo.disks(session, machine_id=machine_id))
        if not disks:
            raise errors.Conflict(f"machine {machine_id} has reported no disks")
        ps_id, mt_id = await _targets(session, disks)
        for disk in disks:
            if disk.ps_id is None:
                _enable(disk, ps_id, mt_id)
        views = [disk_view(d) for d in disks]
    log.info("protected", machine_id=machine_id, ps_id=ps_id, mt_id=mt_id,
             disks=[v["disk_id"] for v in views])
    return views


async def _targets(session: AsyncSession, disks: list[Disk]) -> tuple[str, str]:
    """The machine's PS and MT: those its protected disks already use, else the least loaded."""
    assigned = next((d for d in disks if d.ps_id is not None and d.mt_id is not None), None)
    if assigned is not None and assigned.ps_id and assigned.mt_id:
        return assigned.ps_id, assigned.mt_id
    ps = _least_loaded(list(await repo.components(session, "ps")), await repo.load_by_column(session, "ps_id"),
                       "process server")
    mt = _least_loaded(list(await repo.components(session, "mt")), await repo.load_by_column(session, "mt_id"),
                       "master target")
    return ps.component_id, mt.component_id


def _enable(disk: Disk, ps_id: str, mt_id: str) -> None:
    disk.ps_id, disk.mt_id = ps_id, mt_id
    disk.generation, disk.key_epoch = disk.generation + 1, disk.key_epoch + 1  # 1, 1 for a new disk
    disk.key_b64 = base64.b64encode(secrets.token_bytes(32)).decode()
    disk.state, disk.percent, disk.bytes_done, disk.bytes_total = "enabling", 0.0, 0, 0
