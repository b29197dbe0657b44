"""Removing a process server from the CS: decommission a connected one, purge a disconnected one.

Rules:
- :func:`remove` (decommission) is refused (409) while any disk is assigned to the PS, while it
  still drains a disk for a switch, or while a PS job (switch, balance, purge) is running: the
  operator moves the machines first (``drlab ps switch PS --to OTHER``). Otherwise, in one write
  transaction, every unexpired certificate of the PS is revoked (the certificate rows outlive the
  component row, so it can no longer connect) and its component row is deleted. A PS through
  which hypervisors are discovered is refused too (409): delete and add them again with another PS.
- :func:`request_purge` queues one ``ps-purge`` job, only for a PS that is not heartbeating: its
  last heartbeat is older than ``dead_after_s`` (default: the switch's, 90 s) or absent; a live PS
  is refused 409 unless ``force``. The job first runs the PS switch with ``old_ps_dead`` (cs/
  switch_jobs.py: the machines move under a new generation and their agents re-send the regions
  their activity logs hold un-applied), then removes and revokes the PS (step ``remove``).
  A PS that serves no machine skips the switch. Its hypervisors move to ``to_ps_id``, else to
  the PS its first machine moved to; with neither the purge is refused (409) up front.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import revocation, switch_jobs
from cs.db import repo
from cs.db.inventory import Hypervisor
from cs.db.models import Component, Disk, DiskDrain, Job
from cs.db.psuplink import PSUplink
from cs.runner import JobContext, handler, submit
from cs.state import CSState

log = dlog.get("drlab.cs.ps_lifecycle")

PURGE = "ps-purge"
PS_JOB_KINDS = (*switch_jobs.KINDS, PURGE)


async def _ps(session: AsyncSession, ps_id: str) -> Component:
    comp = await session.get(Component, ps_id)
    if comp is None or comp.role != "ps":
        raise errors.NotFound(f"no process server {ps_id}")
    return comp


async def _assigned(session: AsyncSession, ps_id: str) -> int:
    return int(await session.scalar(select(func.count()).select_from(Disk).where(Disk.ps_id == ps_id)) or 0)


async def _busy_job(session: AsyncSession, exclude: str = "") -> str | None:
    rows = await session.scalars(select(Job.job_id).where(Job.kind.in_(PS_JOB_KINDS),
                                                          Job.state.in_(repo.ACTIVE_JOB_STATES)))
    return next((j for j in rows.all() if j != exclude), None)


async def _hypervisors(session: AsyncSession, ps_id: str) -> list[Hypervisor]:
    return list((await session.scalars(select(Hypervisor).where(Hypervisor.ps_id == ps_id))).all())


async def _remove_in(session: AsyncSession, ps_id: str, job_id: str = "",
                     hypervisors_to: str | None = None) -> list[str]:
    """The checks and the removal, in the caller's write transaction; the revoked serials.
    The PS's hypervisors move to ``hypervisors_to`` (a PS id); without one they refuse the removal."""
    comp = await _ps(session, ps_id)
    hvs = await _hypervisors(session, ps_id)
    if hvs and hypervisors_to is None:
        raise errors.Conflict(f"hypervisor(s) {', '.join(sorted(h.name for h in hvs))} are discovered through "
                              f"process server {ps_id}: delete them and add them again with another PS")
    for hv in hvs:
        assert hypervisors_to is not None
        await _ps(session, hypervisors_to)
        hv.ps_id = hypervisors_to
    count = await _assigned(session, ps_id)
    if count:
        raise errors.Conflict(f"{count} disk(s) are assigned to process server {ps_id}: "
                              f"move them first: drlab ps switch {ps_id} --to OTHER")
    if (await session.scalars(select(DiskDrain.disk_id).where(DiskDrain.ps_id == ps_id))).first() is not None:
        raise errors.Conflict(f"process server {ps_id} still drains disks of a switch; wait for the job")
    busy = await _busy_job(session, exclude=job_id)
    if busy is not None:
        raise errors.Conflict(f"PS job {busy} is still in progress; wait for it")
    serials = await revocation.revoke_in(session, comp, time.time_ns())
    uplink = await session.get(PSUplink, comp.component_id)  # its proxy and bandwidth settings go with it
    if uplink is not None:
        await session.delete(uplink)
    await session.delete(comp)
    return serials


async def remove(state: CSState, ps_id: str) -> dict[str, Any]:
    """Decommission a PS that serves no disk: revoke its certificates and delete its row."""
    async with state.change() as session:
        serials = await _remove_in(session, ps_id)
    log.info("ps_removed", ps_id=ps_id, revoked=len(serials))
    return {"ps_id": ps_id, "removed": True, "revoked_serials": serials}


def silent_for_s(comp: Component, now_ns: int) -> float | None:
    """Seconds since the PS's last heartbeat (None: it never sent one)."""
    return None if comp.last_heartbeat is None else max(0.0, (now_ns - comp.last_heartbeat) / 1e9)


async def request_purge(state: CSState, ps_id: str, params: dict[str, Any], *, force: bool) -> str:
    """Queue the purge of a silent PS (409 while it heartbeats, unless ``force``); the job id."""
    dead_after_s = float(params.get("dead_after_s", switch_jobs.DEFAULTS["dead_after_s"]))
    async with state.change() as session:
        comp = await _ps(session, ps_id)
        silent = silent_for_s(comp, time.time_ns())
        if silent is not None and silent <= dead_after_s and not force:
            raise errors.Conflict(f"process server {ps_id} is still heartbeating ({silent:.0f} s ago, "
                                  f"threshold {dead_after_s:.0f} s): stop it first, or decommission it "
                                  f"(drlab ps switch, then drlab ps remove)")
        to_ps = params.get("to_ps_id")
        if to_ps is not None:
            await _ps(session, str(to_ps))
        busy = await _busy_job(session)
        if busy is not None:
            raise errors.Conflict(f"PS job {busy} is still in progress; wait for it")
        job_params = {**params, "from_ps_id": ps_id, "old_ps_dead": True, "dead_after_s": dead_after_s}
        assigned = await _assigned(session, ps_id)
        if to_ps is None and not assigned and await _hypervisors(session, ps_id):
            raise errors.Conflict(f"process server {ps_id} serves no machine but discovers hypervisors: "
                                  f"name the PS that takes them over (to_ps_id, drlab ps purge --to)")
        if assigned:
            await switch_jobs._dry_run(session, job_params)  # no target: refused now, not in the job
        job_id = await submit(session, PURGE, job_params, target_id=ps_id)
    log.info("ps_purge_requested", job_id=job_id, ps_id=ps_id, to_ps=to_ps, force=force)
    return job_id


async def run_purge(ctx: JobContext) -> dict[str, Any]:
    """The switch with ``old_ps_dead`` (when the PS serves machines), then ``remove``."""
    ps_id = str(ctx.params["from_ps_id"])
    result: dict[str, Any] = {}
    async with ctx.state.db.read() as session:
        moving = "plan" in ctx.done_steps or await _assigned(session, ps_id) > 0
    if moving:
        result = await switch_jobs.run(ctx)
    if "remove" not in ctx.done_steps:
        moves = result.get("moves") or []
        heir = ctx.params.get("to_ps_id") or (str(moves[0]["to_ps"]) if moves else None)
        async with ctx.state.change() as session:
            serials = await _remove_in(session, ps_id, job_id=ctx.job_id, hypervisors_to=heir)
        await ctx.step("remove", percent=100.0, detail=f"{len(serials)} certificate(s) revoked")
        result["revoked_serials"] = serials
    log.info("ps_purged", job_id=ctx.job_id, ps_id=ps_id, moves=len(result.get("moves", [])))
    return {**result, "removed": ps_id}


handler(PURGE)(run_purge)
