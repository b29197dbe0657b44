"""A machine failover that fails part-way drops the views it made on some disks (cs/machine_ops.py),
a failed point change keeps the failover's views; the test fleet (tests/cs/opsfleet.py) answers
listing probes, so a machine's points can be listed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opsfleet import OpsFleet, running_fleet


@pytest.fixture
async def fleet(cs_env: Any, tmp_path: Path) -> AsyncIterator[OpsFleet]:
    async with running_fleet(cs_env, tmp_path) as f:
        yield f


def kinds(f: OpsFleet, kind: str) -> list[dict[str, Any]]:
    return [j for j in f.seen if j["kind"] == kind]


@pytest.mark.parametrize("mode", ["test", "unplanned"])
async def test_a_failover_failing_on_one_disk_drops_the_view_made_on_the_other(fleet: OpsFleet, mode: str) -> None:
    f = fleet
    before = await f.disk_states("m1")
    disk0, disk1 = f.disks["m1"]["disk0"], f.disks["m1"]["disk1"]
    f.fail_kinds, f.fail_disks = {"failover"}, {disk1}
    job = await f.wait(await f.op("m1", "failover", {"mode": mode}))
    assert job["state"] == "failed" and "refused by the test" in job["error"], job
    made = [j for j in kinds(f, "failover") if j["disk_id"] == disk0]
    assert len(made) == 1 and len(kinds(f, "failover")) == 2
    drops = kinds(f, "view-drop")
    assert [(j["disk_id"], j["point"]) for j in drops] == [(disk0, {"view": made[0]["job_id"]})]
    assert (await f.admin.job(drops[0]["job_id"]))["state"] == "succeeded"
    assert await f.disk_states("m1") == before
    f.fail_kinds = set()
    assert (await f.wait(await f.op("m1", "test-failover")))["state"] == "succeeded", "nothing is left going"


async def test_a_failover_failing_before_any_view_drops_nothing(fleet: OpsFleet) -> None:
    f = fleet
    f.fail_kinds = {"points"}
    job = await f.wait(await f.op("m1", "test-failover"))
    assert job["state"] == "failed", job
    assert not kinds(f, "failover") and not kinds(f, "view-drop")


async def test_a_failover_whose_drop_fails_still_fails_with_its_own_error(fleet: OpsFleet,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    f = fleet
    disk0, disk1 = f.disks["m1"]["disk0"], f.disks["m1"]["disk1"]
    refused = {("failover", disk1), ("view-drop", disk0)}
    monkeypatch.setattr(f, "fails", lambda job: (job["kind"], job["disk_id"]) in refused)
    job = await f.wait(await f.op("m1", "test-failover"))
    assert job["state"] == "failed" and "failover refused by the test" in job["error"], job
    (drop,) = kinds(f, "view-drop")
    assert drop["disk_id"] == disk0 and (await f.admin.job(drop["job_id"]))["state"] == "failed"


async def test_a_failed_point_change_keeps_the_failovers_views(fleet: OpsFleet) -> None:
    f = fleet
    job = await f.wait(await f.op("m1", "test-failover"))
    assert job["state"] == "succeeded", job
    f.fail_kinds, f.fail_disks = {"view-change"}, {f.disks["m1"]["disk1"]}
    changed = await f.wait(await f.op("m1", "change-point", {"point": "latest"}))
    assert changed["state"] == "failed", changed
    assert not kinds(f, "view-drop")
    f.fail_kinds = set()
    cleaned = await f.wait(await f.op("m1", "cleanup-test-failover"))
    assert cleaned["state"] == "succeeded", cleaned
    assert sorted(j["point"]["view"] for j in kinds(f, "view-drop")) == sorted(
        job["result"]["failover"]["views"].values())


async def test_the_fleet_answers_listing_probes(fleet: OpsFleet) -> None:
    f = fleet
    f.latest = 37
    listing = await f.api.get(f"/v1/machines/{f.mid('m1')}/points")
    assert listing["latest_wnum"] == 37 and [p["wnum"] for p in listing["items"]] == [37], listing
    disk = await f.api.get(f"/v1/disks/{f.disks['m1']['disk0']}/points")
    assert [p["wnum_hi"] for p in disk["items"]] == [37], disk
