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
  every disk's view at W (and its image file when asked: ``image``). Any child failing fails the
  machine job, with every disk's error.
The choice of W is the pure rule of ``cs/machinepoints.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import machinepoints as mp
from cs import pointnames, validate
from cs.db import meta, repo
from cs.db.models import Component, Disk, Job
from cs.state import CSState

log = dlog.get("drlab.cs.machines")

MACHINE_KIND = "machine-failover"
PROBE_KIND = "points"
FINAL_STATES = ("succeeded", "failed")
MAX_LIST = 1000  # points per disk in a listing probe (an MT result is at most 256 KiB)
PROBE_TIMEOUT_S = 15.0  # a listing waits this long for every disk's MT
NAMED = ("latest", "latest-processed", "latest-app-consistent", "latest-multi-machine")
TAGGED_NAMED = {"latest-app-consistent": "latest_app_consistent", "latest-multi-machine": "latest_multi_machine"}


def parse_point(body: dict[str, Any]) -> str | dict[str, int]:
    """``"latest"`` (default), ``"latest-processed"``, ``"latest-app-consistent"``,
    ``"latest-multi-machine"`` (the W of the newest such tag every disk carries; cs/pointnames.py),
    ``{"wnum": W}`` or ``{"time_ns": T}``."""
    if set(body) - {"point", "image"}:
        raise errors.BadRequest("a machine failover takes only a point (and image)")
    point = body.get("point", "latest")
    if point in NAMED:
        return str(point)
    if isinstance(point, dict) and set(point) == {"wnum"}:
        return {"wnum": validate.integer(point, "wnum", low=1)}
    if isinstance(point, dict) and set(point) == {"time_ns"}:
        return {"time_ns": validate.integer(point, "time_ns", low=1)}
    raise errors.BadRequest(f'point must be one of {", ".join(NAMED)}, {{"wnum": int}} or {{"time_ns": int}}')


def is_listing_probe(job: Job) -> bool:
    """A probe made for a listing: it does not hold its disk (a failover may run meanwhile)."""
    return job.kind == PROBE_KIND and bool((job.params or {}).get("listing"))


# -- the phases (pure: results in, next step out) ---------------------------------------------

def first_query(spec: str | dict[str, int]) -> dict[str, Any]:
    if isinstance(spec, dict) and "time_ns" in spec:
        return {"drain": True, "time_ns": spec["time_ns"]}
    if isinstance(spec, str) and spec in TAGGED_NAMED:  # tagged points (a bookmark's batch may be staged)
        return {"drain": True, "named": True}
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
    if isinstance(spec, str) and spec in TAGGED_NAMED:
        return "failover", mp.check_wnum(latests, pointnames.tagged_wnum(results, TAGGED_NAMED[spec]))
    return "failover", mp.latest_wnum(latests)


def failover_outcome(wnum: int, names: dict[str, str], children: dict[str, str],
                     results: dict[str, dict[str, Any]], image: bool = False) -> dict[str, Any]:
    """The machine job's result from its disks' failover results (each checked to be at W, with an
    ``image_path`` when the failover asked for images)."""
    disks, accuracies, times = [], [], []
    for disk_id, result in sorted(results.items(), key=lambda kv: names.get(kv[0], kv[0])):
        point = result.get("point") if isinstance(result, dict) else None
        if not isinstance(point, dict) or not isinstance(point.get("wnum_hi"), int) or point["wnum_hi"] > wnum \
                or point.get("accuracy") not in mp.ACCURACY_RANK \
                or (image and not isinstance(result.get("image_path"), str)):
            raise errors.BadRequest(f"disk {disk_id}: the MT's failover result is not a point at or before {wnum}")
        accuracies.append(str(point["accuracy"]))
        times.append(int(point.get("t_last_ns") or 0))
        disks.append({"disk_id": disk_id, "name": names.get(disk_id, ""), "job_id": children.get(disk_id),
                      "point": point, **{k: result[k] for k in ("image_path", "nbd_url")
                                         if isinstance(result.get(k), str)}})
    return {"wnum": wnum, "t_ns": max(times, default=0), "accuracy": mp.worst(accuracies), "disks": disks}


# -- the shell: jobs in the database --------------------------------------------------------

async def _machine_disks(session: AsyncSession, machine_id: str) -> list[Disk]:
    machine = await session.get(Component, machine_id)
    if machine is None or machine.role != "agent":
        raise errors.NotFound(f"no machine {machine_id}")
    disks = [d for d in await repo.disks(session, machine_id=machine_id)
             if d.mt_id is not None and d.state != "committed"]  # a committed disk left its MT
    if not disks:
        raise errors.Conflict(f"machine {machine_id} has no protected disk")
    return disks


def _new_job(kind: str, target: str, params: dict[str, Any], now: int, state: str = "queued") -> Job:
    return Job(job_id=uuid.uuid4().hex, kind=kind, disk_id=target, state=state, params=params, result=None,
               error=None, created_ns=now, updated_ns=now)


def _children(session: AsyncSession, parent: Job, phase: str, point: Any, now: int) -> dict[str, str]:
    """One child per disk; the failover phase of a point change (``views``: disk id -> the view a
    failover made) moves each disk's view (``view-change``) instead of making a new one; a failover
    phase child asks for its image file when the machine job does (``image``)."""
    views = parent.params.get("views") or {}
    kind = ("view-change" if views else "failover") if phase == "failover" else PROBE_KIND
    out = {}
    for disk_id in sorted(parent.params["disks"]):
        where = {"view": views[disk_id], "to": point} if kind == "view-change" else point
        image = {"image": True} if phase == "failover" and parent.params.get("image") else {}
        child = _new_job(kind, disk_id, {"point": where, "parent": parent.job_id, "phase": phase, **image}, now)
        session.add(child)
        out[disk_id] = child.job_id
    return out


async def failover(state: CSState, machine_id: str, spec: str | dict[str, int], image: bool = False) -> str:
    """Queue a machine failover (202): refused (409) while any of its disks has a job going."""
    async with state.change() as session:
        return await start(session, machine_id, spec, image=image)


async def start(session: AsyncSession, machine_id: str, spec: str | dict[str, int], *, mode: str | None = None,
                views: dict[str, str] | None = None, owner: str | None = None, image: bool = False) -> str:
    """Queue a machine failover in the caller's transaction. ``mode`` (test|unplanned) is recorded;
    ``views`` makes it a point change of those views; ``owner`` is the operation job that asks
    (cs/machine_ops.py), not counted as a job in progress; ``image``: every disk's image file too."""
    now = time.time_ns()
    disks = await _machine_disks(session, machine_id)
    busy = [d.name for d in disks if any(not is_listing_probe(j)
                                           for j in await repo.active_jobs_for_disk(session, d.disk_id))]
    others = [j for j in await repo.active_jobs_for_disk(session, machine_id) if j.job_id != owner]
    if busy or others:
        raise errors.Conflict(f"machine {machine_id} has a job in progress (disks: {', '.join(busy) or '-'})")
    if views is not None and set(views) != {d.disk_id for d in disks}:
        raise errors.Conflict(f"machine {machine_id}: its protected disks are not those of its failover views")
    parent = _new_job(MACHINE_KIND, machine_id, {}, now, state="running")
    params: dict[str, Any] = {"machine_id": machine_id, "point": spec, "phase": "probe",
                              "disks": {d.disk_id: d.name for d in disks},
                              **({"mode": mode} if mode else {}), **({"views": views} if views else {}),
                              **({"image": True} if image else {})}
    parent.params = params
    session.add(parent)
    params["children"] = _children(session, parent, "probe", first_query(spec), now)
    parent.params = dict(params)
    log.info("machine_failover_queued", job_id=parent.job_id, machine_id=machine_id, point=spec, disks=len(disks),
             mode=mode, change=views is not None, image=image)
    return parent.job_id


async def child_finished(session: AsyncSession, child: Job) -> None:
    """Called in the transaction that stored ``child``'s final state: when it was the last child
    of its machine job's phase, start the next phase or finish the machine job."""
    parent_id = (child.params or {}).get("parent")
    if child.kind not in (PROBE_KIND, "failover", "view-change") or not parent_id:
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
        outcome = failover_outcome(int(params["wnum"]), params["disks"], params.get("views") or params["children"],
                                   results, bool(params.get("image")))  # a disk's view id: the job that made it
        _finish(parent, now, result={"machine_id": params["machine_id"], "point": spec,
                                     "latest": params.get("latest", {}), **outcome,
                                     **({"mode": params["mode"]} if params.get("mode") else {})})
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
    ``limit`` points, asked of the MTs by listing probes (deleted once answered), and its named
    choices (cs/pointnames.py)."""
    disks, results = await _listing(state, lambda s: _machine_disks(s, machine_id), limit, timeout_s)
    names = {d.disk_id: d.name for d in disks}
    windows, latests = {}, {}
    for disk_id, result in results.items():
        windows[disk_id] = _window(result, names[disk_id])
        latests[disk_id] = mp.DiskPoint.parse_optional(result.get("latest"))
    top = None if any(p is None for p in latests.values()) else mp.latest_wnum(latests)
    return {"machine_id": machine_id, "latest_wnum": top,
            "named": pointnames.machine_named(results, windows),
            "disks": [{"disk_id": d, "name": names[d], "latest": p.public() if p else None}
                      for d, p in sorted(latests.items(), key=lambda kv: names[kv[0]])],
            "items": [p.public() for p in mp.listing(windows, limit)]}


async def disk_points(state: CSState, disk_id: str, limit: int, timeout_s: float | None = None) -> dict[str, Any]:
    """One disk's newest ``limit`` points (oldest first) and its named choices, asked of its MT."""
    async def load(session: AsyncSession) -> list[Disk]:
        disk = await session.get(Disk, disk_id)
        if disk is None:
            raise errors.NotFound(f"no disk {disk_id}")
        if disk.mt_id is None:
            raise errors.Conflict(f"disk {disk_id} is not protected")
        return [disk]

    [disk], results = await _listing(state, load, limit, timeout_s)
    result = results[disk_id]
    return {"disk_id": disk_id, "name": disk.name, "machine_id": disk.machine_id,
            "named": pointnames.disk_named(result),
            "items": [p.public() for p in _window(result, disk.name).points]}


def _window(result: dict[str, Any], name: str) -> mp.Window:
    items = result.get("points")
    if not isinstance(items, list):
        raise errors.Unavailable(f"disk {name}: the MT's answer has no points")
    return mp.Window([mp.DiskPoint.parse(p) for p in items])


async def _listing(state: CSState, load: Callable[[AsyncSession], Awaitable[list[Disk]]], limit: int,
                   timeout_s: float | None) -> tuple[list[Disk], dict[str, dict[str, Any]]]:
    """The disks ``load`` names and each one's answer to a listing probe (``recent``, ``named``);
    503 when any MT fails to answer."""
    timeout_s = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    now = time.time_ns()
    query = {"recent": limit, "named": True}
    async with state.change() as session:
        disks = await load(session)
        probes = {d.disk_id: _new_job(PROBE_KIND, d.disk_id, {"point": query, "listing": True}, now) for d in disks}
        session.add_all(probes.values())
    names = {d.disk_id: d.name for d in disks}
    jobs = await _wait_final(state, [j.job_id for j in probes.values()], timeout_s)
    failed = {d: j.error for d, j in zip(probes, jobs, strict=True) if j.state != "succeeded"}
    if failed:
        raise errors.Unavailable("; ".join(f"disk {names[d]}: {e}" for d, e in sorted(failed.items())))
    return disks, {d: j.result or {} for d, j in zip(probes, jobs, strict=True)}


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
