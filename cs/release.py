"""Disable protection of a machine, exclude one disk: the disk leaves protection.

A released disk leaves the settings documents of its agent, its PS and its MT (docs/PROTOCOL.md,
"Releasing a disk"): ``ps_id``, ``mt_id`` and its key are cleared, its state is ``unprotected``,
its running resync is ``cancelled``, a PS switch's drain of it ends. Its generation stays, so
enabling it again starts a newer one.

Where its points are is kept in a ``meta`` row ``released_disk:{disk_id}`` =
``{"mt_id", "keep_points", "excluded", "at_ns"}``:

- ``keep_points`` true: the MT keeps the replica, journal and catalog rows. Protecting the disk
  again prefers that MT (when the machine has no other protected disk on another MT); the MT
  reopens them and the agent's new generation compares block hashes against the kept replica
  (only differing blocks are sent); the old points are listed again with the new ones. Protected
  on another MT instead, the kept files are no longer of use: the row turns into a delete.
- ``keep_points`` false: the MT's settings document lists the disk under ``delete_disks`` and
  the MT deletes its files and points (idempotent). The row stays (it is tiny) until the disk is
  protected again on that MT, which drops it (an MT that was down all along then reopens what it
  had: the new generation's hash compare makes it right).

An excluded disk stays out: ``protect`` of its machine leaves it alone (a machine's new disk
starts its initial replication alone) until ``POST /v1/disks/{id}/include`` (its record's
``excluded`` flag) protects it again.

Each is a job of the CS job runner (cs/release_jobs.py: ``machine-disable-protection``,
``disk-exclude``, ``disk-include``); the checks below run at the request, in its transaction (a
refused request changes nothing and queues no job; 202 means the job is queued), and again in the
job's first step (something may have changed meanwhile: the job then fails with the message).

Refusals: an unknown machine or disk is 404; a disk or machine with a job in progress is 409 (a
failover must end first; a queued release job counts); excluding a disk that is not protected,
or the machine's last protected disk, is 409 (disable the machine instead); including a disk
that is not excluded is 409. Disabling a machine that is not protected is a no-op (the job
releases nothing), except that ``keep_points: false`` then turns points kept by an earlier
disable into deletes.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import disks as cs_disks
from cs import machines, protection
from cs.db import meta, repo
from cs.db.models import Component, Disk, DiskDrain, Machine, Meta, Resync
from cs.state import CSState

log = dlog.get("drlab.cs.release")

PREFIX = "released_disk:"
KINDS = {"disable": "machine-disable-protection", "exclude": "disk-exclude", "include": "disk-include"}


def parse_body(body: dict[str, Any]) -> bool:
    """``{}`` or ``{"keep_points": bool}`` (pure): the keep_points flag, false by default."""
    unknown = sorted(set(body) - {"keep_points"})
    if unknown:
        raise errors.BadRequest(f"unknown field {unknown[0][:64]!r}; known: keep_points")
    value = body.get("keep_points", False)
    if not isinstance(value, bool):
        raise errors.BadRequest("keep_points must be true or false")
    return value


async def records(session: AsyncSession) -> dict[str, dict[str, Any]]:
    """disk id -> its release record."""
    rows = (await session.scalars(select(Meta).where(Meta.key.like(f"{PREFIX}%")))).all()
    out = {}
    for row in rows:
        try:
            out[row.key[len(PREFIX):]] = dict(json.loads(row.value))
        except (ValueError, TypeError):
            log.error("release_record_unreadable", key=row.key)
    return out


async def _record(session: AsyncSession, disk_id: str) -> dict[str, Any] | None:
    value = await meta.get(session, PREFIX + disk_id)
    return dict(json.loads(value)) if value else None


async def _put(session: AsyncSession, disk_id: str, mt_id: str, keep_points: bool, excluded: bool) -> None:
    await meta.put(session, PREFIX + disk_id, json.dumps({"mt_id": mt_id, "keep_points": keep_points,
                                                          "excluded": excluded, "at_ns": time.time_ns()}))


async def excluded(session: AsyncSession, disks: list[Disk]) -> set[str]:
    """Which of these disks were excluded (protect leaves them out until included again)."""
    out = set()
    for disk in disks:
        record = await _record(session, disk.disk_id)
        if record and record.get("excluded"):
            out.add(disk.disk_id)
    return out


async def delete_disks(session: AsyncSession, mt_id: str) -> list[str]:
    """The released disks whose files ``mt_id`` must delete (its settings document)."""
    found = await records(session)
    return sorted(d for d, r in found.items() if r.get("mt_id") == mt_id and not r.get("keep_points"))


async def kept_mt(session: AsyncSession, disks: list[Disk]) -> str | None:
    """The MT holding kept points of one of these disks, if it is still registered."""
    for disk in disks:
        record = await _record(session, disk.disk_id)
        if record and record.get("keep_points") and isinstance(record.get("mt_id"), str):
            comp = await session.get(Component, record["mt_id"])
            if comp is not None and comp.role == "mt":
                return str(record["mt_id"])
    return None


async def on_enable(session: AsyncSession, disk: Disk, mt_id: str) -> None:
    """Protection enabled again on ``mt_id``: drop the record (that MT reopens what it kept), or
    turn kept points on another MT into a delete."""
    record = await _record(session, disk.disk_id)
    if record is None:
        return
    if record.get("mt_id") == mt_id:
        await session.execute(delete(Meta).where(Meta.key == PREFIX + disk.disk_id))
        log.info("kept_points_reused", disk_id=disk.disk_id, mt_id=mt_id, kept=bool(record.get("keep_points")))
    elif record.get("keep_points"):
        await _put(session, disk.disk_id, str(record.get("mt_id")), False, False)
        log.info("kept_points_dropped", disk_id=disk.disk_id, old_mt_id=record.get("mt_id"), mt_id=mt_id)


async def _check_idle(session: AsyncSession, ids: list[str], own: str | None = None) -> None:
    """409 if one of ``ids`` (machine or disk) has a job in progress other than ``own``."""
    for target in ids:
        if any(not machines.is_listing_probe(j) and j.job_id != own
               for j in await repo.active_jobs_for_disk(session, target)):
            raise errors.Conflict(f"{target} has a job in progress; wait for it or cancel it first")


async def _release(session: AsyncSession, disk: Disk, keep_points: bool, exclude: bool) -> None:
    """Take the disk out of every settings document (in a settings-changing transaction)."""
    now = time.time_ns()
    await _put(session, disk.disk_id, str(disk.mt_id), keep_points, exclude)
    for row in (await session.scalars(select(Resync).where(Resync.disk_id == disk.disk_id,
                                                           Resync.state == "running"))).all():
        row.state, row.ended_ns = "cancelled", now
    await session.execute(delete(DiskDrain).where(DiskDrain.disk_id == disk.disk_id))
    log.info("disk_released", disk_id=disk.disk_id, machine_id=disk.machine_id, ps_id=disk.ps_id, mt_id=disk.mt_id,
             generation=disk.generation, keep_points=keep_points)
    disk.ps_id = disk.mt_id = disk.key_b64 = None
    disk.replica_path = None  # a seed is for one protection (cs/targets.py)
    disk.state, disk.percent, disk.bytes_done, disk.bytes_total = "unprotected", 0.0, 0, 0


def _protected(disk: Disk) -> bool:
    return disk.ps_id is not None or disk.mt_id is not None


async def _result(session: AsyncSession, machine_id: str, released: list[str], keep_points: bool) -> dict[str, Any]:
    all_disks = list(await repo.disks(session, machine_id=machine_id))
    last = await cs_disks.latest_resyncs(session, [d.disk_id for d in all_disks])
    return {"machine_id": machine_id, "keep_points": keep_points, "released": released,
            "protection_state": protection.machine_state(d.state for d in all_disks),
            "disks": [cs_disks.disk_view(d, last.get(d.disk_id)) for d in all_disks]}


# -- checks at the request (in the request's transaction: a refusal changes nothing) -------------

async def check_disable(session: AsyncSession, machine_id: str) -> None:
    """404 unknown machine; 409 a job in progress on it or on one of its protected disks."""
    await protection.agent_or_404(session, machine_id)
    protected = [d.disk_id for d in await repo.disks(session, machine_id=machine_id) if _protected(d)]
    await _check_idle(session, [machine_id, *protected])


async def check_exclude(session: AsyncSession, disk_id: str, own: str | None = None) -> Disk:
    """404 unknown disk; 409 a disk not protected, the machine's last protected disk (a disk
    whose exclude is queued counts as gone already) or a job in progress."""
    disk = await session.get(Disk, disk_id)
    if disk is None:
        raise errors.NotFound(f"no disk {disk_id}")
    if not _protected(disk):
        raise errors.Conflict(f"disk {disk_id} is not protected")
    others = [d for d in await repo.disks(session, machine_id=disk.machine_id)
              if d.disk_id != disk_id and _protected(d) and not await _leaving(session, d.disk_id, own)]
    if not others:
        raise errors.Conflict(f"disk {disk_id} is the last protected disk of its machine: disable protection "
                              "of the machine instead")
    await _check_idle(session, [disk.machine_id, disk_id], own)
    return disk


async def _leaving(session: AsyncSession, disk_id: str, own: str | None) -> bool:
    jobs = await repo.active_jobs_for_disk(session, disk_id)
    return any(j.kind == KINDS["exclude"] and j.job_id != own for j in jobs)


async def check_include(session: AsyncSession, disk_id: str) -> Disk:
    """404 unknown disk; 409 a disk not excluded, or a job in progress on it or its machine."""
    disk = await session.get(Disk, disk_id)
    if disk is None:
        raise errors.NotFound(f"no disk {disk_id}")
    record = await _record(session, disk_id)
    if not record or not record.get("excluded"):
        raise errors.Conflict(f"disk {disk_id} is not excluded")
    await _check_idle(session, [disk.machine_id, disk_id])
    return disk


# -- the settings changes (the first step of their jobs, cs/release_jobs.py) --------------------

async def disable_in(session: AsyncSession, machine_id: str, keep_points: bool,
                     own: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Every protected disk of the machine leaves protection; the machine is no protected item.
    The result and, for each released disk, the MT that held it."""
    await protection.agent_or_404(session, machine_id)
    all_disks = list(await repo.disks(session, machine_id=machine_id))
    protected = [d for d in all_disks if _protected(d)]
    await _check_idle(session, [machine_id, *(d.disk_id for d in protected)], own)
    mts = {d.disk_id: d.mt_id for d in protected if d.mt_id is not None}
    for disk in protected:
        await _release(session, disk, keep_points, False)
    if not keep_points:  # an earlier disable's kept points go too
        for disk in all_disks:
            record = await _record(session, disk.disk_id)
            if disk not in protected and record and record.get("keep_points"):
                await _put(session, disk.disk_id, str(record.get("mt_id")), False, bool(record.get("excluded")))
    row = await session.get(Machine, machine_id)
    if row is not None:
        row.policy_name, row.protected_ns, row.updated_ns = None, None, time.time_ns()
    await session.flush()
    result = await _result(session, machine_id, [d.disk_id for d in protected], keep_points)
    log.info("protection_disabled", machine_id=machine_id, keep_points=keep_points, released=result["released"])
    return result, mts


async def exclude_in(session: AsyncSession, disk_id: str, keep_points: bool,
                     own: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """One disk leaves protection; the machine's other disks keep replicating."""
    disk = await check_exclude(session, disk_id, own)
    mts = {disk_id: disk.mt_id} if disk.mt_id is not None else {}
    await _release(session, disk, keep_points, True)
    await session.flush()
    result = await _result(session, disk.machine_id, [disk_id], keep_points)
    log.info("disk_excluded", disk_id=disk_id, machine_id=disk.machine_id, keep_points=keep_points)
    return result, mts


async def include_in(session: AsyncSession, disk_id: str) -> tuple[str, bool]:
    """The disk is no longer excluded (idempotent); its machine id and whether that machine is
    protected (then the caller protects the disk: cs/disks.py ``protect``)."""
    disk = await session.get(Disk, disk_id)
    if disk is None:
        raise errors.NotFound(f"no disk {disk_id}")
    record = await _record(session, disk_id)
    if record and record.get("excluded"):
        await _put(session, disk_id, str(record.get("mt_id")), bool(record.get("keep_points")), False)
    row = await session.get(Machine, disk.machine_id)
    return disk.machine_id, row is not None and row.policy_name is not None


async def result_of(state: CSState, machine_id: str) -> dict[str, Any]:
    """The machine's disks now (the result of an include)."""
    async with state.db.read() as session:
        return await _result(session, machine_id, [], False)


async def going(session: AsyncSession, target_ids: list[str],
                ops: tuple[str, ...] = ("disable", "exclude", "include")) -> str | None:
    """The id of a release job (of ``ops``) queued or running on any of the targets (a machine id
    or disk ids), else None: other operations wait for it (409)."""
    kinds = {KINDS[op] for op in ops}
    for target in target_ids:
        for job in await repo.active_jobs_for_disk(session, target):
            if job.kind in kinds:
                return job.job_id
    return None
