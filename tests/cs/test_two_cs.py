"""Two CS processes on one database serve the same fleet (ARCHITECTURE.md §9).

Two CSService instances share the CA and identities (data dir copied) and one database, listen on
different ports and each run a job runner: every job runs exactly once and both claim some; a
component registered at one is seen by the other; a settings long-poll at B wakes on a change
made at A (B's watch re-reads the version from the database). On PostgreSQL the claims use
``SELECT ... FOR UPDATE SKIP LOCKED``; on SQLite ``BEGIN IMMEDIATE`` on the shared file.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site, settings
from sqlalchemy import select

from common.http import ApiClient
from cs import runner
from cs.client import CSAdminClient
from cs.db.models import Job
from cs.service import CSService
from tests.conftest import CSEnv, cs_config

KIND = "test-two-cs"
JOBS = 40
HANDLER_S = 0.15
RECHECK_S = 0.3
WOKEN_WITHIN_S = 3.0  # well under the 5 s long_poll_max_s of the tests' CS config, at which a poll returns anyway
RAN: list[tuple[str, str]] = []  # (job_id, owner) per handler run, in this test process


@runner.handler(KIND)
async def _record_owner(ctx: runner.JobContext) -> dict[str, Any]:
    """Records which CS ran the job (the claim's owner, read back from the row) and holds it a while."""
    async with ctx.state.db.read() as session:
        owner = await session.scalar(select(Job.claimed_by).where(Job.job_id == ctx.job_id))
    RAN.append((ctx.job_id, str(owner)))
    await ctx.step("ran", percent=100.0)
    await ctx.sleep(HANDLER_S)
    return {"owner": owner}


@dataclass
class Pair:
    a: CSEnv
    b: CSService
    b_admin: CSAdminClient


@pytest.fixture
async def pair(cs_env: CSEnv, tmp_path: Path) -> AsyncIterator[Pair]:
    """CS B: the files of A copied (not its SQLite file), A's database, another port."""
    b_dir = tmp_path / "cs-b"
    shutil.copytree(cs_env.data_dir, b_dir, ignore=shutil.ignore_patterns("cs.db*"))
    cfg = cs_config(b_dir, db_url=cs_env.cfg.database_url(), job_poll_interval_s=0.1)
    b = CSService(cfg, recheck_s=RECHECK_S)
    await b.start()
    b_admin = CSAdminClient(b.url, cs_env.admin_files, timeout_s=15.0)
    RAN.clear()
    try:
        yield Pair(cs_env, b, b_admin)
    finally:
        await b_admin.close()
        await b.stop()


async def test_two_cs_run_every_job_exactly_once(pair: Pair) -> None:
    a_state, b_state = pair.a.service.state, pair.b.state
    assert a_state is not None and b_state is not None
    assert pair.a.service.port != pair.b.port

    async def submit_via(state: Any, first: int) -> list[str]:
        ids = []
        for i in range(first, JOBS, 2):
            async with state.change() as session:
                ids.append(await runner.submit(session, KIND, {"i": i}, target_id=f"t{i}"))
        return ids

    batches = await asyncio.gather(submit_via(a_state, 0), submit_via(b_state, 1))
    submitted = {job_id for batch in batches for job_id in batch}
    assert len(submitted) == JOBS
    deadline = time.monotonic() + 60
    while True:
        async with a_state.db.read() as session:
            states = dict((await session.execute(select(Job.job_id, Job.state).where(Job.kind == KIND))).all())
        if all(s in runner.FINAL_STATES for s in states.values()) and len(states) == JOBS:
            break
        assert time.monotonic() < deadline, f"jobs still going: {sorted(states.values())}"
        await asyncio.sleep(0.1)
    assert set(states.values()) == {"succeeded"}
    ran_ids = [job_id for job_id, _ in RAN]
    assert sorted(ran_ids) == sorted(submitted), "a job ran twice or not at all"
    owners = {owner for _, owner in RAN}
    assert owners == {pair.a.service.jobs.owner_id, pair.b.jobs.owner_id}  # type: ignore[union-attr]
    job = await pair.b_admin.job(ran_ids[0])
    assert job["state"] == "succeeded"


async def test_a_component_registered_at_one_is_seen_by_the_other(pair: Pair, tmp_path: Path) -> None:
    site = Site(pair.a, tmp_path)
    try:
        ps = await site.ps("ps-at-a")
        seen = {c["component_id"] for c in await pair.b_admin.components()}
        assert ps.component_id in seen
    finally:
        await site.close()


async def test_a_long_poll_at_b_wakes_on_a_change_at_a(pair: Pair, tmp_path: Path) -> None:
    site = Site(pair.a, tmp_path)
    try:
        ps, _ = await site.ps(), await site.mt()
        agent, _ = await site.agent()
        poller = await _at(site, ps, pair.b.url)
        current = (await settings(poller))["version"]
        poll = asyncio.create_task(settings(poller, version=current, wait_s=8), name="test-long-poll-at-b")
        await asyncio.sleep(0.3)
        assert not poll.done()
        await pair.a.admin.protect(agent.component_id)  # a change made at A
        changed = time.monotonic()
        reply = await asyncio.wait_for(poll, 8)
        assert time.monotonic() - changed < WOKEN_WITHIN_S  # B's re-check, not the poll's timeout
        assert reply["version"] > current and reply["document"]["disks"]
    finally:
        await site.close()


async def _at(site: Site, member: Enrolled, url: str) -> Enrolled:
    """The same enrolled component, talking to ``url`` (the other CS) with its own certificate."""
    other = Enrolled(member.role, member.host_id, member.component_id, member.files,
                     ApiClient(url, member.ssl, timeout_s=15.0))
    site.members.append(other)
    return other


async def test_postgresql_notify_wakes_a_long_poll_at_once(pair: Pair, tmp_path: Path, cs_engine: str) -> None:
    """On PostgreSQL B hears A's change through LISTEN/NOTIFY: a CS whose re-check is 30 s wakes at once."""
    if cs_engine != "postgresql":
        return  # SQLite: the re-check of the version (test above)
    c_dir = tmp_path / "cs-c"
    shutil.copytree(pair.a.data_dir, c_dir, ignore=shutil.ignore_patterns("cs.db*"))
    c = CSService(cs_config(c_dir, db_url=pair.a.cfg.database_url()), recheck_s=30.0)
    await c.start()
    site = Site(pair.a, tmp_path)
    try:
        ps = await site.ps()
        agent, _ = await site.agent()
        poller = await _at(site, ps, c.url)
        current = (await settings(poller))["version"]
        poll = asyncio.create_task(settings(poller, version=current, wait_s=10), name="test-long-poll-at-c")
        await asyncio.sleep(0.3)
        await site.mt()  # a change made at A (registering an MT bumps the version)
        changed = time.monotonic()
        reply = await asyncio.wait_for(poll, 10)
        assert time.monotonic() - changed < WOKEN_WITHIN_S and reply["version"] > current
    finally:
        await site.close()
        await c.stop()
