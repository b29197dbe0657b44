"""Planned failover (cs/planned.py): the agent's settings carry ``shutdown`` while it goes, the
agent's report of its final W lets the job drain (every MT at W) and fail over at exactly W; an
error report fails it and lets the source write again; bad or foreign reports are refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, raw, settings
from opsfleet import OpsFleet, running_fleet

from common import errors, tls

W = 42


@pytest.fixture
async def fleet(cs_env: Any, tmp_path: Path) -> AsyncIterator[OpsFleet]:
    async with running_fleet(cs_env, tmp_path, hosts=("m1", "m2")) as f:  # its MT answers the drain's listing probes
        yield f


async def agent_doc(f: OpsFleet, host: str = "m1") -> dict[str, Any]:
    return dict((await settings(f.machines[host]))["document"])


async def report(f: OpsFleet, agent: Enrolled, body: Any) -> tuple[int, Any]:
    return await raw(_url(f), agent.ssl, "POST", "/v1/machines/self/shutdown", body)


async def until(pred: Any, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_planned_failover_drains_to_the_final_w_and_fails_over_there(fleet: OpsFleet) -> None:
    f = fleet
    f.latest = W - 2  # the MT is behind the source's final W until the test says otherwise
    job_id = await f.op("m1", "planned-failover")
    assert set((await f.disk_states("m1")).values()) == {"failover-in-progress"}
    assert (await agent_doc(f))["shutdown"] == {"job_id": job_id}
    assert "shutdown" not in await agent_doc(f, "m2")
    path = f"/v1/machines/{f.mid('m1')}"
    assert "in progress" in await f.refused(errors.Conflict, "POST", f"{path}/planned-failover")

    status, body = await report(f, f.machines["m1"], {"job_id": job_id, "wnum": W})
    assert status == 200, body
    await until(lambda: _has_step(f, job_id, "stopped"))
    await asyncio.sleep(1.5)  # a few drain polls: the MT is still behind W
    job = await f.admin.job(job_id)
    assert job["state"] in ("queued", "running") and "drained" not in _steps(job), job
    assert not [j for j in f.seen if j["kind"] == "failover"]

    f.latest = W
    job = await f.wait(job_id)
    assert job["state"] == "succeeded" and job["kind"] == "machine-planned-failover", job
    steps = _steps(job)
    assert steps.index("stopped") < steps.index("drained") < steps.index("failed over"), steps
    assert job["result"]["source_wnum"] == W and job["result"]["failover"]["planned"] is True
    failovers = [j for j in f.seen if j["kind"] == "failover"]
    assert sorted(j["disk_id"] for j in failovers) == sorted(f.disks["m1"].values())
    assert all(j["point"] == {"wnum": W} for j in failovers), failovers
    assert set((await f.disk_states("m1")).values()) == {"failed-over"}
    assert (await agent_doc(f))["shutdown"] == {"job_id": job_id}  # the source stays stopped
    status, body = await report(f, f.machines["m1"], {"job_id": job_id, "wnum": W + 1})
    assert status == 404, body  # the job is over: a late report changes nothing
    assert (await f.admin.job(job_id))["result"]["source_wnum"] == W

    committed = await f.wait(await f.op("m1", "commit"))
    assert committed["state"] == "succeeded", committed
    assert set((await f.disk_states("m1")).values()) == {"committed"}


async def test_an_error_report_fails_the_job_and_lets_the_source_write(fleet: OpsFleet) -> None:
    f = fleet
    before = await f.disk_states("m1")
    job_id = await f.op("m1", "planned-failover")
    status, body = await report(f, f.machines["m1"], {"job_id": job_id, "error": "disk0 is not protected yet"})
    assert status == 200, body
    job = await f.wait(job_id)
    assert job["state"] == "failed" and "disk0 is not protected yet" in job["error"], job
    assert await f.disk_states("m1") == before
    assert "shutdown" not in await agent_doc(f)
    assert not [j for j in f.seen if j["kind"] == "failover"]
    again = await f.op("m1", "planned-failover")  # nothing is left going: a new one may start
    assert (await agent_doc(f))["shutdown"] == {"job_id": again}


async def test_bad_and_foreign_reports_are_refused_and_change_nothing(fleet: OpsFleet) -> None:
    f = fleet
    job_id = await f.op("m1", "planned-failover")
    other = await f.op("m2", "planned-failover")
    m1 = f.machines["m1"]
    for body in ({"job_id": job_id, "wnum": W, "error": "x"}, {"job_id": job_id}, {"wnum": W},
                 {"job_id": "nothex", "wnum": W}, {"job_id": job_id, "wnum": -1}, {"job_id": job_id, "wnum": "7"},
                 {"job_id": job_id, "error": 5}):
        status, reply = await report(f, m1, body)
        assert status == 400, (body, reply)
    for body in ({"job_id": other, "wnum": W}, {"job_id": "0" * 32, "wnum": W}):  # another machine's, unknown
        status, reply = await report(f, m1, body)
        assert status == 404, (body, reply)
    status, reply = await raw(_url(f), tls.client_context(f.site.env.admin_files), "POST",
                              "/v1/machines/self/shutdown", {"job_id": job_id, "wnum": W})
    assert status in (401, 403), reply  # only an agent reports its own stop
    for jid in (job_id, other):
        job = await f.admin.job(jid)
        assert job["state"] in ("queued", "running") and "stopped" not in _steps(job), job
    assert (await agent_doc(f))["shutdown"] == {"job_id": job_id}
    assert (await agent_doc(f, "m2"))["shutdown"] == {"job_id": other}
    # the right report still counts afterwards
    assert (await report(f, m1, {"job_id": job_id, "wnum": 10}))[0] == 200
    assert (await f.wait(job_id))["result"]["source_wnum"] == 10


def _steps(job: dict[str, Any]) -> list[str]:
    return [s["name"] for s in job.get("steps") or []]


async def _has_step(f: OpsFleet, job_id: str, name: str) -> bool:
    return name in _steps(await f.admin.job(job_id))


def _url(f: OpsFleet) -> str:
    return str(f.site.env.url)
