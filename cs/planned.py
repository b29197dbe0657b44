"""Planned failover: the source stops, everything drains, and the failover loses nothing.

The operation ``planned-failover`` (cs/machine_ops.py; mode ``planned``) runs in three steps:
1. **stop the source**: while the job is going, the machine's agent finds ``shutdown: {"job_id"}``
   in its settings document; it refuses writes from then on, cuts every disk at one final machine
   boundary W, waits until its PS holds every batch and reports ``{"job_id", "wnum": W}`` (or
   ``{"job_id", "error"}``) to ``POST /v1/machines/self/shutdown`` (agent/shutdown.py), which this
   module records in the job's params;
2. **drain**: until every disk's MT has a point at or past W (asked with listing probes, which
   apply what the MT has staged);
3. **fail over** at ``{"wnum": W}``: every disk's image is then the source disk exactly as it was
   when it stopped taking writes.
The settings keep ``shutdown`` while the job is going and after it succeeded (the source stays off:
it is failed over, then committed); a failed planned failover lets the source write again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import machine_ops, machines, runner, validate
from cs.db import repo
from cs.db.models import Job
from cs.runner import JobContext
from cs.state import CSState

log = dlog.get("drlab.cs.planned")

KIND = machine_ops.OPS["planned-failover"]
STOP_TIMEOUT_S = 180.0  # the agent reports its final W within this
DRAIN_TIMEOUT_S = 300.0  # every disk's MT reaches W within this
POLL_S = 0.5


async def shutdown_entry(session: AsyncSession, machine_id: str) -> dict[str, str] | None:
    """The agent's ``shutdown`` settings entry: a planned failover going or done (not undone)."""
    going = (await session.scalars(select(Job).where(Job.disk_id == machine_id, Job.kind == KIND,
                                                     Job.state.in_(repo.ACTIVE_JOB_STATES)))).first()
    if going is not None:
        return {"job_id": going.job_id}
    current = await machine_ops.current(session, machine_id)
    if current is not None and current.get("planned"):
        return {"job_id": str(current.get("planned_job") or current.get("job_id"))}
    return None


def parse_report(body: dict[str, Any]) -> tuple[str, int | None, str | None]:
    """``{"job_id", "wnum"}`` or ``{"job_id", "error"}`` (pure)."""
    job_id = validate.hex_id(body.get("job_id"), "job_id")
    if ("wnum" in body) == ("error" in body):
        raise errors.BadRequest("a shutdown report holds either wnum or error")
    if "wnum" in body:
        return job_id, validate.integer(body, "wnum", low=0), None
    return job_id, None, validate.string(body, "error", max_len=2000)


async def report(state: CSState, machine_id: str, outcome: tuple[str, int | None, str | None]) -> None:
    """Record the agent's report in its planned failover job (404 if it is not this machine's
    going one; a repeated report changes nothing)."""
    job_id, wnum, error = outcome
    async with state.change() as session:
        job = await session.get(Job, job_id)
        if job is None or job.kind != KIND or job.disk_id != machine_id or job.state not in repo.ACTIVE_JOB_STATES:
            raise errors.NotFound(f"no planned failover {job_id} going for this machine")
        params = dict(job.params or {})
        if "source" not in params:
            params["source"] = {"wnum": wnum} if error is None else {"error": error}
            job.params = params
    log.info("source_stopped", job_id=job_id, machine_id=machine_id, wnum=wnum, error=error)


async def _source(ctx: JobContext) -> int:
    """Step 1: the final W the agent reported."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while True:
        async with ctx.state.db.read() as session:
            job = await session.get(Job, ctx.job_id)
            source = dict((job.params or {}).get("source") or {}) if job is not None else {}
        if "error" in source:
            raise errors.Conflict(f"the source could not stop cleanly: {source['error']}")
        if "wnum" in source:
            return int(source["wnum"])
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"the machine's agent did not stop within {STOP_TIMEOUT_S:.0f} s")
        await ctx.sleep(POLL_S)


async def _drained(ctx: JobContext, wnum: int) -> None:
    """Step 2: until every disk's MT holds a point at or past ``wnum``."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        listing = await machines.points(ctx.state, ctx.target_id, 1)
        behind = [d["name"] for d in listing["disks"] if int((d.get("latest") or {}).get("wnum_hi", 0)) < wnum]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"disk(s) {', '.join(behind)} did not reach W {wnum} in time")
        await asyncio.sleep(POLL_S)


@runner.handler(KIND)
async def run_planned(ctx: JobContext) -> dict[str, Any]:
    try:
        wnum = await _source(ctx)
        if "stopped" not in ctx.done_steps:
            await ctx.step("stopped", percent=10.0, detail=f"the source stopped at W {wnum}")
        await _drained(ctx, wnum)
        if "drained" not in ctx.done_steps:
            await ctx.step("drained", percent=20.0, detail=f"every disk's MT holds W {wnum}")
    except errors.DrlabError as exc:
        if not isinstance(exc, runner.LeaseLost):
            await machine_ops.restore_states(ctx)
        raise
    ctx.params["point"] = {"wnum": wnum}
    result = await machine_ops.failover_mode(ctx, "planned")
    return {**result, "source_wnum": wnum}
