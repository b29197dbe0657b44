"""The CS job runner: steps and results recorded, failures, leases that expire and are re-claimed,
no job claimed twice by two runners on one SQLite file, and the jobs listing of the admin API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cshelpers import raw

from common import errors
from common.config import CSConfig
from cs import runner
from cs.db.engine import Database
from cs.db.models import Job
from cs.runner import JobContext, Runner
from cs.state import CSState


def make_state(db: Database, tmp_path: Path) -> CSState:
    return CSState.open(CSConfig(data_dir=tmp_path), db, ca=None, recheck_s=0.05)  # type: ignore[arg-type]


@pytest.fixture
async def state(tmp_path: Path, new_db_url: Any) -> AsyncIterator[CSState]:
    db = Database(await new_db_url() or f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")  # both engines
    await db.upgrade()
    try:
        yield make_state(db, tmp_path)
    finally:
        await db.close()


async def submit(state: CSState, kind: str, params: dict[str, Any] | None = None, target: str = "t" * 32) -> str:
    async with state.change() as session:
        return await runner.submit(session, kind, params or {}, target_id=target)


async def job_row(state: CSState, job_id: str) -> Job:
    async with state.db.read() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        return job


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def wait_final(state: CSState, job_id: str, timeout_s: float = 10.0) -> Job:
    async def final() -> bool:
        return (await job_row(state, job_id)).state in runner.FINAL_STATES
    await wait_until(final, timeout_s)
    return await job_row(state, job_id)


async def test_steps_and_result_are_recorded(state: CSState) -> None:
    async def run(ctx: JobContext) -> dict[str, Any]:
        await ctx.step("prepare", percent=10, detail="checking disks")
        await ctx.step("copy", percent=60)
        await ctx.step("finish")
        return {"copied": ctx.params["n"], "target": ctx.target_id}

    r = Runner(state, "cs-a", poll_interval_s=0.05, lease_s=5, handlers={"demo": run})
    r.start()
    try:
        job_id = await submit(state, "demo", {"n": 3})
        job = await wait_final(state, job_id)
    finally:
        await r.stop()
    assert (job.state, job.result, job.error) == ("succeeded", {"copied": 3, "target": "t" * 32}, None)
    assert [s["name"] for s in job.steps] == ["prepare", "copy", "finish"]
    assert job.steps[0]["percent"] == 10 and job.steps[0]["detail"] == "checking disks"
    assert "percent" not in job.steps[2] and job.percent == 100.0
    assert job.started_ns is not None and job.ended_ns is not None
    assert job.created_ns <= job.started_ns <= job.steps[0]["at_ns"] <= job.steps[2]["at_ns"] <= job.ended_ns
    assert (job.claimed_by, job.lease_until_ns, job.attempts) == (None, None, 1)


async def test_failures_are_recorded_with_the_error(state: CSState) -> None:
    async def refuse(ctx: JobContext) -> None:
        await ctx.step("check", percent=5)
        raise errors.Conflict("machine m1 is not protected")

    async def crash(ctx: JobContext) -> None:
        raise ValueError("secret-detail-xyz")

    async def bad_result(ctx: JobContext) -> Any:
        return [1, 2]

    r = Runner(state, "cs-a", poll_interval_s=0.05, lease_s=5,
               handlers={"refuse": refuse, "crash": crash, "bad": bad_result})
    r.start()
    try:
        ids = [await submit(state, kind) for kind in ("refuse", "crash", "bad")]
        jobs = [await wait_final(state, j) for j in ids]
    finally:
        await r.stop()
    assert [(j.state, j.error) for j in jobs] == [
        ("failed", "machine m1 is not protected"), ("failed", "ValueError"),
        ("failed", "the bad handler returned no object")]
    assert [s["name"] for s in jobs[0].steps] == ["check"] and jobs[0].percent == 5
    assert all(j.result is None and j.ended_ns and j.claimed_by is None for j in jobs)


async def test_kinds_without_a_handler_are_never_touched(state: CSState) -> None:
    async def run(ctx: JobContext) -> None:
        return None

    r = Runner(state, "cs-a", poll_interval_s=0.02, lease_s=5, handlers={"demo": run})
    r.start()
    try:
        mt_job = await submit(state, "failover", {"point": "latest"})
        done = await wait_final(state, await submit(state, "demo"))
        await asyncio.sleep(0.2)
    finally:
        await r.stop()
    assert done.state == "succeeded"
    job = await job_row(state, mt_job)
    assert (job.state, job.claimed_by, job.attempts, job.steps) == ("queued", None, 0, [])


async def test_a_killed_cs_job_is_reclaimed_after_its_lease_and_skips_recorded_steps(
        state: CSState, tmp_path: Path) -> None:
    lease_s = 0.6
    runs: list[tuple[str, set[str]]] = []
    gate = asyncio.Event()

    async def run(ctx: JobContext) -> dict[str, Any]:
        runs.append((ctx._runner.owner_id, ctx.done_steps))
        if "one" not in ctx.done_steps:
            await ctx.step("one", percent=50)
        gate.set()
        while ctx._runner.owner_id == "cs-a":  # the first CS hangs here until it is killed
            await ctx.sleep(0.05)
        await ctx.step("two", percent=90)
        return {"by": ctx._runner.owner_id}

    a = Runner(state, "cs-a", poll_interval_s=0.02, lease_s=lease_s, handlers={"long": run})
    a.start()
    job_id = await submit(state, "long")
    await asyncio.wait_for(gate.wait(), 10)
    await asyncio.sleep(lease_s * 1.5)  # renewed while running: still held by a
    held = await job_row(state, job_id)
    assert (held.state, held.claimed_by) == ("running", "cs-a") and held.lease_until_ns > time.time_ns()
    await a.stop(release=False)  # killed: nothing written

    other_db = Database(state.db.url)  # a second CS process on the same file
    other = make_state(other_db, tmp_path)
    b = Runner(other, "cs-b", poll_interval_s=0.02, lease_s=lease_s, handlers={"long": run})
    b.start()
    try:
        await asyncio.sleep(0.1)
        assert (await job_row(state, job_id)).claimed_by == "cs-a"  # not before the lease expires
        job = await wait_final(state, job_id)
    finally:
        await b.stop()
        await other_db.close()
    assert (job.state, job.result, job.attempts) == ("succeeded", {"by": "cs-b"}, 2)
    assert [s["name"] for s in job.steps] == ["one", "two"]
    assert runs == [("cs-a", set()), ("cs-b", {"one"})]
    assert job.ended_ns is not None and job.ended_ns - job.started_ns >= int(lease_s * 1e9)


async def test_a_graceful_stop_hands_the_job_back(state: CSState) -> None:
    started = asyncio.Event()

    async def run(ctx: JobContext) -> None:
        await ctx.step("begin")
        started.set()
        await ctx.sleep(60)

    a = Runner(state, "cs-a", poll_interval_s=0.02, lease_s=30, handlers={"slow": run})
    a.start()
    job_id = await submit(state, "slow")
    await asyncio.wait_for(started.wait(), 10)
    await a.stop()
    job = await job_row(state, job_id)
    assert (job.state, job.claimed_by, job.lease_until_ns, job.attempts) == ("queued", None, None, 0)
    assert [s["name"] for s in job.steps] == ["begin"]


async def test_two_runners_on_one_database_never_claim_a_job_twice(state: CSState, tmp_path: Path) -> None:
    handled: list[tuple[str, str]] = []

    async def run(ctx: JobContext) -> dict[str, Any]:
        handled.append((ctx.job_id, ctx._runner.owner_id))
        await ctx.step("work")
        await asyncio.sleep(0.005)
        return {"by": ctx._runner.owner_id}

    other_db = Database(state.db.url)
    other = make_state(other_db, tmp_path)
    ids = [await submit(state, "many", {"i": i}) for i in range(60)]
    runners = [Runner(s, name, poll_interval_s=0.02, lease_s=10, max_jobs=4, handlers={"many": run})
               for s, name in ((state, "cs-a"), (other, "cs-b"))]
    for r in runners:
        r.start()
    try:
        jobs = [await wait_final(state, j, timeout_s=30) for j in ids]
    finally:
        for r in runners:
            await r.stop()
        await other_db.close()
    assert sorted(j for j, _ in handled) == sorted(ids)  # each exactly once
    assert all(j.state == "succeeded" and j.attempts == 1 and len(j.steps) == 1 for j in jobs)
    by = {owner for _, owner in handled}
    assert by <= {"cs-a", "cs-b"}


async def test_jobs_listing_shows_steps_and_filters(cs_env: Any) -> None:
    async def run(ctx: JobContext) -> dict[str, Any]:
        await ctx.step("only", percent=42)
        return {}

    runner.handler("test-listing")(run)
    try:
        state = cs_env.service.state
        ids = [await submit(state, "test-listing") for _ in range(3)]
        for j in ids:
            await wait_final(state, j)
        mt_job = await submit(state, "failover")  # no handler on the CS: stays queued
        admin = cs_env.admin._api
        page = await admin.get("/v1/jobs", params={"kind": "test-listing", "state": "succeeded", "limit": "2"})
        assert [j["job_id"] for j in page["items"]] == ids[::-1][:2] and page["next"]
        rest = await admin.get("/v1/jobs", params={"kind": "test-listing", "before": page["next"]})
        assert [j["job_id"] for j in rest["items"]] == [ids[0]] and rest["next"] is None
        one = await cs_env.admin.job(ids[0])
        assert [s["name"] for s in one["steps"]] == ["only"] and one["percent"] == 100.0
        assert one["started_ns"] and one["ended_ns"] and one["attempts"] == 1
        queued = await admin.get("/v1/jobs", params={"state": "queued"})
        assert [j["job_id"] for j in queued["items"]] == [mt_job]
        for query in ("state=done", "limit=0", "before=12-zz", "kind=Bad!", "colour=red"):
            status, body = await raw(cs_env.url, cs_env.admin._api._ssl, "GET", f"/v1/jobs?{query}")
            assert (status, body["code"]) == (400, "bad_request"), query
    finally:
        runner.HANDLERS.pop("test-listing", None)


async def test_a_job_whose_cs_keeps_dying_is_abandoned(state: CSState) -> None:
    async def run(ctx: JobContext) -> None:
        raise AssertionError("never run: the job is abandoned")

    job_id = await submit(state, "poison")
    async with state.db.write() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        job.state, job.claimed_by, job.attempts, job.lease_until_ns = "running", "cs-dead", runner.MAX_ATTEMPTS, 1
    r = Runner(state, "cs-a", poll_interval_s=0.02, lease_s=5, handlers={"poison": run})
    r.start()
    try:
        job = await wait_final(state, job_id)
    finally:
        await r.stop()
    assert job.state == "failed" and "abandoned after 5 attempts" in (job.error or "")
    assert (job.claimed_by, job.lease_until_ns) == (None, None) and job.ended_ns
