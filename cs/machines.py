"""Machine-level recovery points and failover: every protected disk of a machine at one W.

The CS holds no recovery points (each disk's MT does), so it asks the MTs through jobs, which they
pull with their settings like any failover job (docs/PROTOCOL.md, "Machine points and failover"):
- a *probe* (kind ``points``) asks one disk's MT for facts about its points: its latest point
  (after applying what is staged, when ``drain``), its newest ``recent`` points, the first point
  with a write after ``time_ns``, its newest point below ``below``;
- a *machine failover* (kind ``machine-failover``; its ``disk_id`` column holds the machine id) runs
  in phases, each a set of child jobs, one per disk; when the last child of a phase has its result
  (posted by the MTs, in the transaction of that post) the next phase starts: ``probe`` (latest
  points, or the first points after the time), then ``below`` (time only: each disk's newest point
  under the bound), then ``failover`` (each disk to ``{"wnum": W}``), then the job succeeds with
  every disk's image at W. Any child failing fails the machine job, with every disk's error.
The choice of W is the pure rule of ``cs/machinepoints.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import machinepoints as mp
from cs import validate
from cs.db import meta, repo
from cs.db.models import Component, Disk, Job
from cs.state import CSState

log = dlog.get("drlab.cs.machines")

MACHINE_KIND = "machine-failover"
PROBE_KIND = "points"
FINAL_STATES = ("succeeded", "failed")
MAX_LIST = 1000  # points per disk in a listing probe (an MT result is at most 256 KiB)
PROBE_TIMEOUT_S = 15.0  # a listing waits this long for every disk's MT
NAMED = ("latest", "latest-processed")


def parse_point(body: dict[str, Any]) -> str | dict[str, int]:
    """``"latest"`` (default), ``"latest-processed"``, ``{"wnum": W}`` or ``{"time_ns": T}``."""
    if set(body) - {"point"}:
        raise errors.BadRequest("a machine failover takes only a point")
    point = body.get("point", "latest")
    if point in NAMED:
        return str(point)
    if isinstance(point, dict) and set(point) == {"wnum"}:
        return {"wnum": validate.integer(point, "wnum", low=1)}
    if isinstance(point, dict) and set(point) == {"time_ns"}:
        return {"time_ns": validate.integer(point, "time_ns", low=1)}
    raise errors.BadRequest('point must be "latest", "latest-processed", {"wnum": int} or {"time_ns": int}')


def is_listing_probe(job: Job) -> bool:
    """A probe made for a listing: it does not hold its disk (a failover may run meanwhile)."""
    return job.kind == PROBE_KIND and bool((job.params or {}).get("listing"))


# -- the phases (pure: results in, next step out) ---------------------------------------------

def first_query(spec: str | dict[str, int]) -> dict[str, Any]:
    if isinstance(spec, dict) and "time_ns" in spec:
        return {"drain": True, "time_ns": spec["time_ns"]}
    return {"drain": spec != "latest-processed"}


def _field(results: dict[str, dict[str, Any]], name: str) -> dict[str, mp.DiskPoint | None]:
    out = {}
    for disk_id, result in results.items():
        if not isinstance(result, dict):
            raise errors.BadRequest(f"disk {disk_id}: the MT's answer is not an object")
        out[disk_id] = mp.DiskPoint.parse_optional(result.get(name))
    return out


def after_probe(spec: str | dict[str, int], results: dict[str, dict[str, Any]]) -> tuple[str, int]:
    """(next phase, its number): ``("failover", W)`` or, for a time, ``("below", bound)``."""
    latests = _field(results, "latest")
    if isinstance(spec, dict) and "wnum" in spec:
        return "failover", mp.check_wnum(latests, spec["wnum"])
    if isinstance(spec, dict) and "time_ns" in spec:
        return "below", mp.time_bound(latests, _field(results, "after"))
    return "failover", mp.latest_wnum(latests)


def failover_outcome(wnum: int, names: dict[str, str], children: dict[str, str],
                     results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The machine job's result from its disks' failover results (each checked to be at W)."""
    disks, accuracies, times = [], [], []
    for disk_id, result in sorted(results.items(), key=lambda kv: names.get(kv[0], kv[0])):
        point = result.get("point") if isinstance(result, dict) else None
        if not isinstance(point, dict) or not isinstance(point.get("wnum_hi"), int) or point["wnum_hi"] > wnum \
                or point.get("accuracy") not in mp.ACCURACY_RANK or not isinstance(result.get("image_path"), str):
            raise errors.BadRequest(f"disk {disk_id}: the MT's failover result is not a point at or before {wnum}")
        accuracies.append(str(point["accuracy"]))
        times.append(int(point.get("t_last_ns") or 0))
        disks.append({"disk_id": disk_id, "name": names.get(disk_id, ""), "job_id": children.get(disk_id),
                      "image_path": result["image_path"], "point": point})
    return {"wnum": wnum, "t_ns": max(times, default=0), "accuracy": mp.worst(accuracies), "disks": disks}


# -- the shell: jobs in the database --------------------------------------------------------

async def _machine_disks(session: AsyncSession, machine_id: str) -> list[Disk]:
    machine = await session.get(Component, machine_id)
    if machine is None or machine.role != "agent":
        raise errors.NotFound(f"no machine {machine_id}")
    disks = [d for d in await repo.disks(session, machine_id=machine_id) if d.mt_id is not None]
    if not disks:
        raise errors.Conflict(f"machine {machine_id} has no protected disk")
    return disks


def _new_job(kind: str, target: str, params: dict[str, Any], now: int, state: str = "queued") -> Job:
    return Job(job_id=uuid.uuid4().hex, kind=kind, disk_id=target, state=state, params=params, result=None,
               error=None, created_ns=now, updated_ns=now)


def _children(session: AsyncSession, parent: Job, phase: str, point: Any, now: int) -> dict[str, str]:
    kind = "failover" if phase == "failover" else PROBE_KIND
    out = {}
    for disk_id in sorted(parent.params["disks"]):
        child = _new_job(kind, disk_id, {"point": point, "parent": parent.job_id, "phase": phase}, now)
        session.add(child)
        out[disk_id] = child.job_id
    return out


async def failover(state: CSState, machine_id: str, spec: str | dict[str, int]) -> str:
    """Queue a machine failover (202): refused (409) while any of its disks has a job going."""
    now = time.time_ns()
    async with state.change() as session:
        disks = await _machine_disks(session, machine_id)
        busy = [d.name for d in disks if any(not is_listing_probe(j)
                                               for j in await repo.active_jobs_for_disk(session, d.disk_id))]
        if busy or await repo.active_jobs_for_disk(session, machine_id):
            raise errors.Conflict(f"machine {machine_id} has a job in progress (disks: {', '.join(busy) or '-'})")
        parent = _new_job(MACHINE_KIND, machine_id, {}, now, state="running")
        params: dict[str, Any] = {"machine_id": machine_id, "point": spec, "phase": "probe",
                                  "disks": {d.disk_id: d.name for d in disks}}
        parent.params = params
        session.add(parent)
        params["children"] = _children(session, parent, "probe", first_query(spec), now)
        parent.params = dict(params)
    log.info("machine_failover_queued", job_id=parent.job_id, machine_id=machine_id, point=spec, disks=len(disks))
    return parent.job_id


async def child_finished(session: AsyncSession, child: Job) -> None:
    """Called in the transaction that stored ``child``'s final state: when it was the last child
    of its machine job's phase, start the next phase or finish the machine job."""
    parent_id = (child.params or {}).get("parent")
    if child.kind not in (PROBE_KIND, "failover") or not parent_id:
        return
    parent = await session.get(Job, parent_id)
    if parent is None or parent.kind != MACHINE_KIND or parent.state in FINAL_STATES:
        return
    params = dict(parent.params)
    children: dict[str, str] = params.get("children", {})
    if child.job_id not in children.values():
        return  # a child of an earlier phase
    jobs = {d: await session.get(Job, j) for d, j in children.items()}
    if any(j is None or j.state not in FINAL_STATES for j in jobs.values()):
        return
    now = time.time_ns()
    failed = {d: j.error for d, j in jobs.items() if j is not None and j.state == "failed"}
    if failed:
        names = params["disks"]
        _finish(parent, now, error="; ".join(f"disk {names.get(d, d)} ({d}): {e}" for d, e in sorted(failed.items())))
        return
    results = {d: (j.result or {}) for d, j in jobs.items() if j is not None}
    try:
        _advance(session, parent, params, results, now)
    except errors.DrlabError as exc:
        _finish(parent, now, error=f"{params['phase']}: {exc.message}")


def _advance(session: AsyncSession, parent: Job, params: dict[str, Any], results: dict[str, dict[str, Any]],
             now: int) -> None:
    spec, phase = params["point"], params["phase"]
    if phase == "probe":
        params["latest"] = {d: (r.get("latest") or {}).get("wnum_hi") for d, r in results.items()}
        phase, number = after_probe(spec, results)
    elif phase == "below":
        phase, number = "failover", mp.time_wnum(_field(results, "below"), int(params["bound"]))
    else:
        outcome = failover_outcome(int(params["wnum"]), params["disks"], params["children"], results)
        _finish(parent, now, result={"machine_id": params["machine_id"], "point": spec,
                                     "latest": params.get("latest", {}), **outcome})
        return
    if phase == "below":
        params["bound"] = number
        point: Any = {"drain": False, "below": number}
    else:
        params["wnum"] = number
        point = {"wnum": number}
    params["phase"] = phase
    params["children"] = _children(session, parent, phase, point, now)
    parent.params, parent.updated_ns = params, now
    log.info("machine_failover_phase", job_id=parent.job_id, phase=phase, number=number)


def _finish(parent: Job, now: int, *, result: dict[str, Any] | None = None, error: str | None = None) -> None:
    parent.state = "failed" if error is not None else "succeeded"
    parent.result, parent.error, parent.updated_ns, parent.ended_ns = result, error, now, now
    log.info("machine_failover_finished", job_id=parent.job_id, state=parent.state,
             wnum=(result or {}).get("wnum"), error=error)


# -- listing ---------------------------------------------------------------------------------

async def points(state: CSState, machine_id: str, limit: int, timeout_s: float | None = None) -> dict[str, Any]:
    """The machine's newest ``limit`` consistent points (oldest first), from each disk's newest
    ``limit`` points, asked of the MTs by listing probes (deleted once answered)."""
    timeout_s = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    now = time.time_ns()
    async with state.change() as session:
        disks = await _machine_disks(session, machine_id)
        probes = {d.disk_id: _new_job(PROBE_KIND, d.disk_id, {"point": {"recent": limit}, "listing": True}, now)
                  for d in disks}
        session.add_all(probes.values())
    names = {d.disk_id: d.name for d in disks}
    jobs = await _wait_final(state, [j.job_id for j in probes.values()], timeout_s)
    failed = {d: j.error for d, j in zip(probes, jobs, strict=True) if j.state != "succeeded"}
    if failed:
        raise errors.Unavailable("; ".join(f"disk {names[d]}: {e}" for d, e in sorted(failed.items())))
    results = {d: j.result or {} for d, j in zip(probes, jobs, strict=True)}
    windows, latests = {}, {}
    for disk_id, result in results.items():
        items = result.get("points")
        if not isinstance(items, list):
            raise errors.Unavailable(f"disk {names[disk_id]}: the MT's answer has no points")
        windows[disk_id] = mp.Window([mp.DiskPoint.parse(p) for p in items])
        latests[disk_id] = mp.DiskPoint.parse_optional(result.get("latest"))
    top = None if any(p is None for p in latests.values()) else mp.latest_wnum(latests)
    return {"machine_id": machine_id, "latest_wnum": top,
            "disks": [{"disk_id": d, "name": names[d], "latest": p.public() if p else None}
                      for d, p in sorted(latests.items(), key=lambda kv: names[kv[0]])],
            "items": [p.public() for p in mp.listing(windows, limit)]}


async def _wait_final(state: CSState, job_ids: Sequence[str], timeout_s: float) -> list[Job]:
    """The jobs once all are final; on timeout the others fail (``expired``), and the answer is 503."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        async with state.db.read() as session:
            version = await meta.settings_version(session)
            rows = {j.job_id: j for j in (await session.scalars(select(Job).where(Job.job_id.in_(job_ids)))).all()}
        jobs = [rows[j] for j in job_ids if j in rows]
        if len(jobs) == len(job_ids) and all(j.state in FINAL_STATES for j in jobs):
            async with state.db.write() as session:  # answered: a listing keeps no record
                await session.execute(delete(Job).where(Job.job_id.in_(job_ids)))
            return jobs
        if loop.time() >= deadline:
            await _expire(state, job_ids, timeout_s)
            raise errors.Unavailable(f"the master target did not answer within {timeout_s:.0f} s")
        await state.watch.wait_newer(version, deadline - loop.time())


async def _expire(state: CSState, job_ids: Sequence[str], timeout_s: float) -> None:
    now = time.time_ns()
    async with state.change() as session:
        for job in (await session.scalars(select(Job).where(Job.job_id.in_(job_ids)))).all():
            if job.state not in FINAL_STATES:
                job.state, job.error, job.updated_ns = "failed", f"expired: no answer within {timeout_s:.0f} s", now
