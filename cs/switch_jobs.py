"""PS switch and load balance as CS jobs (cs/runner.py): the thin shell around cs/switch.py.

Kinds: ``ps-switch`` moves every machine of a PS, ``ps-balance`` the machines named. Measured
churn: each disk's uploaded-bytes counter in its PS's heartbeats, or its agent's reported churn
where higher. Params:
``from_ps_id``, ``to_ps_id`` (optional: picked by measured churn and backlog), ``machine_ids``
(ps-balance), ``old_ps_dead`` (the operator says so), ``dead_after_s`` (a PS whose last heartbeat
is older is dead), ``timeout_s`` (drain and verify, each), ``sample_s`` (the longest wait for a new
heartbeat of every live PS, to measure churn).

Steps (each idempotent; a re-run after a CS crash skips the recorded ones):
- ``plan``: the moves (cs/switch.py), stored in the job's params so a re-run keeps them;
- ``reassign``: one settings change: each disk's PS is the new one. Old PS alive: the generation
  stays and a :class:`DiskDrain` row keeps the disk in the old PS's settings as *draining* (it
  refuses the agent's new batches and uploads what it cached; the MT takes the disk's batches
  from it too). Old PS dead: a new generation, reason ``ps-switch``; the agent's settings say
  ``resync_scope: hot``, so it re-sends the regions its activity log holds un-applied;
- ``drain``: until the old PS's heartbeats, taken after it applied that change (its
  ``settings_version``), show no backlog for the moved disks twice in a row. If the old PS dies
  meanwhile, or the drain times out, the disks left are regenerated instead;
- ``fence``: the drain rows go: the old PS's settings no longer name the disks and the MT refuses
  its batches for them (403; a batch of an older generation is 409 anyway);
- ``verify``: every moved disk is protected on the new PS, and its agent's heartbeat says it sends
  there under the disk's generation.
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
from cs import switch
from cs.db import meta, repo
from cs.db.models import Component, Disk, DiskDrain, Job
from cs.runner import JobContext, handler, submit
from cs.state import CSState

log = dlog.get("drlab.cs.switch")

KINDS = ("ps-switch", "ps-balance")
REASON = "ps-switch"
HOT_REASONS = (REASON,)  # generations whose resync covers the agent's hot extents only
# dead: three heartbeats missed at the components' default interval (30 s); a drain needs two
# heartbeats of the old PS after it applied the change, so the timeout leaves room for several
DEFAULTS = {"dead_after_s": 90.0, "timeout_s": 300.0, "sample_s": 65.0}
POLL_S = 0.5


# ------------------------------------------------------------------ settings documents


async def draining_disks(session: AsyncSession, ps_id: str) -> list[Disk]:
    """Disks moved away from ``ps_id`` that it still drains."""
    ids = (await session.scalars(select(DiskDrain.disk_id).where(DiskDrain.ps_id == ps_id))).all()
    if not ids:
        return []
    return list((await session.scalars(select(Disk).where(Disk.disk_id.in_(ids)))).all())


async def drain_ps_ids(session: AsyncSession, disk_ids: list[str]) -> dict[str, list[str]]:
    """disk id -> the PSs still draining it (for the MT's settings)."""
    if not disk_ids:
        return {}
    rows = (await session.scalars(select(DiskDrain).where(DiskDrain.disk_id.in_(disk_ids)))).all()
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row.disk_id, []).append(row.ps_id)
    return {k: sorted(v) for k, v in out.items()}


async def hot_scopes(session: AsyncSession, disks: list[Disk]) -> dict[str, str]:
    """disk id -> the reason of its current generation when that resync covers hot extents only."""
    last = await cs_disks.latest_resyncs(session, [d.disk_id for d in disks]) if disks else {}
    gens = {d.disk_id: d.generation for d in disks}
    return {d: r.reason for d, r in last.items()
            if r.generation == gens.get(d) and r.state == "running" and r.reason in HOT_REASONS}


# ------------------------------------------------------------------ submitting


async def request(state: CSState, kind: str, params: dict[str, Any]) -> str:
    """Queue a switch / balance job after the checks that need no waiting; returns its id."""
    if kind not in KINDS:
        raise errors.BadRequest(f"kind must be one of {', '.join(KINDS)}")
    from_ps = str(params["from_ps_id"])
    async with state.change() as session:
        comp = await session.get(Component, from_ps)
        if comp is None or comp.role != "ps":
            raise errors.NotFound(f"no process server {from_ps}")
        to_ps = params.get("to_ps_id")
        if to_ps is not None:
            target = await session.get(Component, to_ps)
            if target is None or target.role != "ps":
                raise errors.NotFound(f"no process server {to_ps}")
        busy = (await session.scalars(select(Job.job_id).where(Job.kind.in_((*KINDS, "ps-purge")),
                                                               Job.state.in_(repo.ACTIVE_JOB_STATES)))).first()
        if busy is not None:
            raise errors.Conflict(f"PS switch or purge job {busy} is still in progress")
        await _dry_run(session, params)  # bad requests fail now, not in the job
        job_id = await submit(session, kind, params, target_id=from_ps)
    log.info("ps_switch_requested", job_id=job_id, kind=kind, from_ps=from_ps, to_ps=params.get("to_ps_id"),
             machines=params.get("machine_ids"))
    return job_id


def _request_of(params: dict[str, Any]) -> switch.Request:
    machine_ids = params.get("machine_ids")
    return switch.Request(str(params["from_ps_id"]), params.get("to_ps_id"),
                          tuple(machine_ids) if machine_ids is not None else None, bool(params.get("old_ps_dead")))


async def _dry_run(session: AsyncSession, params: dict[str, Any]) -> None:
    """Plan once without churn (every PS taken as alive): what the job would refuse, refused now."""
    rows = await repo.disks(session)
    disks = [switch.DiskInfo(d.disk_id, d.machine_id, d.ps_id, d.state, d.generation) for d in rows]
    pss = [switch.PsInfo(p.component_id, True) for p in await repo.components(session, "ps")]
    switch.plan(_request_of(params), disks, pss)


# ------------------------------------------------------------------ the handler


def _param(ctx: JobContext, name: str) -> float:
    return float(ctx.params.get(name, DEFAULTS[name]))


def _alive(comp: Component | None, dead_after_s: float, now_ns: int) -> bool:
    return comp is not None and comp.last_heartbeat is not None \
        and now_ns - comp.last_heartbeat <= int(dead_after_s * 1e9)


Counters = dict[str, tuple[int, dict[str, int]]]  # ps id -> (heartbeat ns, {disk id: uploaded bytes})


async def _snapshot(ctx: JobContext) -> tuple[list[switch.DiskInfo], list[switch.PsInfo], Counters]:
    """Disks, PSs (alive, backlog) and each PS's uploaded-bytes counters with their heartbeat time."""
    now = time.time_ns()
    async with ctx.state.db.read() as session:
        rows = await repo.disks(session)
        pss = await repo.components(session, "ps")
    disks = [switch.DiskInfo(d.disk_id, d.machine_id, d.ps_id, d.state, d.generation) for d in rows]
    infos: list[switch.PsInfo] = []
    counters: Counters = {}
    for p in pss:
        per_disk = {k: v for k, v in ((p.metrics or {}).get("disks") or {}).items() if isinstance(v, dict)}
        backlog = sum(int(v.get("backlog_bytes", 0)) for v in per_disk.values())
        infos.append(switch.PsInfo(p.component_id, _alive(p, _param(ctx, "dead_after_s"), now), backlog))
        counters[p.component_id] = (p.last_heartbeat or 0, {k: int(v.get("uploaded_bytes", 0))
                                                             for k, v in per_disk.items()})
    return disks, infos, counters


async def _measure_churn(ctx: JobContext, pss: list[switch.PsInfo], before: Counters,
                         req: switch.Request) -> dict[str, float]:
    """Bytes/s per disk between two heartbeats of each live PS (waiting at most ``sample_s``)."""
    deadline = time.monotonic() + _param(ctx, "sample_s")
    live = {p.ps_id for p in pss if p.alive and not (req.old_ps_dead and p.ps_id == req.from_ps)}
    while True:
        await ctx.sleep(POLL_S)
        _, _, after = await _snapshot(ctx)
        if all(after[p][0] > before[p][0] for p in live if p in after and p in before) \
                or time.monotonic() > deadline:
            break
    churn: dict[str, float] = {}
    for ps_id, (t1, counts) in after.items():
        t0, base = before.get(ps_id, (t1, {}))
        for disk_id, rate in switch.churn_between(base, counts, (t1 - t0) / 1e9).items():
            churn[disk_id] = churn.get(disk_id, 0.0) + rate
    return churn


async def _agent_churn(ctx: JobContext) -> dict[str, float]:
    """Per disk id, the churn its agent reports in its heartbeat (``disks.{name}.churn_bytes_per_s``)."""
    async with ctx.state.db.read() as session:
        rows = await repo.disks(session)
        agents = await repo.components_by_id(session, {d.machine_id for d in rows})
    out: dict[str, float] = {}
    for d in rows:
        agent = agents.get(d.machine_id)
        status = (((agent.metrics if agent else None) or {}).get("disks") or {}).get(d.name)
        if isinstance(status, dict) and isinstance(status.get("churn_bytes_per_s"), int | float):
            out[d.disk_id] = float(status["churn_bytes_per_s"])
    return out


async def _plan(ctx: JobContext) -> switch.Plan:
    if "plan" in ctx.done_steps and isinstance(ctx.params.get("plan"), dict):
        return switch.Plan.from_dict(ctx.params["plan"])
    req = _request_of(ctx.params)
    disks, pss, before = await _snapshot(ctx)
    churn: dict[str, float] = {}
    if req.to_ps is None:  # measured churn: the uploaded-bytes counters between two heartbeats
        churn = await _measure_churn(ctx, pss, before, req)
        for disk_id, rate in (await _agent_churn(ctx)).items():  # the agents' own figure, where higher
            churn[disk_id] = max(rate, churn.get(disk_id, 0.0))
        disks, pss, _ = await _snapshot(ctx)
    planned = switch.plan(req, disks, pss, churn)
    async with ctx.state.db.write() as session:  # the plan outlives a CS crash: a re-run keeps it
        job = await session.get(Job, ctx.job_id)
        if job is not None:
            job.params = {**(job.params or {}), "plan": planned.as_dict()}
    summary = {"mode": planned.mode, "moves": len(planned.moves), "targets": sorted(set(planned.targets().values())),
               "skipped": len(planned.skipped)}
    await ctx.step("plan", percent=10.0, detail=json.dumps(summary))
    log.info("ps_switch_planned", job_id=ctx.job_id, **summary, churn_bytes_s=round(sum(churn.values())))
    return planned


async def _reassign(ctx: JobContext, plan: switch.Plan) -> None:
    now = time.time_ns()
    async with ctx.state.change() as session:
        since = await meta.settings_version(session) + 1  # the version this change commits as
        for move in plan.moves:
            disk = await session.get(Disk, move.disk_id)
            if disk is None or disk.ps_id != move.from_ps:
                continue  # gone, or already moved (a re-run)
            disk.ps_id = move.to_ps
            if plan.mode == switch.DRAIN:
                await session.merge(DiskDrain(disk_id=disk.disk_id, ps_id=move.from_ps, job_id=ctx.job_id,
                                              generation=disk.generation, since_version=since, created_ns=now))
            else:
                await cs_disks.bump_for_resync(session, disk, REASON)
    log.info("ps_switch_reassigned", job_id=ctx.job_id, mode=plan.mode, disks=[m.disk_id for m in plan.moves])
    await ctx.step("reassign", percent=30.0, detail=f"{len(plan.moves)} disk(s), {plan.mode}")


async def _drain_state(ctx: JobContext, plan: switch.Plan) -> tuple[Component | None, int]:
    async with ctx.state.db.read() as session:
        comp = await session.get(Component, plan.from_ps)
        since = (await session.scalars(select(DiskDrain.since_version).where(DiskDrain.job_id == ctx.job_id))).first()
    return comp, int(since or 0)


async def _drain(ctx: JobContext, plan: switch.Plan) -> list[switch.Move]:
    """Wait for the old PS to upload what it cached; the moves left undrained (to regenerate)."""
    pending = {m.disk_id: m for m in plan.moves}
    seen: dict[str, set[int]] = {d: set() for d in pending}
    deadline = time.monotonic() + _param(ctx, "timeout_s")
    while True:
        comp, since = await _drain_state(ctx, plan)
        if since == 0:
            return []  # no drain rows: a re-run after the fence
        if not _alive(comp, _param(ctx, "dead_after_s"), time.time_ns()):
            log.warning("ps_switch_old_ps_died", job_id=ctx.job_id, ps=plan.from_ps, left=sorted(pending))
            return list(pending.values())
        assert comp is not None and comp.last_heartbeat is not None
        metrics = comp.metrics or {}
        if int(metrics.get("settings_version", -1)) >= since:
            per_disk = metrics.get("disks") or {}
            for disk_id in list(pending):
                info = per_disk.get(disk_id)
                if not isinstance(info, dict) or int(info.get("backlog_batches", 0)) == 0:
                    seen[disk_id].add(comp.last_heartbeat)
                else:
                    seen[disk_id].clear()
                if len(seen[disk_id]) >= 2:  # two heartbeats in a row: nothing can still arrive
                    del pending[disk_id]
        if not pending:
            return []
        if time.monotonic() > deadline:
            log.warning("ps_switch_drain_timeout", job_id=ctx.job_id, ps=plan.from_ps, left=sorted(pending))
            return list(pending.values())
        await ctx.sleep(POLL_S)


async def _regenerate(ctx: JobContext, moves: list[switch.Move]) -> list[str]:
    """A new generation (reason ps-switch) for the moves' disks still on the planned generation."""
    bumped = []
    async with ctx.state.change() as session:
        for move in moves:
            disk = await session.get(Disk, move.disk_id)
            if disk is not None and disk.ps_id == move.to_ps and disk.generation == move.generation:
                await cs_disks.bump_for_resync(session, disk, REASON)
                bumped.append(disk.disk_id)
        await session.execute(delete(DiskDrain).where(DiskDrain.job_id == ctx.job_id))
    log.info("ps_switch_regenerated", job_id=ctx.job_id, disks=bumped)
    return bumped


async def _fence(ctx: JobContext) -> None:
    async with ctx.state.change() as session:
        await session.execute(delete(DiskDrain).where(DiskDrain.job_id == ctx.job_id))
    await ctx.step("fence", percent=75.0)


def _agent_follows(agent: Component | None, disk: Disk, ps_url: str | None, after_ns: int) -> bool:
    if agent is None or agent.last_heartbeat is None or agent.last_heartbeat < after_ns:
        return False
    st = ((agent.metrics or {}).get("disks") or {}).get(disk.name)
    return isinstance(st, dict) and st.get("ps_url") == ps_url and int(st.get("generation", 0)) == disk.generation \
        and st.get("state") == "protected"


async def _verify(ctx: JobContext, plan: switch.Plan, regenerated: set[str]) -> dict[str, Any]:
    from cs.settings import url_of  # late: cs.settings imports this module

    started_ns, deadline = time.time_ns(), time.monotonic() + _param(ctx, "timeout_s")
    while True:
        async with ctx.state.db.read() as session:
            rows = {m.disk_id: await session.get(Disk, m.disk_id) for m in plan.moves}
            comps = await repo.components_by_id(session, {m.to_ps for m in plan.moves} | set(plan.targets()))
        waiting = []
        for m in plan.moves:
            disk = rows[m.disk_id]
            if disk is None:
                continue
            if disk.ps_id != m.to_ps:
                raise errors.Conflict(f"disk {m.disk_id} was moved elsewhere meanwhile (PS {disk.ps_id})")
            regen_ok = m.disk_id not in regenerated or disk.generation > m.generation
            if not (disk.state == "protected" and regen_ok
                    and _agent_follows(comps.get(m.machine_id), disk, url_of(comps.get(m.to_ps), "data"), started_ns)):
                waiting.append(m.disk_id)
        if not waiting:
            return {"generations": {d: r.generation for d, r in rows.items() if r is not None}}
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"disks {sorted(waiting)} not protected on their new PS within "
                                     f"{_param(ctx, 'timeout_s'):.0f} s")
        await ctx.sleep(POLL_S)


async def run(ctx: JobContext) -> dict[str, Any]:
    started = time.monotonic()
    plan = await _plan(ctx)
    if "reassign" not in ctx.done_steps:
        await _reassign(ctx, plan)
    regenerated: set[str] = set()
    if plan.mode == switch.REGENERATE:
        regenerated = {m.disk_id for m in plan.moves}
        if "regenerate" not in ctx.done_steps:
            await ctx.step("regenerate", percent=60.0, detail=f"{len(plan.moves)} disk(s), reason {REASON}")
    elif "drain" not in ctx.done_steps:
        left = await _drain(ctx, plan)
        if left:
            regenerated = set(await _regenerate(ctx, left))
        await ctx.step("drain", percent=70.0, detail=json.dumps({"drained": len(plan.moves) - len(left),
                                                                  "regenerated": sorted(regenerated)}))
    if "fence" not in ctx.done_steps:
        await _fence(ctx)
    checked = await _verify(ctx, plan, regenerated)
    await ctx.step("verify", percent=99.0)
    result = {**plan.as_dict(), "regenerated": sorted(regenerated), **checked,
              "seconds": round(time.monotonic() - started, 3)}
    log.info("ps_switch_done", job_id=ctx.job_id, mode=plan.mode, moves=len(plan.moves),
             regenerated=len(regenerated), seconds=result["seconds"])
    return result


handler("ps-switch")(run)
handler("ps-balance")(run)
