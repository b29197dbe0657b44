"""The image files of a machine's failover views, asked for later (cs/machine_image.py,
``POST /v1/machines/{id}/image``) through the CS's routes, its job runner and an MT played by the
test: a ``view-image`` job per disk on the view of the current failover (test or unplanned, before
commit), the image paths in the result, the failover itself unchanged; 409 without a view, while an
operation is going and after a commit; 400/404 for bad requests, nothing queued."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cshelpers import raw
from opsfleet import OpsFleet, running_fleet

from common import errors
from cs import machine_image

HEX = "ab" * 16


@pytest.fixture
async def fleet(cs_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OpsFleet]:
    async with running_fleet(cs_env, tmp_path) as f:
        plain = f.result

        def result(job: dict[str, Any]) -> dict[str, Any]:  # as mt/jobs.py answers a view-image job
            if job["kind"] != "view-image":
                return plain(job)
            return {"disk_id": job["disk_id"], "view": job["point"]["view"], "image_bytes": 4096, "image_s": 0.01,
                    "image_path": f"/data/failover/{job['disk_id']}/{job['job_id']}.img"}

        monkeypatch.setattr(f, "result", result)
        yield f


async def image_jobs(f: OpsFleet) -> list[dict[str, Any]]:
    return list((await f.api.get("/v1/jobs", params={"kind": machine_image.KIND}))["items"])


async def refused_409(f: OpsFleet, machine_id: str) -> dict[str, Any]:
    status, body = await raw(f.site.env.url, f.api._ssl, "POST", f"/v1/machines/{machine_id}/image", {})
    assert status == 409 and body["code"] == "conflict", body
    return dict(body)


def test_only_a_failover_before_commit_has_views_to_image() -> None:
    m = "m" * 32
    views = {"d1": "v1", "d2": "v2"}
    for mode in ("test", "unplanned", "planned"):
        assert machine_image.views_of({"mode": mode, "views": views}, m) == views
    with pytest.raises(errors.Conflict, match="no failover view to image"):
        machine_image.views_of(None, m)
    with pytest.raises(errors.Conflict, match="no failover view to image"):
        machine_image.views_of({"mode": "test", "views": {}}, m)
    with pytest.raises(errors.Conflict, match="is committed"):
        machine_image.views_of({"mode": "committed", "views": views}, m)


async def test_a_test_failover_without_image_gets_its_images_later(fleet: OpsFleet) -> None:
    f = fleet
    failover = await f.wait(await f.op("m1", "test-failover"))
    assert failover["state"] == "succeeded", failover
    assert not any("image_path" in d for d in failover["result"]["disks"])
    views = failover["result"]["failover"]["views"]
    job = await f.wait(await f.op("m1", "image"))
    assert job["state"] == "succeeded", job
    assert job["kind"] == "machine-image" and job["percent"] == 100.0
    result = job["result"]
    assert (result["machine_id"], result["mode"], result["failover_job_id"]) == (f.mid("m1"), "test",
                                                                                 failover["job_id"])
    assert result["wnum"] == failover["result"]["failover"]["wnum"]
    children = {d["disk_id"]: d["job_id"] for d in result["disks"]}
    assert {d["disk_id"]: (d["view"], d["image_path"]) for d in result["disks"]} == {
        disk: (view, f"/data/failover/{disk}/{children[disk]}.img") for disk, view in views.items()}
    exports = [j for j in f.seen if j["kind"] == "view-image"]  # what the MT got: one per view, no image flag
    assert sorted((j["disk_id"], j["point"]["view"]) for j in exports) == sorted(views.items())
    assert all("image" not in j for j in exports)
    for disk, child in children.items():
        assert (await f.admin.job(child))["disk_id"] == disk
    # the failover is unchanged: it is still the machine's, imaged again, then cleaned up
    again = await f.wait(await f.op("m1", "image"))
    assert again["state"] == "succeeded" and again["result"]["failover_job_id"] == failover["job_id"]
    assert (await f.wait(await f.op("m1", "cleanup-test-failover")))["state"] == "succeeded"
    body = await refused_409(f, f.mid("m1"))
    assert "no failover view to image" in body["message"]
    assert len(await image_jobs(f)) == 2


async def test_an_unplanned_failover_is_imaged_until_committed(fleet: OpsFleet) -> None:
    f = fleet
    assert (await f.wait(await f.op("m1", "failover", {"mode": "unplanned"})))["state"] == "succeeded"
    job = await f.wait(await f.op("m1", "image"))
    assert job["state"] == "succeeded" and job["result"]["mode"] == "unplanned", job
    assert set((await f.disk_states("m1")).values()) == {"failed-over"}  # the image changed no state
    assert (await f.wait(await f.op("m1", "commit")))["state"] == "succeeded"
    body = await refused_409(f, f.mid("m1"))
    assert "is committed" in body["message"]
    assert len(await image_jobs(f)) == 1


async def test_no_failover_is_a_409_and_bad_requests_queue_nothing(fleet: OpsFleet) -> None:
    f = fleet
    body = await refused_409(f, f.mid("m1"))
    assert "has no failover view to image" in body["message"] and f.mid("m1") in body["message"]
    env = f.site.env
    for path, req, status in ((f"/v1/machines/{HEX}/image", {}, 404),
                              ("/v1/machines/not-hex/image", {}, 400),
                              (f"/v1/machines/{f.mid('m1')}/image", {"image": True}, 400),
                              (f"/v1/machines/{f.mid('m1')}/image", [1], 400)):
        got, answer = await raw(env.url, f.api._ssl, "POST", path, req)
        assert got == status and isinstance(answer.get("code"), str), (path, req, answer)
    assert await image_jobs(f) == [] and not any(j["kind"] == "view-image" for j in f.seen)


async def test_one_at_a_time_and_not_during_an_operation(fleet: OpsFleet) -> None:
    f = fleet
    assert (await f.wait(await f.op("m1", "test-failover")))["state"] == "succeeded"
    f.hold = True  # the MT answers nothing: the image job stays going
    first = await f.op("m1", "image")
    body = await refused_409(f, f.mid("m1"))
    assert f"operation in progress (job {first})" in body["message"]
    for op in ("cleanup-test-failover", "change-point"):  # the views being imaged are not dropped or moved meanwhile
        status, body = await raw(f.site.env.url, f.api._ssl, "POST", f"/v1/machines/{f.mid('m1')}/{op}", {})
        assert status == 409 and f"operation in progress (job {first})" in body["message"], (op, body)
    f.hold = False
    assert (await f.wait(first))["state"] == "succeeded"
    f.hold = True
    change = await f.op("m1", "change-point", {"point": "latest"})
    body = await refused_409(f, f.mid("m1"))
    assert f"operation in progress (job {change})" in body["message"]
    f.hold = False
    assert (await f.wait(change))["state"] == "succeeded"
    assert len(await image_jobs(f)) == 1


async def test_a_failed_export_fails_the_job_naming_the_disk(fleet: OpsFleet) -> None:
    f = fleet
    assert (await f.wait(await f.op("m1", "test-failover")))["state"] == "succeeded"
    disk = f.disks["m1"]["disk1"]
    f.fail_kinds, f.fail_disks = {"view-image"}, {disk}
    job = await f.wait(await f.op("m1", "image"))
    assert job["state"] == "failed" and f"disk {disk}: view-image failed" in job["error"], job
    f.fail_kinds = set()
    assert (await f.wait(await f.op("m1", "image")))["state"] == "succeeded"  # asked again, it works
