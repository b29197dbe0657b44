"""Push installation of an agent onto a discovered VM, through the hypervisor's PS, as a job.

``POST /v1/inventory/{hypervisor}/{vm}/install`` queues a ``push_install`` job (target: the PS
that installs; params ``{hypervisor, vm, host_id, account, ps_id}``, never a password). Life:

- the job shows in its PS's settings document (``push_installs``) until the PS claims it;
- the claim (once: a second one is 409) returns the guest account's credentials, the hypervisor's
  address and pinned fingerprint, and a fresh single-use enrollment token for the VM's host id
  (cs/enrollment.py): none of them is stored in the job, only ``claimed_ns``;
- the PS reports ``{ok, code?, message?}`` (``outcome`` in the params);
- steps: ``request push install through PS <ps>``, ``PS installs the agent`` (waits for the
  outcome, at most ``RESULT_TIMEOUT_S``), ``agent enrolls`` (waits at most ``ENROLL_TIMEOUT_S``
  for an agent with the VM's host id registered and heartbeating after the claim).
A failure (refused credentials: code ``guest_credentials_refused``, the message naming the account
and its user) burns the job's unused enrollment tokens: nothing can register with them later.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import accounts, enrollment, hypervisors, model, runner, sites, validate
from cs.db.inventory import DiscoveredMachine, Hypervisor
from cs.db.models import Component, Job
from cs.db.models_access import Account, EnrollmentToken
from cs.runner import JobContext
from cs.state import CSState

log = dlog.get("drlab.cs.push_install")

KIND = "push-install"
ACTIVE = ("queued", "running")
RESULT_TIMEOUT_S = 600.0  # how long the job waits for the PS's outcome (tests patch it)
ENROLL_TIMEOUT_S = 300.0  # ... and then for the agent to register and heartbeat
POLL_S = 0.25
REFUSED = "guest_credentials_refused"


class PushFailed(errors.DrlabError):
    code, status = "push_install_failed", 409


def parse_install(body: dict[str, Any]) -> tuple[str, str | None]:
    """(account, ps_id or None) from ``{account, ps_id?}`` (pure)."""
    model.body_keys(body, allowed=("account", "ps_id"), required=("account",))
    ps_id = body.get("ps_id")
    return model.name(body["account"], "account"), None if ps_id is None else validate.hex_id(ps_id, "ps_id")


async def active_jobs(session: AsyncSession, ps_id: str | None = None) -> list[Job]:
    stmt = select(Job).where(Job.kind == KIND, Job.state.in_(ACTIVE)).order_by(Job.created_ns)
    if ps_id is not None:
        stmt = stmt.where(Job.disk_id == ps_id)
    return list((await session.scalars(stmt)).all())


async def submit(session: AsyncSession, hv_name: str, vm: str, account: str, ps_id: str | None) -> str:
    """Queue a push install (404: unknown hypervisor, VM, account or PS; 409: one is already going)."""
    hv = await model.get_or_404(session, Hypervisor, model.name(hv_name, "hypervisor"), "hypervisor")
    row = await session.get(DiscoveredMachine, (hv.name, vm))
    if row is None:
        raise errors.NotFound(f"no discovered VM {vm} on hypervisor {hv.name}")
    await hypervisors.require_account(session, account)
    ps = await hypervisors.require_ps(session, ps_id or hv.ps_id)
    if any(j.params.get("hypervisor") == hv.name and j.params.get("vm") == vm for j in await active_jobs(session)):
        raise errors.Conflict(f"a push install of {vm} on {hv.name} is already going")
    params = {"hypervisor": hv.name, "vm": vm, "host_id": row.host_id, "account": account, "ps_id": ps.component_id,
              "ps_host": ps.host_id}
    return await runner.submit(session, KIND, params, target_id=ps.component_id)


def ps_item(job: Job) -> dict[str, Any]:
    p = job.params
    return {"job_id": job.job_id, "hypervisor": p["hypervisor"], "vm": p["vm"], "host_id": p["host_id"],
            "account": p["account"]}


async def ps_settings(session: AsyncSession, ps_id: str, interval_s: float) -> dict[str, Any]:
    """The PS document's ``hypervisors``, ``push_installs`` (jobs not claimed yet) and
    ``discovery_interval_s``; absent when the PS has neither hypervisors nor push installs."""
    hvs = (await session.scalars(select(Hypervisor).where(Hypervisor.ps_id == ps_id).order_by(Hypervisor.name))).all()
    jobs = [j for j in await active_jobs(session, ps_id) if "claimed_ns" not in (j.params or {})]
    if not hvs and not jobs:
        return {}
    return {"hypervisors": [hypervisors.ps_item(h) for h in hvs], "push_installs": [ps_item(j) for j in jobs],
            "discovery_interval_s": interval_s}


async def _own_job(session: AsyncSession, job_id: str, ps_id: str) -> Job:
    """The active push-install job ``job_id`` of PS ``ps_id``, locked (404 / 403 / 409)."""
    job = (await session.scalars(select(Job).where(Job.job_id == job_id).with_for_update())).first()
    if job is None or job.kind != KIND:
        raise errors.NotFound(f"no push install job {job_id}")
    if job.params.get("ps_id") != ps_id:
        raise errors.Forbidden(f"push install job {job_id} is another process server's")
    if job.state not in ACTIVE:
        raise errors.Conflict(f"push install job {job_id} is already {job.state}")
    return job


async def claim(state: CSState, key: accounts.StoreKey, job_id: str, ps_id: str) -> dict[str, Any]:
    """What the PS needs to install (credentials, token, hypervisor): once per job."""
    async with state.change() as session:
        job = await _own_job(session, job_id, ps_id)
        if "claimed_ns" in job.params:
            raise errors.Conflict(f"push install job {job_id} was already claimed")
        p = job.params
        hv = await model.get_or_404(session, Hypervisor, p["hypervisor"], "hypervisor")
        username, password = await accounts.reveal(session, key, p["account"])
        token = await enrollment.issue(session, key, host_id=p["host_id"], ttl_s=state.cfg.enroll_token_ttl_s,
                                       job_id=job_id)
        job.params = {**p, "claimed_ns": time.time_ns()}
    log.info("push_install_claimed", job_id=job_id, ps_id=ps_id, hypervisor=hv.name, vm=p["vm"])
    return {"username": username, "password": password, "enroll_token": token.text, "address": hv.address,
            "port": hv.port, "fingerprint": hv.fingerprint}


def parse_result(body: dict[str, Any]) -> dict[str, Any]:
    """``{ok, code?, message?}`` (pure)."""
    model.body_keys(body, allowed=("ok", "code", "message"), required=("ok",))
    if not isinstance(body["ok"], bool):
        raise errors.BadRequest("ok must be true or false")
    out: dict[str, Any] = {"ok": body["ok"]}
    for field, limit in (("code", 64), ("message", 1000)):
        if body.get(field) is not None:
            out[field] = model.text(body, field, max_len=limit)
    return out


async def post_result(state: CSState, job_id: str, ps_id: str, outcome: dict[str, Any]) -> None:
    async with state.db.write() as session:
        job = await _own_job(session, job_id, ps_id)
        if "claimed_ns" not in job.params:
            raise errors.Conflict(f"push install job {job_id} was not claimed")
        if "outcome" in job.params:
            raise errors.Conflict(f"push install job {job_id} already has its result")
        job.params = {**job.params, "outcome": {**outcome, "at_ns": time.time_ns()}}
    log.info("push_install_reported", job_id=job_id, ok=outcome["ok"], code=outcome.get("code"))


# ------------------------------------------------------------------ the job


async def _params(state: CSState, job_id: str) -> dict[str, Any]:
    async with state.db.read() as session:
        job = await session.get(Job, job_id)
        return dict(job.params or {}) if job is not None else {}


async def _burn_tokens(state: CSState, job_id: str) -> None:
    async with state.db.write() as session:
        await session.execute(update(EnrollmentToken).where(EnrollmentToken.job_id == job_id,
                                                            EnrollmentToken.used.is_(False)).values(used=True))


async def failure(state: CSState, p: dict[str, Any], outcome: dict[str, Any]) -> str:
    """The job's error for a failed install (names the account and its user when refused)."""
    code = outcome.get("code") or "install_failed"
    if code == REFUSED:
        async with state.db.read() as session:
            acc = await session.get(Account, p["account"])
        user = acc.username if acc is not None else "unknown"
        return (f"{REFUSED}: hypervisor {p['hypervisor']} refused the guest credentials of account "
                f"{p['account']} (user {user}) on VM {p['vm']}")
    return f"{code}: PS {p['ps_id']} could not install the agent on VM {p['vm']}: {outcome.get('message', '')}"


async def wait_outcome(ctx: JobContext) -> dict[str, Any]:
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while True:
        p = await _params(ctx.state, ctx.job_id)
        if isinstance(p.get("outcome"), dict):
            return {**p, **ctx.params, "claimed_ns": p.get("claimed_ns"), "outcome": p["outcome"]}
        if time.monotonic() >= deadline:
            what = "claimed it but" if "claimed_ns" in p else "did not claim it and"
            raise PushFailed(f"PS {ctx.params['ps_id']} {what} did not report the install of VM "
                             f"{ctx.params['vm']} within {RESULT_TIMEOUT_S:.0f} s")
        await ctx.sleep(POLL_S)


async def wait_agent(ctx: JobContext, host_id: str, since_ns: int) -> str:
    """The id of the agent with ``host_id`` registered and heartbeating since ``since_ns``."""
    deadline = time.monotonic() + ENROLL_TIMEOUT_S
    while True:
        async with ctx.state.db.read() as session:
            comp = (await session.scalars(select(Component).where(Component.role == "agent",
                                                                  Component.host_id == host_id))).first()
        if comp is not None and comp.registered_at >= since_ns and (comp.last_heartbeat or 0) >= since_ns:
            return comp.component_id
        if time.monotonic() >= deadline:
            state = "registered but not heartbeating" if comp is not None and comp.registered_at >= since_ns \
                else "not registered"
            raise PushFailed(f"the agent of VM {ctx.params['vm']} ({host_id}) is {state} "
                             f"{ENROLL_TIMEOUT_S:.0f} s after the install")
        await ctx.sleep(POLL_S)


@runner.handler(KIND)
async def run(ctx: JobContext) -> dict[str, Any]:
    p = ctx.params
    requested = f"request push install through PS {p.get('ps_host') or p['ps_id']}"
    try:
        if requested not in ctx.done_steps:
            await ctx.step(requested, percent=10.0, detail=f"VM {p['vm']} on {p['hypervisor']}, account {p['account']}")
        done = await wait_outcome(ctx)
        if not done["outcome"].get("ok"):
            raise PushFailed(await failure(ctx.state, p, done["outcome"]))
        if "PS installs the agent" not in ctx.done_steps:
            await ctx.step("PS installs the agent", percent=50.0, detail=done["outcome"].get("message"))
        component_id = await wait_agent(ctx, p["host_id"], int(done["claimed_ns"] or 0))
    except errors.DrlabError as exc:
        if not isinstance(exc, runner.LeaseLost):
            await _burn_tokens(ctx.state, ctx.job_id)
            log.warning("push_install_failed", job_id=ctx.job_id, error=exc.message)
        raise
    await ctx.step("agent enrolls", percent=100.0, detail=f"agent {component_id}")
    async with ctx.state.change() as session:
        site = await _join_site(session, component_id, p["ps_id"])
        with contextlib.suppress(errors.NotFound):  # the hypervisor was removed meanwhile
            await hypervisors.discover_now(session, p["hypervisor"])  # the inventory shows the agent at once
    return {"hypervisor": p["hypervisor"], "vm": p["vm"], "host_id": p["host_id"], "component_id": component_id,
            "site": site}


async def _join_site(session: AsyncSession, agent_id: str, ps_id: str) -> str | None:
    """A machine pushed onto by a PS lives where that PS is: put it in the PS's site unless it is
    in one already (protection then picks a PS there and an MT outside it, cs/targets.py)."""
    agent, ps = await session.get(Component, agent_id), await session.get(Component, ps_id)
    if agent is None or agent.site_name is not None or ps is None or ps.site_name is None:
        return agent.site_name if agent is not None else None
    await sites.assign(session, ps.site_name, [agent_id])
    log.info("push_install_site", agent=agent_id, site=ps.site_name)
    return ps.site_name
