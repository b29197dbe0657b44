"""A disk's own failover (POST /v1/disks/{id}/failover, cs/jobs.py) is refused (409) while an
operation on its machine is going, even one that holds no job on the disk itself (a planned failover
waiting for its source to stop); other machines' disks and the disk once it is over are not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cshelpers import raw
from opsfleet import OpsFleet, running_fleet

from common import errors


@pytest.fixture
async def fleet(cs_env: Any, tmp_path: Path) -> AsyncIterator[OpsFleet]:
    async with running_fleet(cs_env, tmp_path, hosts=("m1", "m2")) as f:
        yield f


async def disk_jobs(f: OpsFleet, disk_id: str) -> list[dict[str, Any]]:
    return list((await f.api.get("/v1/jobs", params={"target_id": disk_id}))["items"])


async def test_a_disk_of_a_machine_with_an_operation_going_gets_no_failover_of_its_own(fleet: OpsFleet) -> None:
    f = fleet
    disk0 = f.disks["m1"]["disk0"]
    op = await f.op("m1", "planned-failover")  # waits for the agent's report: no job on the disks meanwhile
    assert await disk_jobs(f, disk0) == []
    message = await f.refused(errors.Conflict, "POST", f"/v1/disks/{disk0}/failover", {"point": {"wnum": 30}})
    assert f"machine {f.mid('m1')} has an operation in progress (job {op})" in message
    assert await disk_jobs(f, disk0) == [], "refused: nothing queued"

    other = await f.admin.failover(f.disks["m2"]["disk0"], {"wnum": 30})  # another machine: no operation there
    assert (await f.wait(other))["state"] == "succeeded"

    report = {"job_id": op, "error": "the source cannot stop"}
    status, body = await raw(str(f.site.env.url), f.machines["m1"].ssl, "POST", "/v1/machines/self/shutdown", report)
    assert status == 200, body
    assert (await f.wait(op))["state"] == "failed"
    job = await f.wait(await f.admin.failover(disk0, {"wnum": 30}))  # the operation is over: it may fail over
    assert job["state"] == "succeeded", job
