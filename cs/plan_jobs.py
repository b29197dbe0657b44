"""Running recovery plans (cs/plans.py) as CS jobs: ``plan-failover``, ``plan-cleanup`` and ``plan-commit``.

Rules:
- the plan's groups are copied into the job at the request: a later edit of the plan does not
  change a running job;
- groups run in order; a group's ``pre`` actions, then its machines in parallel (each a machine
  operation job of cs/machine_ops.py: test, unplanned or planned failover, cleanup or commit, all
  started at once and waited for until final), then its ``post`` actions. Any machine failing fails
  the plan (later groups do not start);
- a planned plan failover runs each machine's planned failover (cs/planned.py: its source stops,
  everything drains, it fails over at the source's final W): it takes no point;
- a script action runs on the CS host as ``/bin/sh -c SCRIPT`` (the text its admin wrote; no other
  shell is involved), with its timeout, in a minimal environment (``PATH``, ``DRLAB_PLAN``,
  ``DRLAB_GROUP`` 1-based, ``DRLAB_MODE``, ``DRLAB_JOB_ID``): a non-zero exit or the timeout fails
  the plan with the tail of its output. A script cut by a CS restart runs again (at least once);
- a manual action pauses the job: it records the step ``waiting: INSTRUCTION`` and waits until
  an admin POSTs ``/v1/jobs/{id}/resume``; the pause is in the job's params, so a CS restart keeps
  it (the handler re-runs, skipping the recorded steps, and waits again);
- a plan cleanup cleans up the test failover of every machine that has one; a plan commit commits
  the unplanned or planned failover of every machine not committed yet (409 at the request if one has
  no such failover, or if every machine is committed already). Neither runs actions.
A step is recorded when each action and each group's machines are done; a re-run skips those.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import tempfile
from typing import Any

from sqlalchemy import select

from common import errors
from common import logging as dlog
from cs import machine_ops, machines, model, runner, validate
from cs.db import meta, repo
from cs.db.models import Job, RecoveryPlan
from cs.runner import JobContext
from cs.state import CSState

log = dlog.get("drlab.cs.plan_jobs")

FAILOVER_KIND = "plan-failover"
CLEANUP_KIND = "plan-cleanup"
COMMIT_KIND = "plan-commit"
KINDS = (FAILOVER_KIND, CLEANUP_KIND, COMMIT_KIND)
FAILOVER_MODES = ("test", "unplanned", "planned")  # the modes POST /v1/plans/{name}/failover takes
KIND_OF_MODE = {"cleanup": CLEANUP_KIND, "commit": COMMIT_KIND, **dict.fromkeys(FAILOVER_MODES, FAILOVER_KIND)}
OP_OF_MODE = {"test": "test-failover", "unplanned": "failover", "planned": "planned-failover", "cleanup": "cleanup",
              "commit": "commit"}
TAIL_CHARS = 1000
MACHINES_TIMEOUT_S = 3 * machine_ops.TIMEOUT_S


def target_of(plan_name: str) -> str:
    """The job's target id for a plan (a plan name is not a 32-hex id)."""
    return hashlib.sha256(plan_name.encode()).hexdigest()[:32]


def parse_request(body: dict[str, Any]) -> tuple[str, Any, bool]:
    """``{"mode": "test"|"unplanned"|"planned", "point"?, "image"?}`` -> (mode, point, image) (pure);
    a planned failover takes no point (it fails over where each source stopped)."""
    model.body_keys(body, allowed=("mode", "point", "image"), required=("mode",))
    mode = body["mode"]
    if mode not in FAILOVER_MODES:
        raise errors.BadRequest(f"mode must be one of {', '.join(FAILOVER_MODES)}")
    if mode == "planned" and "point" in body:
        raise errors.BadRequest("a planned failover takes no point: each machine fails over at the W where "
                                "its source stopped")
    return mode, machines.parse_point({k: v for k, v in body.items() if k == "point"}), validate.flag(body, "image")


def skipped(mode: str, current: dict[str, Any] | None) -> bool:
    """Whether a plan job of ``mode`` leaves a machine alone (pure): a cleanup one without a
    failover, a commit one committed already."""
    if mode == "cleanup":
        return current is None
    return mode == "commit" and (current or {}).get("mode") == "committed"


async def request(state: CSState, name: str, mode: str, point: Any = "latest", image: bool = False) -> str:
    """Queue a plan failover (``mode`` test|unplanned|planned), cleanup or commit (``mode`` cleanup|
    commit): 404 for an unknown plan, 409 while a job of the plan runs or when a machine could not
    take its operation (a commit: also when every machine is committed already). ``image``: every
    machine's failover writes its disks' image files too."""
    kind = KIND_OF_MODE[mode]
    async with state.change() as session:
        plan = await model.get_or_404(session, RecoveryPlan, name, "recovery plan")
        going = (await session.scalars(select(Job.job_id).where(
            Job.disk_id == target_of(name), Job.kind.in_(KINDS), Job.state.in_(repo.ACTIVE_JOB_STATES)))).first()
        if going is not None:
            raise errors.Conflict(f"recovery plan {name} has a job in progress ({going})")
        groups = list(plan.groups or [])
        left = 0
        for group in groups:  # what the groups would refuse, refused now
            for machine_id in group["machines"]:
                current = await machine_ops.current(session, machine_id)
                if not skipped(mode, current):
                    machine_ops.check(OP_OF_MODE[mode], current, machine_id)
                    await machines._machine_disks(session, machine_id)  # 409 without a protected disk
                    left += 1
        if mode == "commit" and not left:
            raise errors.Conflict(f"recovery plan {name}: every machine is committed already")
        params = {"plan": name, "mode": mode, "point": point, "groups": groups, "children": {}, "waiting": None,
                  "resumed": [], **({"image": True} if image else {})}
        job_id = await runner.submit(session, kind, params, target_id=target_of(name))
    log.info("plan_job_requested", job_id=job_id, plan=name, mode=mode, groups=len(groups))
    return job_id


async def resume(state: CSState, job_id: str) -> dict[str, Any]:
    """Resume a plan job paused at a manual step; 409 unless it is waiting for one."""
    async with state.change() as session:
        job = (await session.scalars(select(Job).where(Job.job_id == job_id).with_for_update())).first()
        if job is None:
            raise errors.NotFound(f"no job {job_id}")
        if job.kind not in KINDS:
            raise errors.Conflict(f"job {job_id} is a {job.kind} job, not a recovery plan job")
        params = dict(job.params or {})
        waiting, resumed = params.get("waiting"), list(params.get("resumed") or [])
        if job.state not in repo.ACTIVE_JOB_STATES or not waiting or waiting in resumed:
            raise errors.Conflict(f"job {job_id} is {job.state} and not waiting for a manual step")
        job.params = {**params, "resumed": [*resumed, waiting]}
    log.info("plan_job_resumed", job_id=job_id, step=waiting)
    return {"job_id": job_id, "resumed": waiting}


# -- the handler -------------------------------------------------------------------------------

async def _remember(ctx: JobContext, **values: Any) -> None:
    async with ctx.state.db.write() as session:
        job = (await session.scalars(select(Job).where(Job.job_id == ctx.job_id).with_for_update())).first()
        if job is not None:
            job.params = {**(job.params or {}), **values}
    ctx.params.update(values)


async def run_script(script: str, timeout_s: float, env: dict[str, str]) -> tuple[int, str]:
    """(exit status, output tail) of ``/bin/sh -c script``; the whole process group is killed on
    timeout (status -1) or when the job is cancelled."""
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", script, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env, cwd=tempfile.gettempdir(), start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        status = proc.returncode if proc.returncode is not None else -1
    except TimeoutError:
        out, status = b"", -1
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    return status, out.decode(errors="replace")[-TAIL_CHARS:]


async def _script(ctx: JobContext, group: int, action: dict[str, Any], key: str) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DRLAB_PLAN": str(ctx.params["plan"]),
           "DRLAB_GROUP": str(group), "DRLAB_MODE": str(ctx.params["mode"]), "DRLAB_JOB_ID": ctx.job_id}
    timeout = float(action.get("timeout_s", 300))
    status, tail = await run_script(action["script"], timeout, env)
    log.info("plan_script_ran", job_id=ctx.job_id, step=key, status=status)
    if status != 0:
        why = f"timed out after {timeout:.0f} s" if status == -1 else f"exited with status {status}"
        raise errors.Conflict(f"{key}: script {why}; output: {tail.strip()[-TAIL_CHARS:]}")
    await ctx.step(key, detail=tail or None)


async def _manual(ctx: JobContext, action: dict[str, Any], key: str) -> None:
    """Pause until an admin resumes (POST /v1/jobs/{id}/resume)."""
    if ctx.params.get("waiting") != key:
        await _remember(ctx, waiting=key)
        await ctx.step(f"waiting: {action['instruction']}"[:128],
                       detail=f"{action['instruction']} (resume: POST /v1/jobs/{ctx.job_id}/resume)")
        log.info("plan_job_waiting", job_id=ctx.job_id, step=key)
    while True:
        async with ctx.state.db.read() as session:
            version = await meta.settings_version(session)
            job = await session.get(Job, ctx.job_id)
            resumed = list(((job.params if job else None) or {}).get("resumed") or [])
        if key in resumed:
            break
        await ctx.state.watch.wait_newer(version, 1.0)
        await ctx.sleep(0)
    await _remember(ctx, waiting=None)
    await ctx.step(key, detail="resumed")


async def _actions(ctx: JobContext, group: int, where: str, actions: list[dict[str, Any]]) -> None:
    for i, action in enumerate(actions, 1):
        key = f"group {group} {where} {i}: {action['name']}"[:128]
        if key in ctx.done_steps:
            continue
        if action["kind"] == "script":
            await _script(ctx, group, action, key)
        else:
            await _manual(ctx, action, key)


async def _machines(ctx: JobContext, group: int, machine_ids: list[str], percent: float) -> dict[str, Any]:
    """Start the group's machine operations at once and wait for every one; machine -> result."""
    op = OP_OF_MODE[ctx.params["mode"]]
    children: dict[str, dict[str, str]] = dict(ctx.params.get("children") or {})
    if str(group) not in children:
        started: dict[str, str] = {}
        async with ctx.state.change() as session:
            for machine_id in machine_ids:
                if skipped(ctx.params["mode"], await machine_ops.current(session, machine_id)):
                    continue  # nothing to clean up or commit there
                started[machine_id] = await machine_ops.request(session, op, machine_id, ctx.params["point"],
                                                                bool(ctx.params.get("image")))
        children[str(group)] = started
        await _remember(ctx, children=children)
    ids = children[str(group)]
    if f"group {group}: {op} started" not in ctx.done_steps:
        await ctx.step(f"group {group}: {op} started", percent=percent, detail=", ".join(sorted(ids)) or "-")
    jobs = await machine_ops.wait_jobs(ctx, list(ids.values()), timeout_s=MACHINES_TIMEOUT_S) if ids else []
    failed = {m: j.error for m, j in zip(ids, jobs, strict=True) if j.state != "succeeded"}
    if failed:
        raise errors.Conflict("; ".join(f"group {group}: machine {m}: {e}" for m, e in sorted(failed.items())))
    return {m: {"job_id": j.job_id, **_summary(j.result or {})} for m, j in zip(ids, jobs, strict=True)}


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {"wnum": result.get("wnum"),
            "disks": [{k: d[k] for k in ("disk_id", "name", "job_id", "image_path", "nbd_url") if k in d}
                      for d in result.get("disks", [])]}


async def run(ctx: JobContext) -> dict[str, Any]:
    groups: list[dict[str, Any]] = ctx.params["groups"]
    cleanup = ctx.params["mode"] not in FAILOVER_MODES  # a cleanup or commit: no actions
    out: dict[str, Any] = {}
    for i, group in enumerate(groups, 1):
        share = 100.0 / max(1, len(groups))
        if not cleanup:
            await _actions(ctx, i, "pre", group.get("pre") or [])
        out.update(await _machines(ctx, i, group["machines"], (i - 1) * share + share / 3))
        if f"group {i}: done" not in ctx.done_steps:
            await ctx.step(f"group {i}: done", percent=min(99.0, (i - 1) * share + 2 * share / 3))
        if not cleanup:
            await _actions(ctx, i, "post", group.get("post") or [])
    log.info("plan_job_done", job_id=ctx.job_id, plan=ctx.params["plan"], mode=ctx.params["mode"])
    return {"plan": ctx.params["plan"], "mode": ctx.params["mode"], "machines": out,
            "groups": [dict(ctx.params.get("children", {}).get(str(i), {})) for i in range(1, len(groups) + 1)]}


runner.handler(FAILOVER_KIND)(run)
runner.handler(CLEANUP_KIND)(run)
runner.handler(COMMIT_KIND)(run)
