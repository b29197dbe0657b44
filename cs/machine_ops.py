"""Failover operations on a machine, each a CS job (cs/runner.py) with steps and percent.

Operations (``OPS``: the name in the API -> the job kind; the job's ``disk_id`` column holds the
machine id):
- ``test-failover``: a machine failover (cs/machines.py) with ``mode: test``; the disks stay
  ``protected`` and replication keeps running under the views; the result lists every disk's
  view (the failover child job's id), its NBD URL and, when asked (``image: true``, any failover
  or point change), its image path;
- ``failover`` (unplanned): the same with ``mode: unplanned``; the disks go
  ``failover-in-progress`` (at the request) then ``failed-over`` (back to their states if it fails);
  a test, unplanned or planned failover that fails part-way drops (``view-drop``, best effort) the
  views it made on some disks before it fails;
- ``change-point``: every disk's view moved to a new machine point W (chosen as a failover does),
  a ``view-change`` child per disk;
- ``cleanup`` (of a test failover): a ``view-drop`` child per disk;
- ``commit`` (of an unplanned failover): a ``view-commit`` child per disk; the disks are then
  ``committed`` and leave every settings document (cs/settings.py): their MT stops applying them.

A machine's *failover* is the ``failover`` object in the result of its newest succeeded operation
(``None`` after a cleanup): ``{"mode", "views": {disk id: view id}, "wnum", "job_id"}``. Rules
(:func:`check`, pure), refused with 409 at the request: one operation at a time per machine; a
failover needs none going; cleanup needs a test failover, commit an unplanned one, change-point
either; nothing follows a commit.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select

from common import errors
from common import logging as dlog
from cs import disks as disk_ops
from cs import failover_props, machines, protection, release, runner
from cs.db import meta, repo
from cs.db.models import Disk, Job
from cs.runner import JobContext
from cs.state import CSState

log = dlog.get("drlab.cs.machine_ops")

OPS = {"test-failover": "machine-test-failover", "failover": "machine-unplanned-failover",
       "planned-failover": "machine-planned-failover",
       "change-point": "machine-change-point", "cleanup": "machine-cleanup-test-failover",
       "commit": "machine-commit"}
KINDS = tuple(OPS.values())
IMAGE_KIND = "machine-image"  # cs/machine_image.py: images of the current failover's views (blocks the others)
MODES = ("test", "unplanned", "planned")
ROUTE_MODES = ("test", "unplanned")  # the modes POST .../failover takes
REAL = ("unplanned", "planned")  # failovers that put the disks failed-over (and may be committed)
FINAL = ("succeeded", "failed")
TIMEOUT_S = 900.0  # an operation waits this long for the MTs' answers
DROP_TIMEOUT_S = 60.0  # a failed failover waits this long for the drops of the views it made
PHASE_PERCENT = {"probe": 20.0, "below": 40.0, "failover": 60.0}


def check(op: str, current: dict[str, Any] | None, machine_id: str) -> None:
    """Refuse (409) an operation out of order given the machine's failover ``current`` (pure)."""
    mode = (current or {}).get("mode")
    if mode == "committed":
        raise errors.Conflict(f"machine {machine_id} is committed: no failover operation is left")
    if op in ("test-failover", "failover", "planned-failover") and current is not None:
        then = "clean it up" if mode == "test" else "commit it or change its point"
        raise errors.Conflict(f"machine {machine_id} has a {mode} failover already (job {current.get('job_id')}); "
                              f"{then} first")
    if op in ("cleanup", "change-point", "commit") and current is None:
        raise errors.Conflict(f"machine {machine_id} has no failover to {op.replace('-', ' ')}")
    if op == "cleanup" and mode != "test":
        raise errors.Conflict(f"machine {machine_id}: its failover is {mode}, not a test failover; commit it")
    if op == "commit" and mode not in REAL:
        raise errors.Conflict(f"machine {machine_id}: a test failover is never committed; clean it up")


def parse_mode(body: dict[str, Any], default: str | None) -> str | None:
    mode = body.get("mode", default)
    if mode is not None and mode not in ROUTE_MODES:
        raise errors.BadRequest(f"mode must be one of {', '.join(ROUTE_MODES)} (a planned failover has its own "
                                "route: .../planned-failover)")
    return None if mode is None else str(mode)


async def current(session: Any, machine_id: str) -> dict[str, Any] | None:
    """The machine's failover: from its newest succeeded operation (None without one)."""
    stmt = (select(Job).where(Job.disk_id == machine_id, Job.kind.in_(KINDS), Job.state == "succeeded")
            .order_by(Job.created_ns.desc()).limit(1))
    job = (await session.scalars(stmt)).first()
    failover = None if job is None else (job.result or {}).get("failover")
    if (failover or {}).get("mode") == "committed" and any(
            disk_ops.replicating(d) for d in await repo.disks(session, machine_id=machine_id)):
        return None  # protected again since its commit (e.g. after failback): a new cycle
    return failover


IMAGE_OPS = ("test-failover", "failover", "planned-failover", "change-point")  # the ops that take ``image``


async def request(session: Any, op: str, machine_id: str, point: Any = "latest", image: bool = False) -> str:
    """Queue operation ``op`` in the caller's write transaction (checks first: 404, 409). ``image``
    (a failover or point change): every disk's image file is written too, and listed in the result."""
    if op not in OPS:
        raise errors.BadRequest(f"operation must be one of {', '.join(OPS)}")
    await protection.agent_or_404(session, machine_id)
    going = (await session.scalars(select(Job.job_id).where(
        Job.disk_id == machine_id, Job.kind.in_((*KINDS, IMAGE_KIND, machines.MACHINE_KIND)),
        Job.state.in_(repo.ACTIVE_JOB_STATES)))).first()
    going = going or await release.going(session, [machine_id, *(
        d.disk_id for d in await repo.disks(session, machine_id=machine_id))])
    if going is not None:
        raise errors.Conflict(f"machine {machine_id} has an operation in progress (job {going})")
    now = await current(session, machine_id)
    check(op, now, machine_id)
    disks = await machines._machine_disks(session, machine_id)  # 409 without a protected disk
    if image and op not in IMAGE_OPS:
        raise errors.BadRequest(f"{op} takes no image")
    params: dict[str, Any] = {"machine_id": machine_id, "point": point, "failover": now,
                              **({"image": True} if image else {})}
    if op in ("failover", "planned-failover"):
        params["states"] = {d.disk_id: d.state for d in disks}  # back to these if it fails
        for disk in disks:
            disk.state = "failover-in-progress"
    job_id = await runner.submit(session, OPS[op], params, target_id=machine_id)
    log.info("machine_op_requested", job_id=job_id, op=op, machine_id=machine_id, point=point)
    return job_id


async def submit(state: CSState, op: str, machine_id: str, point: Any = "latest", image: bool = False) -> str:
    async with state.change() as session:
        return await request(session, op, machine_id, point, image)


# -- the handlers ------------------------------------------------------------------------------

async def wait_jobs(ctx: JobContext, job_ids: list[str], on_poll: Callable[[list[Job]], Awaitable[None]] | None = None,
                    timeout_s: float | None = None) -> list[Job]:
    """The jobs once every one is final (woken by each settings change); 503 after the timeout."""
    deadline = time.monotonic() + float(timeout_s or ctx.params.get("timeout_s", TIMEOUT_S))
    while True:
        async with ctx.state.db.read() as session:
            version = await meta.settings_version(session)
            rows = {j.job_id: j for j in (await session.scalars(select(Job).where(Job.job_id.in_(job_ids)))).all()}
        jobs = [rows[j] for j in job_ids if j in rows]
        if len(jobs) < len(job_ids):
            raise errors.Conflict(f"job {sorted(set(job_ids) - set(rows))[0]} is gone")
        if all(j.state in FINAL for j in jobs):
            return jobs
        if on_poll is not None:
            await on_poll(jobs)
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"jobs {', '.join(j.job_id for j in jobs if j.state not in FINAL)} "
                                     "not finished in time (is the master target running?)")
        await ctx.state.watch.wait_newer(version, 1.0)
        await ctx.sleep(0)  # raises if this CS lost the job meanwhile


async def _set_states(ctx: JobContext, states: dict[str, str]) -> None:
    async with ctx.state.change() as session:
        for disk_id, disk_state in states.items():
            disk = await session.get(Disk, disk_id)
            if disk is not None:
                disk.state = disk_state


async def _machine_failover(ctx: JobContext, mode: str, views: dict[str, str] | None) -> dict[str, Any]:
    """Run one machine failover (or point change) and return its result."""
    child = ctx.params.get("machine_job")
    if not child:
        async with ctx.state.change() as session:
            child = await machines.start(session, ctx.target_id, ctx.params.get("point", "latest"), mode=mode,
                                         views=views, owner=ctx.job_id, image=bool(ctx.params.get("image")))
            job = await session.get(Job, ctx.job_id)
            if job is not None:
                job.params = {**(job.params or {}), "machine_job": child}
        ctx.params["machine_job"] = child
        await ctx.step("start", percent=5.0, detail=f"machine failover job {child}")

    async def phases(jobs: list[Job]) -> None:
        phase = str((jobs[0].params or {}).get("phase", ""))
        if phase in PHASE_PERCENT and f"phase {phase}" not in ctx.done_steps:
            await ctx.step(f"phase {phase}", percent=PHASE_PERCENT[phase], detail=str(jobs[0].params.get("wnum", "")))

    (job,) = await wait_jobs(ctx, [child], phases)
    if job.state != "succeeded":
        if views is None:  # a new failover: the views some disks made are dropped (a point change keeps its)
            await _drop_made_views(ctx, job)
        raise errors.Conflict(f"machine failover {child} failed: {job.error}")
    return dict(job.result or {})


async def _drop_made_views(ctx: JobContext, machine_job: Job) -> None:
    """A failed machine failover: a ``view-drop`` for each view its failover phase made (a child
    that succeeded), waited for at most ``DROP_TIMEOUT_S``. Best effort: a failure is logged, the
    operation fails as it would have (its error names the machine failover's). The drop jobs are
    recorded in the params (``drops``), so a CS taking the job over waits for the same ones."""
    drops: dict[str, str] = ctx.params.get("drops") or {}
    if not drops:
        params = machine_job.params or {}
        if params.get("phase") != "failover":
            return  # failed before any view was made
        async with ctx.state.change() as session:
            for disk_id, child_id in sorted((params.get("children") or {}).items()):
                made = await session.get(Job, child_id)
                if made is not None and made.kind == "failover" and made.state == "succeeded":
                    drops[disk_id] = await runner.submit(session, "view-drop", {"point": {"view": child_id},
                                                                                "parent": ctx.job_id},
                                                         target_id=disk_id)
            if not drops:
                return
            job = await session.get(Job, ctx.job_id)
            if job is not None:
                job.params = {**(job.params or {}), "drops": drops}
        ctx.params["drops"] = drops
    try:
        jobs = await wait_jobs(ctx, list(drops.values()), timeout_s=DROP_TIMEOUT_S)
    except runner.LeaseLost:
        raise
    except errors.DrlabError as exc:
        log.error("failover_views_not_dropped", job_id=ctx.job_id, machine_id=ctx.target_id, error=exc.message)
        return
    failed = {d: j.error for d, j in zip(drops, jobs, strict=True) if j.state != "succeeded"}
    if failed:
        log.error("failover_views_not_dropped", job_id=ctx.job_id, machine_id=ctx.target_id, failed=failed)
    log.info("failover_views_dropped", job_id=ctx.job_id, machine_id=ctx.target_id, dropped=len(drops) - len(failed))


async def restore_states(ctx: JobContext) -> None:
    """A failed failover: its disks back to the states they had at the request."""
    await _set_states(ctx, ctx.params.get("states") or {})


async def failover_mode(ctx: JobContext, mode: str) -> dict[str, Any]:
    """A machine failover of ``mode`` at ``ctx.params["point"]`` (the handler of test, unplanned
    and, after its drain, planned failover)."""
    try:
        result = await _machine_failover(ctx, mode, None)
    except errors.DrlabError as exc:
        if mode in REAL and not isinstance(exc, runner.LeaseLost):  # lost: another CS runs it now
            await restore_states(ctx)
        raise
    views = {d["disk_id"]: d["job_id"] for d in result.get("disks", [])}
    if mode in REAL:
        await _set_states(ctx, dict.fromkeys(views, "failed-over"))
    await ctx.step("failed over" if mode in REAL else "test failed over", percent=95.0,
                   detail=f"W {result.get('wnum')}")
    return {**result, "machine_job_id": ctx.params["machine_job"], "target": await _target(ctx),
            "failover": {"mode": mode, "views": views, "wnum": result.get("wnum"), "job_id": ctx.job_id,
                         **({"planned": True, "planned_job": ctx.job_id} if mode == "planned" else {})}}


async def _change_point(ctx: JobContext) -> dict[str, Any]:
    before = ctx.params["failover"]
    result = await _machine_failover(ctx, before["mode"], dict(before["views"]))
    await ctx.step("point changed", percent=95.0, detail=f"W {before.get('wnum')} -> {result.get('wnum')}")
    return {**result, "machine_job_id": ctx.params["machine_job"],
            "failover": {**before, "wnum": result.get("wnum")}}


async def per_view(ctx: JobContext, kind: str) -> dict[str, Job]:
    """A ``kind`` child job per disk on its view; disk id -> the finished child."""
    views: dict[str, str] = ctx.params["failover"]["views"]
    children: dict[str, str] = ctx.params.get("children") or {}
    if not children:
        async with ctx.state.change() as session:
            for disk_id, view_id in sorted(views.items()):
                children[disk_id] = await runner.submit(session, kind, {"point": {"view": view_id},
                                                                        "parent": ctx.job_id}, target_id=disk_id)
            job = await session.get(Job, ctx.job_id)
            if job is not None:
                job.params = {**(job.params or {}), "children": children}
        ctx.params["children"] = children
        await ctx.step("start", percent=10.0, detail=f"{len(children)} {kind} job(s)")
    jobs = dict(zip(children, await wait_jobs(ctx, list(children.values())), strict=True))
    failed = {d: j.error for d, j in jobs.items() if j.state != "succeeded"}
    if failed:
        raise errors.Conflict("; ".join(f"disk {d}: {kind} failed: {e}" for d, e in sorted(failed.items())))
    return jobs


async def _cleanup(ctx: JobContext) -> dict[str, Any]:
    jobs = await per_view(ctx, "view-drop")
    await ctx.step("views dropped", percent=95.0)
    return {"machine_id": ctx.target_id, "disks": [{"disk_id": d, "job_id": j.job_id, "result": j.result}
                                                   for d, j in sorted(jobs.items())], "failover": None}


async def _commit(ctx: JobContext) -> dict[str, Any]:
    jobs = await per_view(ctx, "view-commit")
    await _set_states(ctx, dict.fromkeys(jobs, "committed"))
    await ctx.step("committed", percent=95.0)
    return {"machine_id": ctx.target_id, "disks": [{"disk_id": d, "job_id": j.job_id, "result": j.result}
                                                   for d, j in sorted(jobs.items())], "target": await _target(ctx),
            "failover": {**ctx.params["failover"], "mode": "committed", "job_id": ctx.job_id}}


async def _target(ctx: JobContext) -> dict[str, Any]:
    """The machine's failover properties as the result shows them: the twin boots under ``name``."""
    async with ctx.state.db.read() as session:
        return failover_props.target(await failover_props.read(session, ctx.target_id))


async def _run_test(ctx: JobContext) -> dict[str, Any]:
    return await failover_mode(ctx, "test")


async def _run_unplanned(ctx: JobContext) -> dict[str, Any]:
    return await failover_mode(ctx, "unplanned")


runner.handler(OPS["test-failover"])(_run_test)
runner.handler(OPS["failover"])(_run_unplanned)
runner.handler(OPS["change-point"])(_change_point)
runner.handler(OPS["cleanup"])(_cleanup)
runner.handler(OPS["commit"])(_commit)
