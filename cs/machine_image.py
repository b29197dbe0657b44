"""The image files of a machine's failover views, asked for after the failover (a CS job).

A failover is done once its views are made (served over NBD); its image files are written only when
asked at the failover (``image: true``). ``POST /v1/machines/{id}/image`` asks later: a job of kind
``machine-image`` (its ``disk_id`` column holds the machine id, as the failover operations') sends a
``view-image`` child job (mt/jobs.py) to each disk's MT on the view of the machine's *current*
failover (cs/machine_ops.py ``current``: a test, unplanned or planned failover, not committed). The
MT writes the view as it is, writes made over NBD included; the view stays as it was.

Rules, checked at the request (in its transaction): 404 for an unknown machine; 409 while a failover
operation, a machine failover or another image job of the machine is going; 409 without a failover
view (none, cleaned up, or committed). The result: ``{machine_id, mode, wnum, failover_job_id,
disks: [{disk_id, view, job_id, image_path, image_bytes}]}``; a disk whose export fails fails the job
(its error names the disk). The job takes time in proportion to the data on the disks.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import machine_ops, machines, protection, runner
from cs.db import repo
from cs.db.models import Job
from cs.runner import JobContext
from cs.state import CSState

log = dlog.get("drlab.cs.machine_image")

KIND = machine_ops.IMAGE_KIND
CHILD_KIND = "view-image"
IMAGED = ("test", "unplanned", "planned")  # the failover modes whose views can be imaged


def views_of(failover: dict[str, Any] | None, machine_id: str) -> dict[str, str]:
    """{disk id: view id} of the machine's failover; 409 when it has no view to image (pure)."""
    mode = (failover or {}).get("mode")
    views = (failover or {}).get("views")
    if mode == "committed":
        raise errors.Conflict(f"machine {machine_id} is committed: its views were written into the replicas; "
                              "no failover view is left to image")
    if mode not in IMAGED or not isinstance(views, dict) or not views:
        raise errors.Conflict(f"machine {machine_id} has no failover view to image (test-failover or fail it "
                              "over first)")
    return {str(d): str(v) for d, v in views.items()}


async def request(session: AsyncSession, machine_id: str) -> str:
    """Queue the machine's image job in the caller's write transaction (404, 409 first)."""
    await protection.agent_or_404(session, machine_id)
    going = (await session.scalars(select(Job.job_id).where(
        Job.disk_id == machine_id, Job.kind.in_((*machine_ops.KINDS, machines.MACHINE_KIND, KIND)),
        Job.state.in_(repo.ACTIVE_JOB_STATES)))).first()
    if going is not None:
        raise errors.Conflict(f"machine {machine_id} has an operation in progress (job {going})")
    failover = await machine_ops.current(session, machine_id)
    views = views_of(failover, machine_id)
    assert failover is not None
    params = {"machine_id": machine_id, "failover": {"mode": failover["mode"], "views": views,
                                                     "wnum": failover.get("wnum"), "job_id": failover.get("job_id")}}
    job_id = await runner.submit(session, KIND, params, target_id=machine_id)
    log.info("machine_image_requested", job_id=job_id, machine_id=machine_id, disks=len(views))
    return job_id


async def submit(state: CSState, machine_id: str) -> str:
    async with state.change() as session:
        return await request(session, machine_id)


async def _run(ctx: JobContext) -> dict[str, Any]:
    """A ``view-image`` child per disk on its view (kept in the params: a CS taking the job over
    waits for the same ones), then every disk's image path."""
    jobs = await machine_ops.per_view(ctx, CHILD_KIND)
    failover = ctx.params["failover"]
    disks = [{"disk_id": d, "view": failover["views"][d], "job_id": j.job_id,
              "image_path": (j.result or {}).get("image_path"), "image_bytes": (j.result or {}).get("image_bytes")}
             for d, j in sorted(jobs.items())]
    missing = [d["disk_id"] for d in disks if not isinstance(d["image_path"], str)]
    if missing:
        raise errors.Conflict(f"the master target named no image_path for disk(s) {', '.join(missing)}")
    await ctx.step("images written", percent=95.0, detail=f"{len(disks)} image(s)")
    return {"machine_id": ctx.target_id, "mode": failover["mode"], "wnum": failover.get("wnum"),
            "failover_job_id": failover.get("job_id"), "disks": disks}


runner.handler(KIND)(_run)
