"""A recovery plan's planned failover and commit (cs/plan_jobs.py, mode ``planned``, kind ``plan-commit``)
on a real CS and job runner, the agents and the MT played by the test: groups in order, every machine's
source stopped, drained and failed over at its final W, then the plan committed; bad requests refused
with nothing changed. And a machine committed after its failover, protected again: protected, its
earlier failover kept in the jobs and the audit log, a new failover allowed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cshelpers import settings
from opsfleet import OpsFleet, running_fleet

from common import errors

HOSTS = ("m1", "m2", "m3")


@pytest.fixture
async def fleet(cs_env: Any, tmp_path: Path) -> AsyncIterator[OpsFleet]:
    async with running_fleet(cs_env, tmp_path, hosts=HOSTS) as f:
        yield f


@contextlib.asynccontextmanager
async def sources(f: OpsFleet) -> AsyncIterator[dict[str, str]]:
    """Play every agent's stop: report the fleet's latest W once its settings carry ``shutdown``;
    yields host -> the planned failover job it stopped for (in the order they stopped)."""
    stopped: dict[str, str] = {}

    async def play() -> None:
        while True:
            for host, agent in f.machines.items():
                entry = (await settings(agent))["document"].get("shutdown")
                if entry and host not in stopped:
                    await agent.api.post("/v1/machines/self/shutdown", {"job_id": entry["job_id"], "wnum": f.latest})
                    stopped[host] = entry["job_id"]
            await asyncio.sleep(0.05)

    task = asyncio.create_task(play())
    try:
        yield stopped
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def make_plan(f: OpsFleet, out: Path) -> None:
    pre = [{"kind": "script", "name": "env", "script": f'echo "$DRLAB_MODE $DRLAB_GROUP" >> {out}'}]
    groups = [{"machines": [f.mid("m1")], "pre": pre}, {"machines": [f.mid("m2"), f.mid("m3")], "pre": pre}]
    await f.api.post("/v1/plans", {"name": "dr", "groups": groups})


async def machine_ops(f: OpsFleet) -> list[dict[str, Any]]:
    page = await f.api.get("/v1/jobs", params={"limit": 100})
    return sorted((j for j in page["items"] if j["kind"].startswith("machine-") and j["kind"] != "machine-failover"),
                  key=lambda j: j["created_ns"])


async def test_planned_plan_failover_groups_in_order_then_the_plan_commit(fleet: OpsFleet, tmp_path: Path) -> None:
    f = fleet
    out = tmp_path / "env.out"
    await make_plan(f, out)
    async with sources(f) as stopped:
        job = await f.wait(str((await f.api.post("/v1/plans/dr/failover", {"mode": "planned"}))["job_id"]))
    assert job["state"] == "succeeded" and job["kind"] == "plan-failover", job
    steps = [s["name"] for s in job["steps"]]
    assert steps == ["group 1 pre 1: env", "group 1: planned-failover started", "group 1: done",
                     "group 2 pre 1: env", "group 2: planned-failover started", "group 2: done"]
    assert out.read_text().split() == ["planned", "1", "planned", "2"]
    ops = await machine_ops(f)
    assert sorted((j["kind"], j["disk_id"], j["state"]) for j in ops) == sorted(
        ("machine-planned-failover", f.mid(h), "succeeded") for h in HOSTS)
    by_host = {h: next(j for j in ops if j["disk_id"] == f.mid(h)) for h in HOSTS}
    group1_done = job["steps"][2]["at_ns"]
    assert by_host["m1"]["created_ns"] < group1_done  # group 2 started once group 1 was done
    assert all(by_host[h]["created_ns"] > group1_done for h in ("m2", "m3"))
    assert list(stopped)[0] == "m1" and set(stopped) == set(HOSTS)
    assert {h: by_host[h]["job_id"] for h in HOSTS} == stopped  # each machine's source stopped for its own job
    for host in HOSTS:
        result = (await f.admin.job(by_host[host]["job_id"]))["result"]
        assert result["source_wnum"] == f.latest and result["failover"]["planned"] is True
        assert set((await f.disk_states(host)).values()) == {"failed-over"}
    failovers = [j for j in f.seen if j["kind"] == "failover"]
    assert len(failovers) == 6 and all(j["point"] == {"wnum": f.latest} for j in failovers)
    assert set(job["result"]["machines"]) == {f.mid(h) for h in HOSTS} and job["result"]["mode"] == "planned"

    commit = await f.wait(str((await f.api.post("/v1/plans/dr/commit", {}))["job_id"]))
    assert commit["state"] == "succeeded" and commit["kind"] == "plan-commit", commit
    assert [s["name"] for s in commit["steps"]] == ["group 1: commit started", "group 1: done",
                                                    "group 2: commit started", "group 2: done"]
    assert out.read_text().split() == ["planned", "1", "planned", "2"]  # a commit runs no actions
    for host in HOSTS:
        assert set((await f.disk_states(host)).values()) == {"committed"}
    assert len([j for j in f.seen if j["kind"] == "view-commit"]) == 6
    assert "committed already" in await f.refused(errors.Conflict, "POST", "/v1/plans/dr/commit")
    assert "committed" in await f.refused(errors.Conflict, "POST", "/v1/plans/dr/failover", {"mode": "planned"})


async def test_bad_planned_and_commit_requests_change_nothing(fleet: OpsFleet, tmp_path: Path) -> None:
    f = fleet
    await make_plan(f, tmp_path / "env.out")
    before = {h: await f.disk_states(h) for h in HOSTS}
    for body, why in (({"mode": "bogus"}, "mode must be one of test, unplanned, planned"),
                      ({"mode": "planned", "point": "latest"}, "takes no point"),
                      ({"mode": "planned", "image": "yes"}, "image must be true or false"),
                      ({"mode": "planned", "extra": 1}, "extra")):
        assert why in await f.refused(errors.BadRequest, "POST", "/v1/plans/dr/failover", body)
    assert "x" in await f.refused(errors.BadRequest, "POST", "/v1/plans/dr/commit", {"x": 1})
    assert "no failover to commit" in await f.refused(errors.Conflict, "POST", "/v1/plans/dr/commit")
    assert "no recovery plan" in await f.refused(errors.NotFound, "POST", "/v1/plans/nope/commit")
    # a test failover of one machine: neither a planned failover nor a commit of the plan may start
    assert (await f.wait(await f.op("m1", "test-failover")))["state"] == "succeeded"
    assert "clean it up first" in await f.refused(errors.Conflict, "POST", "/v1/plans/dr/failover",
                                                  {"mode": "planned"})
    assert "never committed" in await f.refused(errors.Conflict, "POST", "/v1/plans/dr/commit")
    assert [j["kind"] for j in await machine_ops(f)] == ["machine-test-failover"]
    for kind in ("plan-failover", "plan-commit"):
        assert (await f.api.get("/v1/jobs", params={"kind": kind}))["items"] == []
    assert {h: await f.disk_states(h) for h in HOSTS} == before
    for agent in f.machines.values():  # no source was told to stop
        assert "shutdown" not in (await settings(agent))["document"]


async def test_a_committed_machine_protected_again_is_protected_with_its_failover_in_history(
        fleet: OpsFleet) -> None:
    f = fleet
    mid = f.mid("m1")
    failover = await f.wait(await f.op("m1", "failover", {"mode": "unplanned"}))
    commit = await f.wait(await f.op("m1", "commit"))
    assert (failover["state"], commit["state"]) == ("succeeded", "succeeded")
    assert (await f.api.get(f"/v1/machines/{mid}"))["protection_state"] == "committed"
    assert "is committed" in await f.refused(errors.Conflict, "POST", f"/v1/machines/{mid}/failover",
                                             {"mode": "unplanned"})

    await f.admin.protect(mid)  # protected forward again (after a failback: seeded)
    for disk_id in f.disks["m1"].values():
        await f.machines["m1"].api.post(f"/v1/disks/{disk_id}/progress", {
            "state": "protected", "percent": 100.0, "bytes_done": 1, "bytes_total": 1})
    shown = await f.api.get(f"/v1/machines/{mid}")
    assert shown["protection_state"] == "protected" and {d["state"] for d in shown["disks"]} == {"protected"}
    listed = {m["machine_id"]: m for m in (await f.api.get("/v1/machines"))["items"]}
    assert listed[mid]["protection_state"] == "protected"
    # the earlier failover is history: its jobs and the machine's audited states stay
    kept = await f.api.get("/v1/jobs", params={"kind": "machine-commit"})
    assert [j["job_id"] for j in kept["items"]] == [commit["job_id"]]
    assert (await f.admin.job(commit["job_id"]))["result"]["failover"]["mode"] == "committed"
    audit = await f.api.get("/v1/audit", params={"entity": "machines", "entity_id": mid, "limit": 100})
    states = [e["changes"]["protection_state"][1] for e in reversed(audit["items"])
              if "protection_state" in (e.get("changes") or {})]
    assert states.index("failed-over") < states.index("committed") < len(states) - 1, states
    assert states[-1] == "protected", states
    # a new cycle: the machine may fail over again
    again = await f.wait(await f.op("m1", "failover", {"mode": "unplanned"}))
    assert again["state"] == "succeeded", again
    assert set((await f.disk_states("m1")).values()) == {"failed-over"}
