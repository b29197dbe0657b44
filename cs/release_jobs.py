"""Disable protection, exclude and include a disk as jobs of the CS job runner (cs/runner.py;
the rules of the settings change are cs/release.py's).

Steps (percent):

- ``released`` (40): the settings change, in one transaction that also stores its result and
  the MT of each released disk in the job's params. A re-run after a lease loss finds them there
  and does not release again (its result stays the first run's);
- ``MT released`` (90): each released disk's MT no longer holds it. The MT's heartbeat metrics
  (mt/metrics.py) list every disk it holds under ``disks``; the disk is released once a heartbeat
  received after the release (``last_heartbeat`` > the release's time) does not list it. After
  ``MT_RELEASE_TIMEOUT_S`` the job succeeds anyway with a note: ``MT down`` (no heartbeat since
  the release: it releases the disk when it starts, since its settings no longer list it) or
  ``MT still holds`` (it heartbeats with the disk: it releases it when it applies its settings).
  Deleting the files (``keep_points`` false: the MT's ``delete_disks``) follows the release on
  the MT, asynchronously; the heartbeat does not report it and the job does not wait for it.
- include: ``included`` (50, the excluded flag cleared), then ``protected`` (90): the disk is
  protected again when its machine is (its initial replication starts: state ``enabling``), the
  end of that replication is not waited for; an unprotected machine's next protect takes it.

The job's result is what the immediate calls answered before (cs/release.py ``_result``), plus
``mt_release`` {disk id: ``released`` | ``MT down`` | ``MT still holds`` | ``MT gone``} for
disable and exclude.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common import logging as dlog
from cs import disks as cs_disks
from cs import release, runner
from cs.db.models import Component, Disk, Job
from cs.runner import JobContext
from cs.state import CSState

log = dlog.get("drlab.cs.release_jobs")

MT_RELEASE_TIMEOUT_S = 60.0  # how long a job waits for the MTs' heartbeats (tests patch it)
POLL_S = 0.5
NOTES = {"MT down": "MT down: it releases the disk when it starts",
         "MT still holds": "MT still holds the disk: it releases it when it applies its settings",
         "MT gone": "MT no longer registered"}

Release = Callable[[AsyncSession], Awaitable[tuple[dict[str, Any], dict[str, str]]]]


async def submit_disable(state: CSState, machine_id: str, keep_points: bool) -> str:
    async with state.change() as session:
        await release.check_disable(session, machine_id)
        return await runner.submit(session, release.KINDS["disable"], {"keep_points": keep_points},
                                   target_id=machine_id)


async def submit_exclude(state: CSState, disk_id: str, keep_points: bool) -> str:
    async with state.change() as session:
        await release.check_exclude(session, disk_id)
        return await runner.submit(session, release.KINDS["exclude"], {"keep_points": keep_points},
                                   target_id=disk_id)


async def submit_include(state: CSState, disk_id: str) -> str:
    async with state.change() as session:
        await release.check_include(session, disk_id)
        return await runner.submit(session, release.KINDS["include"], {}, target_id=disk_id)


def mt_state(comp: Component | None, disk_id: str, since_ns: int) -> str | None:
    """What the MT's latest heartbeat says of the disk released at ``since_ns`` (pure):
    ``released``, ``MT gone`` (not registered), or None (no heartbeat since, or it lists the disk)."""
    if comp is None or comp.role != "mt":
        return "MT gone"
    if comp.last_heartbeat is None or comp.last_heartbeat <= since_ns:
        return None
    held = (comp.metrics or {}).get("disks")
    return None if isinstance(held, dict) and disk_id in held else "released"


def _late(comp: Component | None, since_ns: int) -> str:
    """Why an MT did not report the release in time (pure)."""
    if comp is None or comp.last_heartbeat is None or comp.last_heartbeat <= since_ns:
        return "MT down"
    return "MT still holds"


async def _released(ctx: JobContext, fn: Release) -> tuple[dict[str, Any], dict[str, str], int]:
    """The ``released`` step: the settings change once (its result kept in the job's params)."""
    done = ctx.params.get("released")
    if not isinstance(done, dict):
        async with ctx.state.change() as session:
            result, mts = await fn(session)
            done = {"result": result, "mts": mts, "at_ns": time.time_ns()}
            job = await session.get(Job, ctx.job_id)
            if job is not None:
                job.params = {**(job.params or {}), "released": done}
        ctx.params["released"] = done
    if "released" not in ctx.done_steps:
        released = done["result"]["released"]
        await ctx.step("released", percent=40.0,
                       detail=f"{len(released)} disk(s) out of the settings documents" if released
                       else "nothing to release")
    return dict(done["result"]), dict(done["mts"]), int(done["at_ns"])


async def _components(state: CSState, ids: set[str]) -> dict[str, Component]:
    async with state.db.read() as session:
        rows = (await session.scalars(select(Component).where(Component.component_id.in_(sorted(ids))))).all()
        return {c.component_id: c for c in rows}


async def wait_mts(ctx: JobContext, mts: dict[str, str], since_ns: int) -> dict[str, str]:
    """disk id -> how its MT released it (module docstring), waiting at most MT_RELEASE_TIMEOUT_S."""
    outcome: dict[str, str] = {}
    pending = dict(mts)
    deadline = time.monotonic() + MT_RELEASE_TIMEOUT_S
    while pending:
        comps = await _components(ctx.state, set(pending.values()))
        for disk_id, mt_id in list(pending.items()):
            seen = mt_state(comps.get(mt_id), disk_id, since_ns)
            if seen is not None:
                outcome[disk_id] = seen
                del pending[disk_id]
        if pending and time.monotonic() >= deadline:
            for disk_id, mt_id in pending.items():
                outcome[disk_id] = _late(comps.get(mt_id), since_ns)
            log.warning("release_mt_late", job_id=ctx.job_id, disks={d: outcome[d] for d in pending})
            break
        if pending:
            await ctx.sleep(POLL_S)
    return outcome


def _detail(outcome: dict[str, str], keep_points: bool) -> str:
    """The ``MT released`` step's detail (pure)."""
    if not outcome:
        return "no MT held a released disk"
    parts = [f"{sum(v == 'released' for v in outcome.values())} of {len(outcome)} disk(s) released by their MT"]
    parts += [f"{d}: {NOTES[v]}" for d, v in sorted(outcome.items()) if v in NOTES]
    if not keep_points:
        parts.append("the MT deletes the files and points after the release (asynchronously)")
    return "; ".join(parts)


async def _leave(ctx: JobContext, fn: Release) -> dict[str, Any]:
    result, mts, since_ns = await _released(ctx, fn)
    outcome = await wait_mts(ctx, mts, since_ns)
    await ctx.step("MT released", percent=90.0, detail=_detail(outcome, bool(result.get("keep_points"))))
    return {**result, "mt_release": outcome}


@runner.handler(release.KINDS["disable"])
async def _disable(ctx: JobContext) -> dict[str, Any]:
    keep = bool(ctx.params.get("keep_points"))
    return await _leave(ctx, lambda s: release.disable_in(s, ctx.target_id, keep, ctx.job_id))


@runner.handler(release.KINDS["exclude"])
async def _exclude(ctx: JobContext) -> dict[str, Any]:
    keep = bool(ctx.params.get("keep_points"))
    return await _leave(ctx, lambda s: release.exclude_in(s, ctx.target_id, keep, ctx.job_id))


@runner.handler(release.KINDS["include"])
async def _include(ctx: JobContext) -> dict[str, Any]:
    async with ctx.state.change() as session:
        machine_id, protected = await release.include_in(session, ctx.target_id)
    if "included" not in ctx.done_steps:
        await ctx.step("included", percent=50.0, detail="no longer excluded")
    if protected:
        await cs_disks.protect(ctx.state, machine_id)  # idempotent: protected disks stay as they are
    async with ctx.state.db.read() as session:
        disk = await session.get(Disk, ctx.target_id)
        state = disk.state if disk is not None else "gone"
    if "protected" not in ctx.done_steps:
        await ctx.step("protected", percent=90.0,
                       detail=f"initial replication started (state {state})" if protected
                       else "the machine is not protected: its next protect takes the disk")
    return await release.result_of(ctx.state, machine_id)
