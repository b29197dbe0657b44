"""Failover jobs: queued by the admin, seen by the disk's MT, finished by its result."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site, raw, settings

from common import errors


@dataclass
class Protected:
    site: Site
    mt: Enrolled
    other_mt: Enrolled
    agent: Enrolled
    disk_id: str


@pytest.fixture
async def protected(cs_env: Any, tmp_path: Path) -> AsyncIterator[Protected]:
    site = Site(cs_env, tmp_path)
    try:
        await site.ps()
        mt = await site.mt("mt1")
        agent, names = await site.agent()
        await cs_env.admin.protect(agent.component_id)
        other_mt = await site.mt("mt2")  # registered after protect: holds no disk
        yield Protected(site, mt, other_mt, agent, names["disk0"])
    finally:
        await site.close()


async def test_failover_job_reaches_the_mt_and_its_result_the_admin(protected: Protected) -> None:
    p, admin = protected, protected.site.env.admin
    before = await settings(p.mt)
    job_id = await admin.failover(p.disk_id, {"time_ns": 123456789})
    job = await admin.job(job_id)
    assert (job["kind"], job["disk_id"], job["state"], job["params"]) == (
        "failover", p.disk_id, "queued", {"point": {"time_ns": 123456789}})
    assert job["result"] is None and job["created_ns"] == job["updated_ns"] > 0

    doc = await settings(p.mt, version=before["version"], wait_s=2)
    assert doc["version"] > before["version"]
    assert doc["document"]["jobs"] == [{"job_id": job_id, "kind": "failover", "disk_id": p.disk_id,
                                        "point": {"time_ns": 123456789}}]
    assert (await settings(p.other_mt))["document"]["jobs"] == []

    status, body = await raw(p.site.env.url, p.other_mt.ssl, "POST", f"/v1/jobs/{job_id}/result",
                             {"state": "succeeded", "result": {}})
    assert (status, body["code"]) == (403, "forbidden")
    assert (await admin.job(job_id))["state"] == "queued"

    result = {"image_path": "/tmp/x.img", "disk_id": p.disk_id,
              "point": {"gen": 1, "seq": 3, "wnum_hi": 9, "t_last_ns": 5, "accuracy": "exact"}}
    assert await p.mt.api.post(f"/v1/jobs/{job_id}/result", {"state": "succeeded", "result": result}) == {"ok": True}
    done = await admin.wait_job(job_id, timeout_s=5)
    assert (done["state"], done["result"], done["error"]) == ("succeeded", result, None)
    assert done["updated_ns"] >= done["created_ns"]
    assert (await settings(p.mt))["document"]["jobs"] == []

    # The MT retries on lost replies: the same final state again is fine, another one is not.
    assert await p.mt.api.post(f"/v1/jobs/{job_id}/result", {"state": "succeeded", "result": result}) == {"ok": True}
    with pytest.raises(errors.Conflict):
        await p.mt.api.post(f"/v1/jobs/{job_id}/result", {"state": "failed", "error": "late"})


async def test_failed_job_keeps_its_error(protected: Protected) -> None:
    p, admin = protected, protected.site.env.admin
    job_id = await admin.failover(p.disk_id, "latest-processed")
    await p.mt.api.post(f"/v1/jobs/{job_id}/result", {"state": "failed", "error": "no point"})
    job = await admin.wait_job(job_id, timeout_s=5)
    assert (job["state"], job["error"], job["params"]) == ("failed", "no point", {"point": "latest-processed"})


async def test_one_active_job_per_disk(protected: Protected) -> None:
    admin = protected.site.env.admin
    first = await admin.failover(protected.disk_id, "latest")
    with pytest.raises(errors.Conflict):
        await admin.failover(protected.disk_id, "latest")
    await protected.mt.api.post(f"/v1/jobs/{first}/result", {"state": "succeeded", "result": {}})
    assert await admin.failover(protected.disk_id, "latest") != first


@pytest.mark.parametrize("point", ["earliest", {"time_ns": "x"}, {"time_ns": 1, "x": 2}, 5, {"time_ns": 0}])
async def test_bad_points_are_400_and_queue_nothing(protected: Protected, point: Any) -> None:
    with pytest.raises(errors.BadRequest):
        await protected.site.env.admin.failover(protected.disk_id, point)
    assert (await settings(protected.mt))["document"]["jobs"] == []


async def test_failover_refusals(protected: Protected) -> None:
    admin = protected.site.env.admin
    with pytest.raises(errors.NotFound):
        await admin.failover("ef" * 16, "latest")
    with pytest.raises(errors.NotFound):
        await admin.job("ef" * 16)
    _, names = await protected.site.agent("m-unprotected")
    with pytest.raises(errors.Conflict):
        await admin.failover(names["disk0"], "latest")
    job_id = await admin.failover(protected.disk_id, "latest")
    for bad in ({"state": "running"}, {"state": "succeeded", "result": [1]}, {"state": "failed", "error": 5}):
        with pytest.raises(errors.BadRequest):
            await protected.mt.api.post(f"/v1/jobs/{job_id}/result", bad)
    with pytest.raises(errors.NotFound):
        await protected.mt.api.post(f"/v1/jobs/{'ef' * 16}/result", {"state": "failed"})
    assert (await admin.job(job_id))["state"] == "queued"


async def test_wait_job_times_out(protected: Protected) -> None:
    job_id = await protected.site.env.admin.failover(protected.disk_id, "latest")
    with pytest.raises(errors.Unavailable):
        await protected.site.env.admin.wait_job(job_id, timeout_s=0.3)
