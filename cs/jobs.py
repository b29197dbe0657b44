"""Jobs: failover requests for an MT, and the results it posts back.

A failover job is created ``queued``; it shows in its disk's MT settings document while it is
queued or running; the MT posts ``succeeded`` or ``failed``. Posting the same final state
again is a no-op (the MT retries on lost replies); another state for a finished job is 409.
The result that finishes the last child job of a machine failover's phase starts its next phase,
in the same transaction (cs/machines.py).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import machine_ops, machines, validate
from cs.db import repo
from cs.db.models import Disk, Job
from cs.state import CSState

log = dlog.get("drlab.cs.jobs")

FINAL_STATES = ("succeeded", "failed")
MAX_ERROR_CHARS = 4000


def job_view(job: Job) -> dict[str, Any]:
    view = {"job_id": job.job_id, "kind": job.kind, "disk_id": job.disk_id, "state": job.state,
            "params": job.params, "result": job.result, "error": job.error, "created_ns": job.created_ns,
            "updated_ns": job.updated_ns, "steps": list(job.steps or []), "percent": float(job.percent or 0.0),
            "started_ns": job.started_ns, "ended_ns": job.ended_ns, "claimed_by": job.claimed_by,
            "lease_until_ns": job.lease_until_ns, "attempts": int(job.attempts or 0)}
    if job.kind == machines.MACHINE_KIND:  # its disk_id column holds the machine id
        view["machine_id"], view["disk_id"] = job.disk_id, None
    return view


NAMED_POINTS = ("latest", "latest-processed", "latest-app-consistent", "latest-multi-machine")
MAX_TAG_BYTES = 4096  # common.wire.batch.MAX_TAG_LEN


def parse_point(body: dict[str, Any]) -> str | dict[str, Any]:
    point = body.get("point", "latest")
    if point in NAMED_POINTS:
        return str(point)
    if isinstance(point, dict) and set(point) == {"time_ns"}:
        return {"time_ns": validate.integer(point, "time_ns", low=1)}
    if isinstance(point, dict) and set(point) == {"wnum"}:  # a machine boundary (machine points)
        return {"wnum": validate.integer(point, "wnum", low=1)}
    if isinstance(point, dict) and set(point) == {"gen", "seq"}:  # one batch's point
        return {"gen": validate.integer(point, "gen", low=1), "seq": validate.integer(point, "seq", low=1)}
    if isinstance(point, dict) and set(point) == {"tag"}:  # a bookmark (docs/PROTOCOL.md, Bookmarks)
        tag = point["tag"]
        if not isinstance(tag, str) or not 1 <= len(tag.encode()) <= MAX_TAG_BYTES:
            raise errors.BadRequest(f"tag must be a string of 1 to {MAX_TAG_BYTES} bytes")
        return {"tag": tag}
    raise errors.BadRequest(f'point must be one of {", ".join(NAMED_POINTS)}, {{"time_ns": int}}, {{"wnum": int}}, '
                            '{"gen": int, "seq": int} or {"tag": str}')


async def failover(state: CSState, disk_id: str, point: str | dict[str, Any], image: bool = False) -> str:
    """Queue a disk's failover job; ``image``: its MT also writes the view's image file (the job
    then takes time in proportion to the data; without it the job succeeds once the view is made)."""
    now = time.time_ns()
    async with state.change() as session:
        disk = await session.get(Disk, disk_id)
        if disk is None:
            raise errors.NotFound(f"no disk {disk_id}")
        if disk.mt_id is None or disk.state == "committed":
            raise errors.Conflict(f"disk {disk_id} is not protected ({disk.state})")
        if any(not machines.is_listing_probe(j) for j in await repo.active_jobs_for_disk(session, disk_id)):
            raise errors.Conflict(f"disk {disk_id} already has a job in progress")
        await _no_machine_operation(session, disk)
        job = Job(job_id=uuid.uuid4().hex, kind="failover", disk_id=disk_id, state="queued",
                  params={"point": point, **({"image": True} if image else {})}, result=None, error=None,
                  created_ns=now, updated_ns=now)
        session.add(job)
    log.info("failover_queued", job_id=job.job_id, disk_id=disk_id, point=point, mt_id=disk.mt_id, image=image)
    return job.job_id


async def _no_machine_operation(session: AsyncSession, disk: Disk) -> None:
    """A disk's own failover is refused (409) while an operation on its machine is going (a machine
    failover, cs/machines.py, or a failover operation, cs/machine_ops.py: their ``disk_id`` column
    holds the machine id): the machine's failover owns its disks' views meanwhile."""
    if disk.machine_id is None:
        return
    going = (await session.scalars(select(Job.job_id).where(
        Job.disk_id == disk.machine_id, Job.kind.in_((*machine_ops.KINDS, machines.MACHINE_KIND)),
        Job.state.in_(repo.ACTIVE_JOB_STATES)))).first()
    if going is not None:
        raise errors.Conflict(f"disk {disk.disk_id}: its machine {disk.machine_id} has an operation in progress "
                              f"(job {going})")


async def get(state: CSState, job_id: str) -> dict[str, Any]:
    async with state.db.read() as session:
        job = await session.get(Job, job_id)
        if job is None:
            raise errors.NotFound(f"no job {job_id}")
        return job_view(job)


def parse_cursor(text: str | None) -> tuple[int, str] | None:
    """A listing cursor ``<created_ns>-<job_id>`` (the ``next`` of the previous page)."""
    if text is None:
        return None
    created, _, job_id = text.partition("-")
    if not created.isascii() or not created.isdigit() or len(created) > 19:
        raise errors.BadRequest("before must be a cursor returned as next by a previous page")
    return int(created), validate.hex_id(job_id, "before")


async def listing(state: CSState, *, job_state: str | None, kind: str | None, target_id: str | None,
                  limit: int, before: tuple[int, str] | None) -> dict[str, Any]:
    """One page of jobs, newest first: ``{items, next}`` (``next``: the cursor of the next page, or null)."""
    stmt = select(Job).order_by(Job.created_ns.desc(), Job.job_id.desc()).limit(limit + 1)
    if job_state is not None:
        stmt = stmt.where(Job.state == job_state)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    if target_id is not None:
        stmt = stmt.where(Job.disk_id == target_id)
    if before is not None:
        stmt = stmt.where(tuple_(Job.created_ns, Job.job_id) < tuple_(*before))
    async with state.db.read() as session:
        rows = list((await session.scalars(stmt)).all())
    items = [job_view(j) for j in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return {"items": items, "next": f"{last.created_ns}-{last.job_id}" if last is not None else None}


def parse_result(body: dict[str, Any]) -> tuple[str, dict[str, Any] | None, str | None]:
    final = validate.choice(body, "state", FINAL_STATES)
    result = body.get("result")
    if result is not None and not isinstance(result, dict):
        raise errors.BadRequest("result must be an object")
    error = body.get("error")
    if error is not None and not isinstance(error, str):
        raise errors.BadRequest("error must be a string")
    return final, result, error[:MAX_ERROR_CHARS] if error is not None else None


async def post_result(state: CSState, mt_id: str, job_id: str,
                      outcome: tuple[str, dict[str, Any] | None, str | None]) -> None:
    final, result, error = outcome
    async with state.change() as session:
        job = await session.get(Job, job_id)
        if job is None:
            raise errors.NotFound(f"no job {job_id}")
        disk = await session.get(Disk, job.disk_id)
        if disk is None or disk.mt_id != mt_id:
            raise errors.Forbidden(f"job {job_id} is not for a disk of this master target")
        if job.state in FINAL_STATES:
            if job.state != final:
                raise errors.Conflict(f"job {job_id} already {job.state}")
            return
        job.state, job.result, job.error, job.updated_ns = final, result, error, time.time_ns()
        job.ended_ns = job.updated_ns
        await machines.child_finished(session, job)  # a machine failover's next phase, if it was the last
    log.info("job_finished", job_id=job_id, state=final, error=error)
