"""Failover operations of a machine (cs/machine_ops.py) through the CS's routes, its job runner and
an MT played by the test: test failover, change point, cleanup; unplanned failover and commit; the
refusals of anything out of order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cshelpers import settings
from opsfleet import SIZE, OpsFleet, running_fleet

from common import errors
from cs import machine_ops

HEX = "ab" * 16


@pytest.fixture
async def fleet(cs_env: Any, tmp_path: Path) -> AsyncIterator[OpsFleet]:
    async with running_fleet(cs_env, tmp_path) as f:
        yield f


def names(job: dict[str, Any]) -> list[str]:
    return [s["name"] for s in job["steps"]]


def test_the_order_of_operations() -> None:
    m = "m" * 32
    machine_ops.check("test-failover", None, m)
    machine_ops.check("failover", None, m)
    for op in ("cleanup", "change-point", "commit"):
        with pytest.raises(errors.Conflict, match="no failover"):
            machine_ops.check(op, None, m)
    test, unplanned = {"mode": "test", "job_id": "j"}, {"mode": "unplanned", "job_id": "j"}
    machine_ops.check("cleanup", test, m)
    machine_ops.check("change-point", test, m)
    machine_ops.check("change-point", unplanned, m)
    machine_ops.check("commit", unplanned, m)
    with pytest.raises(errors.Conflict, match="never committed"):
        machine_ops.check("commit", test, m)
    with pytest.raises(errors.Conflict, match="not a test failover"):
        machine_ops.check("cleanup", unplanned, m)
    with pytest.raises(errors.Conflict, match="clean it up first"):
        machine_ops.check("failover", test, m)
    for op in machine_ops.OPS:
        with pytest.raises(errors.Conflict, match="committed"):
            machine_ops.check(op, {"mode": "committed"}, m)


async def test_test_failover_change_point_and_cleanup(fleet: OpsFleet) -> None:
    f = fleet
    before = await f.disk_states("m1")
    job = await f.wait(await f.op("m1", "test-failover"))
    assert job["state"] == "succeeded", job
    assert job["kind"] == "machine-test-failover" and job["percent"] == 100.0
    steps = names(job)  # the phases it saw while polling, then the outcome
    assert steps[0] == "start" and steps[-1] == "test failed over" and set(steps[1:-1]) <= {
        "phase probe", "phase failover"}, steps
    assert [s["percent"] for s in job["steps"]] == sorted(s["percent"] for s in job["steps"])
    result = job["result"]
    assert result["mode"] == "test" and result["wnum"] == 30
    views = result["failover"]["views"]
    assert sorted(views) == sorted(f.disks["m1"].values())
    failovers = {j["job_id"]: j for j in f.seen if j["kind"] == "failover"}
    assert set(views.values()) == set(failovers)  # a disk's view id: its failover job's id
    assert {d["disk_id"]: d["nbd_url"] for d in result["disks"]} == {  # no image asked: none made
        d: f"nbd://mt/{v}" for d, v in views.items()}
    assert not any("image_path" in d or "image" in j for d in result["disks"] for j in f.seen)
    assert await f.disk_states("m1") == before  # the disks stay as they were (replication goes on)
    assert all(d["disk_id"] in views for d in (await settings(f.mt))["document"]["disks"])

    # out of order: a second failover, a commit of a test failover
    path = f"/v1/machines/{f.mid('m1')}"
    assert "clean it up first" in await f.refused(errors.Conflict, "POST", f"{path}/test-failover")
    assert "clean it up first" in await f.refused(errors.Conflict, "POST", f"{path}/failover", {"mode": "unplanned"})
    assert "never committed" in await f.refused(errors.Conflict, "POST", f"{path}/commit")

    f.latest = 44
    changed = await f.wait(await f.op("m1", "change-point", {"point": "latest"}))
    assert changed["state"] == "succeeded", changed
    moved = [j for j in f.seen if j["kind"] == "view-change"]
    assert sorted(j["point"]["view"] for j in moved) == sorted(views.values())
    assert all(j["point"]["to"] == {"wnum": 44} for j in moved)
    assert changed["result"]["failover"] == {**result["failover"], "wnum": 44}
    assert {d["job_id"] for d in changed["result"]["disks"]} == set(views.values())

    cleaned = await f.wait(await f.op("m1", "cleanup-test-failover"))
    assert cleaned["state"] == "succeeded" and cleaned["result"]["failover"] is None, cleaned
    dropped = [j for j in f.seen if j["kind"] == "view-drop"]
    assert sorted(j["point"]["view"] for j in dropped) == sorted(views.values())
    assert "no failover to cleanup" in await f.refused(errors.Conflict, "POST", f"{path}/cleanup-test-failover")
    # a new test failover may start again
    assert (await f.wait(await f.op("m1", "test-failover")))["state"] == "succeeded"


async def test_unplanned_failover_then_commit_drops_the_disks_from_every_settings(fleet: OpsFleet) -> None:
    f = fleet
    f.hold = True
    job_id = await f.op("m1", "failover", {"mode": "unplanned", "point": "latest"})
    assert set((await f.disk_states("m1")).values()) == {"failover-in-progress"}
    path = f"/v1/machines/{f.mid('m1')}"
    assert "in progress" in await f.refused(errors.Conflict, "POST", f"{path}/test-failover")
    f.hold = False
    job = await f.wait(job_id)
    assert job["state"] == "succeeded" and job["kind"] == "machine-unplanned-failover", job
    assert names(job)[-1] == "failed over"
    assert set((await f.disk_states("m1")).values()) == {"failed-over"}
    disk0 = f.disks["m1"]["disk0"]
    progress = {"state": "protected", "percent": 100.0, "bytes_done": SIZE, "bytes_total": SIZE}
    await f.machines["m1"].api.post(f"/v1/disks/{disk0}/progress", progress)  # the agent's report
    assert (await f.disk_states("m1"))["disk0"] == "failed-over"  # ... does not undo the failover
    assert "not a test failover" in await f.refused(errors.Conflict, "POST", f"{path}/cleanup-test-failover")
    assert "commit it or change its point" in await f.refused(errors.Conflict, "POST", f"{path}/failover",
                                                               {"mode": "test"})

    committed = await f.wait(await f.op("m1", "commit"))
    assert committed["state"] == "succeeded", committed
    assert names(committed) == ["start", "committed"]
    commits = [j for j in f.seen if j["kind"] == "view-commit"]
    views = job["result"]["failover"]["views"]
    assert sorted(j["point"]["view"] for j in commits) == sorted(views.values())
    assert {d["disk_id"]: d["result"]["replica_path"] for d in committed["result"]["disks"]} == {
        d: f"/replica/{d}.img" for d in views}
    assert set((await f.disk_states("m1")).values()) == {"committed"}
    for member in (f.mt, f.machines["m1"], f.site.members[0]):  # MT, agent, PS
        doc = (await settings(member))["document"]
        assert not {d["disk_id"] for d in doc["disks"]} & set(views), (member.role, doc)
    for route, body in (("test-failover", {}), ("commit", {}), ("change-point", {}), ("failover", {"mode": "test"})):
        assert "committed" in await f.refused(errors.Conflict, "POST", f"{path}/{route}", body)
    assert "not protected" in await f.refused(errors.Conflict, "POST", f"/v1/disks/{disk0}/failover")


async def test_a_failed_unplanned_failover_puts_the_disks_back(fleet: OpsFleet) -> None:
    f = fleet
    before = await f.disk_states("m1")
    f.fail_kinds.add("failover")
    job = await f.wait(await f.op("m1", "failover", {"mode": "unplanned"}))
    assert job["state"] == "failed" and "refused by the test" in job["error"], job
    assert await f.disk_states("m1") == before
    f.fail_kinds.clear()
    assert (await f.wait(await f.op("m1", "test-failover")))["state"] == "succeeded"


@pytest.mark.parametrize(("route", "body", "status", "text"), [
    ("failover", {"mode": "planned"}, errors.BadRequest, "mode must be one of"),
    ("failover", {"mode": "test", "extra": 1}, errors.BadRequest, "only a point"),
    ("test-failover", {"point": "yesterday"}, errors.BadRequest, "point must be"),
    ("commit", {"point": "latest"}, errors.BadRequest, "takes no parameters"),
    ("change-point", {}, errors.Conflict, "no failover to change point"),
    ("commit", {}, errors.Conflict, "no failover to commit"),
    ("cleanup-test-failover", {}, errors.Conflict, "no failover to cleanup"),
])
async def test_bad_or_out_of_order_requests_are_refused_and_change_nothing(
        fleet: OpsFleet, route: str, body: dict[str, Any], status: type[errors.DrlabError], text: str) -> None:
    before = await fleet.disk_states("m1")
    assert text in await fleet.refused(status, "POST", f"/v1/machines/{fleet.mid('m1')}/{route}", body)
    assert await fleet.disk_states("m1") == before
    page = await fleet.api.get("/v1/jobs", params={"target_id": fleet.mid("m1")})
    assert page["items"] == []


@pytest.mark.parametrize("route", ["test-failover", "cleanup-test-failover", "change-point", "commit"])
async def test_an_unknown_machine_is_404(fleet: OpsFleet, route: str) -> None:
    assert "no machine" in await fleet.refused(errors.NotFound, "POST", f"/v1/machines/{HEX}/{route}")
