"""The failover option ``image`` (issue 8: a failover is ready when its view is): absent, the
jobs the MT gets carry no ``image`` and a result without ``image_path`` is accepted; ``true`` is
carried to every failover (and view-change) job of a disk, machine, operation or recovery plan
failover, and the machine's result then requires and lists each disk's ``image_path``; anything
else is a 400 that queues nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cshelpers import raw, settings
from opsfleet import OpsFleet, running_fleet
from test_cs_jobs import Protected, protected  # noqa: F401  (fixture)
from test_machine_api import Machine, image, machine, pt  # noqa: F401  (fixture)

from common import errors


@pytest.fixture
async def fleet(cs_env: Any, tmp_path: Path) -> AsyncIterator[OpsFleet]:
    async with running_fleet(cs_env, tmp_path, hosts=("m1", "m2")) as f:
        yield f


async def test_a_disk_failover_carries_image_to_its_mt_only_when_asked(protected: Protected) -> None:  # noqa: F811
    p, admin = protected, protected.site.env.admin
    job_id = await admin.failover(p.disk_id, "latest", image=True)
    assert (await admin.job(job_id))["params"] == {"point": "latest", "image": True}
    (entry,) = (await settings(p.mt))["document"]["jobs"]
    assert entry == {"job_id": job_id, "kind": "failover", "disk_id": p.disk_id, "point": "latest", "image": True}
    result = {"disk_id": p.disk_id, "nbd_url": "nbd://mt/x", "view": {"ready_s": 0.002},
              "point": {"gen": 1, "seq": 3, "wnum_hi": 9, "t_last_ns": 5, "accuracy": "exact"}}
    await p.mt.api.post(f"/v1/jobs/{job_id}/result", {"state": "succeeded", "result": result})
    assert (await admin.wait_job(job_id, timeout_s=5))["result"] == result
    second = await admin.failover(p.disk_id, "latest")  # the default: no image
    (entry,) = (await settings(p.mt))["document"]["jobs"]
    assert entry["job_id"] == second and "image" not in entry


@pytest.mark.parametrize("bad", ["yes", 1, None, {"x": 1}])
async def test_a_bad_image_is_a_clear_400_and_queues_nothing(protected: Protected, bad: Any) -> None:  # noqa: F811
    p = protected
    before = await settings(p.mt)
    status, body = await raw(p.site.env.url, p.site.env.admin._api._ssl, "POST", f"/v1/disks/{p.disk_id}/failover",
                             {"point": "latest", "image": bad})
    assert (status, body["code"]) == (400, "bad_request") and "image must be true or false" in body["message"]
    after = await settings(p.mt)
    assert after["document"]["jobs"] == [] and after["version"] == before["version"]


async def test_a_machine_failover_without_image_accepts_results_without_image_path(
        machine: Machine) -> None:  # noqa: F811
    m = machine
    job_id = await m.admin.machine_failover(m.machine_id, "latest")
    probes = await m.mt_jobs(3)
    assert not any("image" in j for j in probes)
    for probe in probes:
        await m.post(probe, {"disk_id": probe["disk_id"], "latest": pt(5, 1, 20, 50)})
    failovers = await m.mt_jobs(3)
    assert all(j["kind"] == "failover" and "image" not in j for j in failovers), failovers
    for fo in failovers:
        view = {k: v for k, v in image(fo, pt(5, 1, 20, 50)).items() if k != "image_path"}
        await m.post(fo, {**view, "nbd_url": f"nbd://mt/{fo['job_id']}"})
    done = await m.admin.wait_job(job_id, timeout_s=5)
    assert done["state"] == "succeeded", done
    assert [d["nbd_url"] for d in done["result"]["disks"]] == [
        f"nbd://mt/{d['job_id']}" for d in done["result"]["disks"]]
    assert not any("image_path" in d for d in done["result"]["disks"])


async def test_a_machine_failover_with_image_requires_every_image_path(machine: Machine) -> None:  # noqa: F811
    m = machine
    job_id = str((await m.admin._api.post(f"/v1/machines/{m.machine_id}/failover",
                                          {"point": "latest", "image": True}))["job_id"])
    probes = await m.mt_jobs(3)
    assert not any("image" in j for j in probes)  # a probe makes no view
    for probe in probes:
        await m.post(probe, {"disk_id": probe["disk_id"], "latest": pt(5, 1, 20, 50)})
    failovers = await m.mt_jobs(3)
    assert all(j["kind"] == "failover" and j["image"] is True for j in failovers), failovers
    first, *rest = failovers
    result = image(first, pt(5, 1, 20, 50))
    del result["image_path"]  # an MT that did not write the image asked for
    await m.post(first, result)
    for fo in rest:
        await m.post(fo, image(fo, pt(5, 1, 20, 50)))
    done = await m.admin.wait_job(job_id, timeout_s=5)
    assert done["state"] == "failed" and "not a point at or before 20" in done["error"], done


async def test_operations_and_plans_carry_image_to_their_failovers(fleet: OpsFleet) -> None:
    f = fleet
    job = await f.wait(await f.op("m1", "test-failover", {"image": True}))
    assert job["state"] == "succeeded", job
    views = job["result"]["failover"]["views"]
    assert {d["disk_id"]: d["image_path"] for d in job["result"]["disks"]} == {
        d: f"/img/{v}.img" for d, v in views.items()}
    changed = await f.wait(await f.op("m1", "change-point", {"point": "latest", "image": True}))
    assert changed["state"] == "succeeded", changed
    assert all("image_path" in d for d in changed["result"]["disks"])
    assert all(j.get("image") is True for j in f.seen if j["kind"] in ("failover", "view-change"))
    assert not any("image" in j for j in f.seen if j["kind"] not in ("failover", "view-change"))
    assert "takes no parameters" in await f.refused(errors.BadRequest, "POST",
                                                    f"/v1/machines/{f.mid('m1')}/cleanup-test-failover",
                                                    {"image": True})
    assert (await f.wait(await f.op("m1", "cleanup-test-failover")))["state"] == "succeeded"

    await f.api.post("/v1/plans", {"name": "dr", "groups": [{"machines": [f.mid("m1"), f.mid("m2")]}]})
    plan = await f.wait(str((await f.api.post("/v1/plans/dr/failover", {"mode": "test", "image": True}))["job_id"]))
    assert plan["state"] == "succeeded", plan
    disks = [d for m in plan["result"]["machines"].values() for d in m["disks"]]
    assert len(disks) == 4 and all(d["image_path"].startswith("/img/") and d["nbd_url"] for d in disks)


async def test_bad_image_in_operations_and_plans_is_refused_and_queues_nothing(fleet: OpsFleet) -> None:
    f = fleet
    path = f"/v1/machines/{f.mid('m1')}"
    for route, body in (("test-failover", {"image": "yes"}), ("failover", {"mode": "unplanned", "image": 1}),
                        ("failover", {"image": "true"}), ("planned-failover", {"image": "no"})):
        assert "image must be true or false" in await f.refused(errors.BadRequest, "POST", f"{path}/{route}", body)
    await f.api.post("/v1/plans", {"name": "dr", "groups": [{"machines": [f.mid("m1")]}]})
    assert "image must be true or false" in await f.refused(errors.BadRequest, "POST", "/v1/plans/dr/failover",
                                                            {"mode": "test", "image": "yes"})
    page = await f.api.get("/v1/jobs", params={"limit": 100})
    assert page["items"] == [] and f.seen == []
