"""Recovery plan jobs (cs/plan_jobs.py) on a real CS and its job runner, the MT played by the test:
groups in order, scripts with their environment, manual steps that pause until resumed (also
across a runner restart), a failing script, refusals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opsfleet import OpsFleet, running_fleet

from common import errors
from cs.runner import Runner


@pytest.fixture
async def fleet(cs_env: Any, tmp_path: Path) -> AsyncIterator[OpsFleet]:
    async with running_fleet(cs_env, tmp_path, hosts=("m1", "m2")) as f:
        yield f


def script(name: str, text: str, timeout_s: int = 30) -> dict[str, Any]:
    return {"kind": "script", "name": name, "script": text, "timeout_s": timeout_s}


async def make_plan(f: OpsFleet, name: str, pre: list[Any], post: list[Any]) -> None:
    groups = [{"machines": [f.mid("m1")], "pre": pre, "post": post}, {"machines": [f.mid("m2")]}]
    await f.api.post("/v1/plans", {"name": name, "groups": groups})


async def until_waiting(f: OpsFleet, job_id: str, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = await f.admin.job(job_id)
        if job["steps"] and job["steps"][-1]["name"].startswith("waiting: "):
            return dict(job)
        assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
        await asyncio.sleep(0.05)


async def machine_ops(f: OpsFleet) -> list[dict[str, Any]]:
    page = await f.api.get("/v1/jobs", params={"limit": 100})
    return sorted((j for j in page["items"] if j["kind"].startswith("machine-") and j["kind"] != "machine-failover"),
                  key=lambda j: j["created_ns"])


async def test_groups_in_order_with_a_script_and_a_manual_step(fleet: OpsFleet, tmp_path: Path) -> None:
    f = fleet
    out = tmp_path / "script.out"
    await make_plan(f, "dr", [script("env", f'echo "$DRLAB_PLAN $DRLAB_GROUP $DRLAB_MODE" > {out}; echo ran')],
                    [{"kind": "manual", "name": "dns", "instruction": "switch the DNS to the cloud site"}])
    job_id = str((await f.api.post("/v1/plans/dr/failover", {"mode": "test"}))["job_id"])
    assert "in progress" in await f.refused(errors.Conflict, "POST", "/v1/plans/dr/failover", {"mode": "test"})
    job = await until_waiting(f, job_id)
    assert job["kind"] == "plan-failover"
    assert [s["name"] for s in job["steps"]] == [
        "group 1 pre 1: env", "group 1: test-failover started", "group 1: done",
        "waiting: switch the DNS to the cloud site"]
    assert job["steps"][0]["detail"].strip() == "ran"
    assert out.read_text().split() == ["dr", "1", "test"]
    ops = await machine_ops(f)
    assert [(j["kind"], j["disk_id"], j["state"]) for j in ops] == [
        ("machine-test-failover", f.mid("m1"), "succeeded")]  # group 2 waits for the manual step
    await asyncio.sleep(0.3)
    assert len(await machine_ops(f)) == 1

    resumed = await f.api.post(f"/v1/jobs/{job_id}/resume", {})
    assert resumed == {"job_id": job_id, "resumed": "group 1 post 1: dns"}
    done = await f.wait(job_id)
    assert done["state"] == "succeeded", done
    assert [s["name"] for s in done["steps"]][4:] == [
        "group 1 post 1: dns", "group 2: test-failover started", "group 2: done"]
    ops = await machine_ops(f)
    assert [(j["disk_id"], j["state"]) for j in ops] == [(f.mid("m1"), "succeeded"), (f.mid("m2"), "succeeded")]
    assert ops[1]["created_ns"] > done["steps"][4]["at_ns"] - 1  # group 2 started after the resume
    result = done["result"]
    assert set(result["machines"]) == {f.mid("m1"), f.mid("m2")}
    assert all(len(m["disks"]) == 2 and m["wnum"] == 30 for m in result["machines"].values())
    assert "not waiting" in await f.refused(errors.Conflict, "POST", f"/v1/jobs/{job_id}/resume")

    # the plan's cleanup: every machine's test failover dropped
    cleanup = await f.wait(str((await f.api.post("/v1/plans/dr/cleanup-test-failover", {}))["job_id"]))
    assert cleanup["state"] == "succeeded" and cleanup["kind"] == "plan-cleanup", cleanup
    assert len([j for j in f.seen if j["kind"] == "view-drop"]) == 4
    for host in ("m1", "m2"):  # nothing left to clean up; a new failover may start
        assert "no failover" in await f.refused(errors.Conflict, "POST",
                                                f"/v1/machines/{f.mid(host)}/cleanup-test-failover")


async def test_a_failing_script_fails_the_plan_with_its_output(fleet: OpsFleet) -> None:
    f = fleet
    await make_plan(f, "bad", [script("boom", "echo starting; echo broken >&2; exit 3")], [])
    job = await f.wait(str((await f.api.post("/v1/plans/bad/failover", {"mode": "unplanned"}))["job_id"]))
    assert job["state"] == "failed", job
    assert "group 1 pre 1: boom" in job["error"] and "status 3" in job["error"] and "broken" in job["error"]
    assert await machine_ops(f) == []  # no machine was failed over
    assert set((await f.disk_states("m1")).values()) != {"failed-over"}


async def test_a_script_past_its_timeout_fails_the_plan(fleet: OpsFleet) -> None:
    f = fleet
    await make_plan(f, "slow", [script("sleepy", "sleep 30", timeout_s=1)], [])
    started = time.monotonic()
    job = await f.wait(str((await f.api.post("/v1/plans/slow/failover", {"mode": "test"}))["job_id"]))
    assert job["state"] == "failed" and "timed out after 1 s" in job["error"], job
    assert time.monotonic() - started < 10


async def test_a_paused_plan_survives_a_restart_of_the_job_runner(fleet: OpsFleet, cs_env: Any) -> None:
    f = fleet
    await make_plan(f, "dr", [], [{"kind": "manual", "name": "check", "instruction": "check the apps"}])
    job_id = str((await f.api.post("/v1/plans/dr/failover", {"mode": "unplanned", "point": "latest"}))["job_id"])
    await until_waiting(f, job_id)
    service = cs_env.service
    await service.jobs.stop()  # the CS stops: the job is handed back, its steps and pause stay
    assert (await f.admin.job(job_id))["state"] == "queued"
    service.jobs = Runner(service.state, "cs-restarted", poll_interval_s=0.05, lease_s=5)
    service.jobs.start()
    await asyncio.sleep(0.5)
    job = await f.admin.job(job_id)
    assert job["state"] == "running" and job["claimed_by"] == "cs-restarted", job
    assert [s["name"] for s in job["steps"]].count("waiting: check the apps") == 1  # paused again, once
    await f.api.post(f"/v1/jobs/{job_id}/resume", {})
    done = await f.wait(job_id)
    assert done["state"] == "succeeded", done
    assert [s["name"] for s in done["steps"]].count("group 1: failover started") == 1
    for host in ("m1", "m2"):
        assert set((await f.disk_states(host)).values()) == {"failed-over"}


async def test_plan_requests_are_checked(fleet: OpsFleet) -> None:
    f = fleet
    assert "no recovery plan" in await f.refused(errors.NotFound, "POST", "/v1/plans/nope/failover", {"mode": "test"})
    await make_plan(f, "dr", [], [])
    assert "mode" in await f.refused(errors.BadRequest, "POST", "/v1/plans/dr/failover", {})
    assert "mode must be" in await f.refused(errors.BadRequest, "POST", "/v1/plans/dr/failover", {"mode": "x"})
    assert "point must be" in await f.refused(errors.BadRequest, "POST", "/v1/plans/dr/failover",
                                              {"mode": "test", "point": "soon"})
    # a machine of the plan not ready for it: refused before anything starts
    assert (await f.wait(await f.op("m2", "test-failover")))["state"] == "succeeded"
    assert "clean it up first" in await f.refused(errors.Conflict, "POST", "/v1/plans/dr/failover",
                                                  {"mode": "unplanned"})
    assert len(await machine_ops(f)) == 1
    page = await f.api.get("/v1/jobs", params={"kind": "plan-failover"})
    assert page["items"] == []
    machine_job = (await machine_ops(f))[0]["job_id"]
    assert "not a recovery plan job" in await f.refused(errors.Conflict, "POST", f"/v1/jobs/{machine_job}/resume")
    assert "no job" in await f.refused(errors.NotFound, "POST", f"/v1/jobs/{'cd' * 16}/resume")
