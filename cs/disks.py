"""Disk operations: agents report and update their disks; the admin protects machines.

Protection puts every unprotected disk of a machine on the PS and the MT with the fewest
assigned disks, with generation 1, a fresh 32-byte key (epoch 1) and state ``enabling``.

Resyncs: every generation a disk gets for a copy has one :class:`Resync` record with its reason
(``initial`` at protection; the agent's or the admin's reason on ``POST .../resync``), start and
end time and what the agent reported (mode, percent, bytes total / compared / sent). A newer
generation supersedes a running record; the agent's ``protected`` for that generation ends it.
Progress about an older generation than the disk's is ignored (a fenced pipeline's last words).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import accounts, diskkeys, protection, release, resize, targets, validate
from cs.db import meta, repo
from cs.db.models import Component, Disk, Machine, Resync
from cs.state import CSState

log = dlog.get("drlab.cs.disks")

STATES = ("unprotected", "enabling", "initial-replication", "protected", "resync", "resync-required",
          "resyncing", "failover-in-progress", "failed-over", "committed", "reprotecting", "failback",
          "failed-back")
FAILOVER_STATES = ("failover-in-progress", "failed-over", "committed")  # an agent's report never changes these
MAX_DISKS = 64
# known reasons: initial, unclean-shutdown, ps-lost, ps-switch, user, verify, target, disk-resize (open-ended)
REASON = re.compile(r"^[a-z][a-z0-9-]{0,31}\Z")
RESYNC_MODES = ("", "copy", "checksum")
MAX_HISTORY = 1000


def disk_view(disk: Disk, last_resync: Resync | None = None) -> dict[str, Any]:
    """The admin's view of a disk (never its key)."""
    return {"disk_id": disk.disk_id, "machine_id": disk.machine_id, "name": disk.name,
            "size_bytes": disk.size_bytes, "generation": disk.generation, "ps_id": disk.ps_id,
            "mt_id": disk.mt_id, "state": disk.state, "percent": disk.percent,
            "bytes_done": disk.bytes_done, "bytes_total": disk.bytes_total,
            "last_resync": resync_view(last_resync) if last_resync is not None else None}


def resync_view(r: Resync) -> dict[str, Any]:
    return {"resync_id": r.resync_id, "disk_id": r.disk_id, "generation": r.generation, "reason": r.reason,
            "state": r.state, "started_ns": r.started_ns, "ended_ns": r.ended_ns, "mode": r.mode,
            "percent": r.percent, "bytes_total": r.bytes_total, "bytes_compared": r.bytes_compared,
            "bytes_sent": r.bytes_sent}


def parse_reason(body: dict[str, Any], default: str) -> str:
    if "reason" not in body:
        return default
    value = body.get("reason")
    if not isinstance(value, str) or not REASON.match(value):
        raise errors.BadRequest("reason must be 1-32 characters of [a-z0-9-], starting with a letter")
    return value


async def start_resync(session: AsyncSession, disk: Disk, reason: str) -> Resync:
    """Record the resync of ``disk``'s current generation (superseding a running one)."""
    now = time.time_ns()
    rows = (await session.scalars(select(Resync).where(Resync.disk_id == disk.disk_id,
                                                       Resync.state == "running"))).all()
    for row in rows:
        if row.generation != disk.generation:
            row.state, row.ended_ns = "superseded", now
    same = next((r for r in rows if r.generation == disk.generation), None)
    if same is not None:
        return same
    record = Resync(resync_id=uuid.uuid4().hex, disk_id=disk.disk_id, generation=disk.generation, reason=reason,
                    state="running", started_ns=now, ended_ns=None, mode="", percent=0.0,
                    bytes_total=disk.size_bytes, bytes_compared=0, bytes_sent=0)
    session.add(record)
    return record


async def latest_resyncs(session: AsyncSession, disk_ids: list[str] | None = None) -> dict[str, Resync]:
    """The newest resync record of each disk (of ``disk_ids``, or all)."""
    newest = select(Resync.disk_id, func.max(Resync.generation).label("gen")).group_by(Resync.disk_id)
    if disk_ids is not None:
        newest = newest.where(Resync.disk_id.in_(disk_ids))
    sub = newest.subquery()
    stmt = select(Resync).join(sub, (Resync.disk_id == sub.c.disk_id) & (Resync.generation == sub.c.gen))
    return {r.disk_id: r for r in (await session.scalars(stmt)).all()}


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
    """Create the machine's new disks (ids are stable per (machine, name)); record size changes (a
    protected disk whose size changed goes ``resync-required`` until disable + enable, cs/resize.py)."""
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
            elif disk.state not in FAILOVER_STATES:  # a protected disk resized: resync-required (cs/resize.py)
                await resize.on_report(session, disk, size)
    return [{"name": name, "disk_id": known[name].disk_id} for name, _ in reported]


async def own_disk(session: AsyncSession, disk_id: str, machine_id: str) -> Disk:
    disk = await session.get(Disk, disk_id)
    if disk is None:
        raise errors.NotFound(f"no disk {disk_id}")
    if disk.machine_id != machine_id:
        raise errors.Forbidden(f"disk {disk_id} does not belong to this machine")
    return disk


@dataclass(frozen=True)
class Progress:
    """An agent's progress report (``generation`` and the resync fields are optional)."""

    state: str
    percent: float
    bytes_done: int
    bytes_total: int
    generation: int | None = None
    reason: str = "unspecified"
    mode: str = ""
    bytes_compared: int = 0
    bytes_sent: int = 0


def parse_progress(body: dict[str, Any]) -> Progress:
    done = validate.integer(body, "bytes_done")
    total = validate.integer(body, "bytes_total")
    base = (validate.choice(body, "state", STATES), validate.number(body, "percent", low=0.0, high=100.0),
            done, total)
    if "generation" not in body:
        return Progress(*base)
    return Progress(*base, generation=validate.integer(body, "generation", low=1),
                    reason=parse_reason(body, "unspecified"),
                    mode=validate.choice(body, "mode", RESYNC_MODES) if "mode" in body else "",
                    bytes_compared=validate.integer(body, "bytes_compared") if "bytes_compared" in body else 0,
                    bytes_sent=validate.integer(body, "bytes_sent") if "bytes_sent" in body else 0)


async def progress(state: CSState, machine_id: str, disk_id: str, values: Progress) -> bool:
    """Record a progress report; False when it is about an older generation (ignored)."""
    async with state.db.write() as session:
        disk = await own_disk(session, disk_id, machine_id)
        if values.generation is not None and values.generation != disk.generation:
            return False
        # the CS's failover operations own these (cs/machine_ops.py); a resized disk waits (cs/resize.py)
        kept = disk.state in FAILOVER_STATES or resize.stopped(disk)
        reported = "reprotecting" if values.state == "initial-replication" and disk.replica_path else values.state
        disk.state, disk.percent, disk.bytes_done, disk.bytes_total = (disk.state if kept else reported,
                                                                       values.percent, values.bytes_done,
                                                                       values.bytes_total)
        if values.generation is not None:
            await _note_resync(session, disk, values)
    return True


async def _note_resync(session: AsyncSession, disk: Disk, values: Progress) -> None:
    record = (await session.scalars(select(Resync).where(Resync.disk_id == disk.disk_id,
                                                         Resync.generation == disk.generation))).first()
    if record is None:
        record = await start_resync(session, disk, values.reason)
    if record.state != "running":
        return
    if values.mode:
        record.mode = values.mode
    record.bytes_total = values.bytes_total
    record.bytes_compared = max(record.bytes_compared, values.bytes_compared)
    record.bytes_sent = max(record.bytes_sent, values.bytes_sent)
    record.percent = values.percent
    if values.state == "protected":
        record.state, record.ended_ns, record.percent = "done", time.time_ns(), 100.0
        log.info("resync_done", disk_id=disk.disk_id, generation=disk.generation, reason=record.reason,
                 mode=record.mode, bytes_total=record.bytes_total, bytes_compared=record.bytes_compared,
                 bytes_sent=record.bytes_sent, seconds=round((record.ended_ns - record.started_ns) / 1e9, 3))


async def resync(state: CSState, machine_id: str | None, disk_id: str, reason: str) -> int:
    """Bump the disk's generation for a resync (``machine_id`` None: the admin asks)."""
    async with state.change() as session:
        if machine_id is None:
            disk = await session.get(Disk, disk_id)
            if disk is None:
                raise errors.NotFound(f"no disk {disk_id}")
        else:
            disk = await own_disk(session, disk_id, machine_id)
        generation = await bump_for_resync(session, disk, reason)
    log.info("resync", disk_id=disk_id, generation=generation, reason=reason,
             by="admin" if machine_id is None else "agent")
    return generation


async def bump_for_resync(session: AsyncSession, disk: Disk, reason: str) -> int:
    """A new generation for ``disk`` (in an open settings-changing transaction) and its record."""
    if disk.ps_id is None:
        raise errors.Conflict(f"disk {disk.disk_id} is not protected")
    await resize.refuse_resync(session, disk)  # only disable + enable clears a resize
    disk.generation += 1
    disk.state, disk.percent, disk.bytes_done = "resync", 0.0, 0
    await start_resync(session, disk, reason)
    return disk.generation


def replicating(disk: Disk) -> bool:
    """Whether the disk replicates now: assigned, and not committed after a failover (a committed
    disk belongs to its failed-over twin until it is protected again, e.g. after failback)."""
    return disk.ps_id is not None and disk.mt_id is not None and disk.state != "committed"


async def protect(state: CSState, machine_id: str, policy: str | None = None,
                  request: targets.ProtectRequest | None = None) -> list[dict[str, Any]]:
    """Protect every disk of the machine, under ``policy`` (default: the default policy), on the
    PS and MT the request names or the CS picks (cs/targets.py), seeded disks by checksum."""
    request = request or targets.ProtectRequest(policy=policy)
    async with state.change() as session:
        machine = await session.get(Component, machine_id)
        if machine is None or machine.role != "agent":
            raise errors.NotFound(f"no machine {machine_id}")
        disks = list(await repo.disks(session, machine_id=machine_id))
        if not disks:
            raise errors.Conflict(f"machine {machine_id} has reported no disks")
        going = await release.going(session, [machine_id, *(d.disk_id for d in disks)], ("disable", "exclude"))
        if going is not None:
            raise errors.Conflict(f"machine {machine_id} has a disable or exclude job in progress (job {going})")
        ps_id, mt_id = await _targets(session, machine, disks, request)
        mt = targets.named(await session.get(Component, mt_id), mt_id, "mt")
        targets.check_seed(request.seed, [d.name for d in disks], mt)
        again = sorted(d.name for d in disks if d.name in request.seed and replicating(d))
        if again:
            raise errors.Conflict(f"disk {again[0]} replicates already: a seed is for a disk being protected")
        excluded = await release.excluded(session, disks)  # excluded disks stay out (POST .../include)
        for disk in disks:
            if not replicating(disk) and disk.disk_id not in excluded:
                await resize.on_enable(session, disk)  # a resized disk: protected at its new size
                _enable(disk, ps_id, mt_id, accounts.load_key(state.cfg.data_dir))
                disk.replica_path = request.seed.get(disk.name)
                await start_resync(session, disk, "initial" if disk.replica_path is None else "seeded")
                await release.on_enable(session, disk, mt_id)  # points kept by a disable: reused or deleted
        await protection.on_protect(session, machine, request.policy)  # the protected item: machine + policy
        last = await latest_resyncs(session, [d.disk_id for d in disks])
        views = [disk_view(d, last.get(d.disk_id)) for d in disks]
    log.info("protected", machine_id=machine_id, ps_id=ps_id, mt_id=mt_id,
             disks=[v["disk_id"] for v in views], seeded=sorted(request.seed))
    return views


async def _targets(session: AsyncSession, machine: Component, disks: list[Disk],
                   request: targets.ProtectRequest) -> tuple[str, str]:
    """The machine's PS and MT: those its protected disks already use, else the named ones, else
    the least loaded (preferring a PS in the machine's site and an MT outside it)."""
    assigned = next((d for d in disks if replicating(d)), None)
    if assigned is not None and assigned.ps_id and assigned.mt_id:
        if request.ps_id not in (None, assigned.ps_id) or request.mt_id not in (None, assigned.mt_id):
            raise errors.Conflict(f"machine {machine.component_id} already replicates through PS {assigned.ps_id} "
                                  f"and MT {assigned.mt_id} (a PS switch moves it)")
        return assigned.ps_id, assigned.mt_id
    site = targets.machine_site(machine, await session.get(Machine, machine.component_id))
    if request.ps_id is not None:
        ps = targets.named(await session.get(Component, request.ps_id), request.ps_id, "ps")
    else:
        ps = targets.pick(list(await repo.components(session, "ps")), await repo.load_by_column(session, "ps_id"),
                          "process server", site=site, same_site=True)
    kept = await release.kept_mt(session, disks) if request.mt_id is None else None
    if kept is not None:  # points a disable kept: the disk resumes on their MT
        return ps.component_id, kept
    if request.mt_id is not None:
        mt = targets.named(await session.get(Component, request.mt_id), request.mt_id, "mt")
    else:
        mt = targets.pick(list(await repo.components(session, "mt")), await repo.load_by_column(session, "mt_id"),
                          "master target", site=site, same_site=False)
    return ps.component_id, mt.component_id


def _enable(disk: Disk, ps_id: str, mt_id: str, sealer: meta.Sealer) -> None:
    disk.ps_id, disk.mt_id = ps_id, mt_id
    disk.generation, disk.key_epoch = disk.generation + 1, disk.key_epoch + 1  # 1, 1 for a new disk
    disk.key_b64 = diskkeys.new(sealer, disk.disk_id)  # sealed at rest (cs/diskkeys.py)
    disk.state, disk.percent, disk.bytes_done, disk.bytes_total = "enabling", 0.0, 0, 0
