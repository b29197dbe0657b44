"""Disable protection of a machine, exclude a disk, add a disk to a protected machine (cs/release.py),
each a job (cs/release_jobs.py): 202 at the request, then the job's steps and result. The MT is
played by the test: it never heartbeats unless a test says so (the jobs then end on the MT-down
timeout, patched short here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cshelpers import Enrolled, Site, raw, settings

from common import tls
from cs import release_jobs


@dataclass
class Lab:
    site: Site
    ps: Enrolled
    mt: Enrolled
    agent: Enrolled
    disks: dict[str, str]  # name -> disk id

    @property
    def machine_id(self) -> str:
        return self.agent.component_id

    async def call(self, path: str, body: Any = None) -> tuple[int, Any]:
        ctx = tls.client_context(self.site.env.admin_files)
        return await raw(self.site.env.url, ctx, "POST", path, body)

    async def job(self, path: str, body: Any = None) -> dict[str, Any]:
        """POST ``path``: 202 and a job id; the job once final (it must succeed)."""
        status, reply = await self.call(path, body)
        assert status == 202 and set(reply) == {"job_id"}, reply
        job = await self.site.env.admin.wait_job(reply["job_id"], timeout_s=20.0, poll_s=0.05)
        assert job["state"] == "succeeded", job
        return dict(job)

    async def run(self, path: str, body: Any = None) -> dict[str, Any]:
        """The result of the job ``path`` queues (what the immediate call answered before)."""
        return dict((await self.job(path, body))["result"])

    async def jobs(self) -> list[str]:
        status, body = await raw(self.site.env.url, tls.client_context(self.site.env.admin_files), "GET",
                                 "/v1/jobs?limit=1000")
        assert status == 200, body
        return sorted(j["job_id"] for j in body["items"])

    async def heartbeat(self, held: list[str]) -> None:
        """The MT's heartbeat: the disks it holds."""
        await self.mt.api.post("/v1/heartbeat", {"metrics": {"disks": {d: {"generation": 1} for d in held}}})

    async def disk(self, disk_id: str) -> dict[str, Any]:
        return next(d for d in await self.site.env.admin.disks() if d["disk_id"] == disk_id)

    async def doc(self, member: Enrolled) -> dict[str, Any]:
        return dict((await settings(member))["document"])

    async def machine(self) -> dict[str, Any]:
        status, body = await raw(self.site.env.url, tls.client_context(self.site.env.admin_files), "GET",
                                 f"/v1/machines/{self.machine_id}")
        assert status == 200, body
        return dict(body)


@pytest.fixture
async def lab(cs_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Lab]:
    monkeypatch.setattr(release_jobs, "MT_RELEASE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(release_jobs, "POLL_S", 0.05)
    site = Site(cs_env, tmp_path)
    try:
        ps, mt = await site.ps(), await site.mt()
        agent, names = await site.agent(disks={"disk0": 1 << 20, "disk1": 1 << 20})
        await cs_env.admin.protect(agent.component_id)
        yield Lab(site, ps, mt, agent, names)
    finally:
        await site.close()


def ids(doc: dict[str, Any]) -> set[str]:
    return {d["disk_id"] for d in doc["disks"]}


def names(job: dict[str, Any]) -> list[str]:
    return [s["name"] for s in job["steps"]]


async def test_exclude_takes_one_disk_out_of_every_document(lab: Lab) -> None:
    d0, d1 = lab.disks["disk0"], lab.disks["disk1"]
    job = await lab.job(f"/v1/disks/{d1}/exclude", {})
    assert job["kind"] == "disk-exclude" and job["disk_id"] == d1 and job["percent"] == 100.0
    assert names(job) == ["released", "MT released"]
    assert [s["percent"] for s in job["steps"]] == [40.0, 90.0]
    assert "MT down: it releases the disk when it starts" in job["steps"][1]["detail"]  # no heartbeat
    assert "asynchronously" in job["steps"][1]["detail"]  # the deletion is not waited for
    body = job["result"]
    assert body["released"] == [d1] and body["keep_points"] is False and body["mt_release"] == {d1: "MT down"}
    assert {d["disk_id"]: d["state"] for d in body["disks"]}[d1] == "unprotected"
    for member in (lab.agent, lab.ps, lab.mt):
        assert ids(await lab.doc(member)) == {d0}
    assert (await lab.doc(lab.mt))["delete_disks"] == [d1]  # without keep_points the MT deletes its files
    view = await lab.disk(d1)
    assert (view["ps_id"], view["mt_id"], view["state"]) == (None, None, "unprotected")
    assert (await lab.disk(d0))["mt_id"] == lab.mt.component_id
    assert (await lab.machine())["protection_state"] == "enabling"  # the remaining disk's state


async def test_exclude_refusals_change_nothing(lab: Lab) -> None:
    d0, d1 = lab.disks["disk0"], lab.disks["disk1"]
    before, jobs = await lab.doc(lab.mt), await lab.jobs()
    assert (await lab.call(f"/v1/disks/{'0' * 32}/exclude", {}))[0] == 404
    assert (await lab.call("/v1/disks/nothex/exclude", {}))[0] in (400, 404)
    status, body = await lab.call(f"/v1/disks/{d1}/exclude", {"keep_points": "yes"})
    assert status == 400 and "keep_points" in body["message"]
    assert (await lab.call(f"/v1/disks/{d1}/exclude", {"other": 1}))[0] == 400
    assert await lab.doc(lab.mt) == before and await lab.jobs() == jobs  # no job queued
    await lab.job(f"/v1/disks/{d1}/exclude", {})
    jobs = await lab.jobs()
    status, body = await lab.call(f"/v1/disks/{d1}/exclude", {})  # not protected any more
    assert status == 409 and "not protected" in body["message"]
    status, body = await lab.call(f"/v1/disks/{d0}/exclude", {})  # the last protected disk
    assert status == 409 and "disable protection" in body["message"]
    assert ids(await lab.doc(lab.mt)) == {d0} and await lab.jobs() == jobs


async def test_exclude_refused_while_a_job_runs(lab: Lab) -> None:
    d1 = lab.disks["disk1"]
    job_id = await lab.site.env.admin.failover(d1)
    status, body = await lab.call(f"/v1/disks/{d1}/exclude", {})
    assert status == 409 and "job" in body["message"]
    assert (await lab.call(f"/v1/machines/{lab.machine_id}/disable-protection", {}))[0] == 409
    assert ids(await lab.doc(lab.mt)) == set(lab.disks.values())
    await lab.mt.api.post(f"/v1/jobs/{job_id}/result", {"state": "failed", "error": "test"})
    await lab.job(f"/v1/disks/{d1}/exclude", {})


async def test_disable_with_keep_points_then_enable_again_on_the_same_mt(lab: Lab) -> None:
    d0 = lab.disks["disk0"]
    gen = (await lab.disk(d0))["generation"]
    job = await lab.job(f"/v1/machines/{lab.machine_id}/disable-protection", {"keep_points": True})
    assert job["kind"] == "machine-disable-protection" and names(job) == ["released", "MT released"]
    assert "asynchronously" not in job["steps"][1]["detail"]  # kept: nothing to delete
    body = job["result"]
    assert body["keep_points"] is True and body["mt_release"] == dict.fromkeys(lab.disks.values(), "MT down")
    assert sorted(body["released"]) == sorted(lab.disks.values()) and body["protection_state"] == "unprotected"
    for member in (lab.agent, lab.ps, lab.mt):
        assert ids(await lab.doc(member)) == set()
    assert "delete_disks" not in await lab.doc(lab.mt)  # kept
    machine = await lab.machine()
    assert (machine["protection_state"], machine["policy"]) == ("unprotected", None)
    # twice: idempotent, nothing released
    job = await lab.job(f"/v1/machines/{lab.machine_id}/disable-protection", {"keep_points": True})
    assert job["result"]["released"] == [] and job["result"]["mt_release"] == {}
    assert job["steps"][0]["detail"] == "nothing to release"
    await lab.site.env.admin.protect(lab.machine_id)
    view = await lab.disk(d0)
    assert view["mt_id"] == lab.mt.component_id and view["generation"] == gen + 1  # a newer generation
    assert view["state"] == "enabling" and view["last_resync"]["reason"] == "initial"
    assert ids(await lab.doc(lab.mt)) == set(lab.disks.values())
    assert "delete_disks" not in await lab.doc(lab.mt)


async def test_disable_without_points_then_second_disable_drops_kept_points(lab: Lab) -> None:
    d0, d1 = lab.disks["disk0"], lab.disks["disk1"]
    await lab.job(f"/v1/disks/{d1}/exclude", {"keep_points": True})
    assert "delete_disks" not in await lab.doc(lab.mt)
    body = await lab.run(f"/v1/machines/{lab.machine_id}/disable-protection", {})
    assert body["released"] == [d0]
    assert (await lab.doc(lab.mt))["delete_disks"] == sorted([d0, d1])  # the earlier kept points go too
    await lab.site.env.admin.protect(lab.machine_id)  # protected again on the same MT: no delete
    doc = await lab.doc(lab.mt)
    assert ids(doc) == {d0} and doc["delete_disks"] == [d1]  # the excluded disk stays out
    job = await lab.job(f"/v1/disks/{d1}/include")
    assert job["kind"] == "disk-include" and names(job) == ["included", "protected"]
    assert job["steps"][1]["detail"] == "initial replication started (state enabling)"
    assert {d["disk_id"]: d["state"] for d in job["result"]["disks"]}[d1] == "enabling"
    doc = await lab.doc(lab.mt)
    assert ids(doc) == {d0, d1} and "delete_disks" not in doc
    assert (await lab.disk(d1))["state"] == "enabling"


async def test_include_refusals_and_include_of_an_unprotected_machine(lab: Lab) -> None:
    d0, d1 = lab.disks["disk0"], lab.disks["disk1"]
    jobs = await lab.jobs()
    assert (await lab.call(f"/v1/disks/{'0' * 32}/include"))[0] == 404
    assert (await lab.call(f"/v1/disks/{d0}/include"))[0] == 409  # not excluded
    assert await lab.jobs() == jobs
    await lab.job(f"/v1/disks/{d1}/exclude", {"keep_points": True})
    await lab.job(f"/v1/machines/{lab.machine_id}/disable-protection", {"keep_points": True})
    job = await lab.job(f"/v1/disks/{d1}/include")
    assert job["result"]["protection_state"] == "unprotected"  # the machine's next protect takes it
    assert "next protect" in job["steps"][1]["detail"]
    assert ids(await lab.doc(lab.mt)) == set()
    await lab.site.env.admin.protect(lab.machine_id)
    assert ids(await lab.doc(lab.mt)) == {d0, d1}


async def test_disable_refusals(lab: Lab) -> None:
    before, jobs = await lab.doc(lab.mt), await lab.jobs()
    assert (await lab.call(f"/v1/machines/{'0' * 32}/disable-protection", {}))[0] == 404
    assert (await lab.call(f"/v1/machines/{lab.mt.component_id}/disable-protection", {}))[0] == 404  # not a machine
    status, body = await lab.call(f"/v1/machines/{lab.machine_id}/disable-protection", {"keep_points": 1})
    assert status == 400
    assert (await lab.call(f"/v1/machines/{lab.machine_id}/disable-protection", [1]))[0] == 400
    assert await lab.doc(lab.mt) == before and await lab.jobs() == jobs
    assert (await lab.machine())["protection_state"] != "unprotected"


async def test_new_disk_on_a_protected_machine_starts_alone(lab: Lab) -> None:
    """A disk reported later is protected by protect; the others keep their generation and the
    machine its policy."""
    before = {d: (await lab.disk(d))["generation"] for d in lab.disks.values()}
    reply = await lab.agent.api.put("/v1/machines/self/disks", {"disks": [
        {"name": "disk0", "size_bytes": 1 << 20}, {"name": "disk1", "size_bytes": 1 << 20},
        {"name": "disk2", "size_bytes": 1 << 20}]})
    d2 = next(d["disk_id"] for d in reply["disks"] if d["name"] == "disk2")
    assert (await lab.disk(d2))["state"] == "unprotected"
    assert ids(await lab.doc(lab.mt)) == set(lab.disks.values())
    policy = (await lab.machine())["policy"]
    views = await lab.site.env.admin.protect(lab.machine_id)
    by_id = {v["disk_id"]: v for v in views}
    assert by_id[d2]["state"] == "enabling" and by_id[d2]["mt_id"] == lab.mt.component_id
    assert {d: by_id[d]["generation"] for d in lab.disks.values()} == before
    assert ids(await lab.doc(lab.mt)) == {*lab.disks.values(), d2}
    assert (await lab.machine())["policy"] == policy


async def test_protect_leaves_an_excluded_disk_out(lab: Lab) -> None:
    d0, d1 = lab.disks["disk0"], lab.disks["disk1"]
    await lab.job(f"/v1/disks/{d1}/exclude", {})
    views = {v["disk_id"]: v for v in await lab.site.env.admin.protect(lab.machine_id)}
    assert views[d1]["state"] == "unprotected" and views[d0]["mt_id"] == lab.mt.component_id
    assert ids(await lab.doc(lab.agent)) == {d0}


async def running_after(lab: Lab, job_id: str, step: str) -> dict[str, Any]:
    """The job once it recorded ``step`` (still running)."""
    for _ in range(400):
        job = await lab.site.env.admin.job(job_id)
        if step in names(job):
            assert job["state"] == "running", job
            return dict(job)
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {step}")


async def test_exclude_waits_for_the_mt_heartbeat(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job ends once a heartbeat of the MT after the release no longer lists the disk."""
    monkeypatch.setattr(release_jobs, "MT_RELEASE_TIMEOUT_S", 30.0)
    d0, d1 = lab.disks["disk0"], lab.disks["disk1"]
    status, reply = await lab.call(f"/v1/disks/{d1}/exclude", {"keep_points": True})
    assert status == 202, reply
    job = await running_after(lab, reply["job_id"], "released")
    assert names(job) == ["released"] and job["percent"] == 40.0
    assert ids(await lab.doc(lab.mt)) == {d0}  # the settings changed at the first step
    status, body = await lab.call(f"/v1/disks/{d1}/include")  # a job is in progress on the disk
    assert status == 409 and "job in progress" in body["message"]
    for path, body in ((f"/v1/machines/{lab.machine_id}/test-failover", {}),  # a failover waits for it
                       (f"/v1/machines/{lab.machine_id}/protect", {})):  # and so does a protect
        status, reply2 = await lab.call(path, body)
        assert status == 409 and reply["job_id"] in reply2["message"], reply2
    await lab.heartbeat([d0, d1])  # the MT still holds it
    await asyncio.sleep(0.3)
    assert (await lab.site.env.admin.job(reply["job_id"]))["state"] == "running"
    await lab.heartbeat([d0])  # released
    job = await lab.site.env.admin.wait_job(reply["job_id"], timeout_s=10.0, poll_s=0.05)
    assert job["state"] == "succeeded", job
    assert names(job) == ["released", "MT released"] and job["percent"] == 100.0
    assert job["steps"][1]["detail"] == "1 of 1 disk(s) released by their MT"
    assert job["result"]["mt_release"] == {d1: "released"} and job["result"]["released"] == [d1]


async def test_disable_notes_an_mt_that_still_holds_the_disks(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(release_jobs, "MT_RELEASE_TIMEOUT_S", 1.5)  # waited out; the heartbeat comes well before
    d0, d1 = lab.disks["disk0"], lab.disks["disk1"]
    status, reply = await lab.call(f"/v1/machines/{lab.machine_id}/disable-protection", {})
    assert status == 202, reply
    await running_after(lab, reply["job_id"], "released")
    await lab.heartbeat([d0, d1])
    job = await lab.site.env.admin.wait_job(reply["job_id"], timeout_s=10.0, poll_s=0.05)
    assert job["state"] == "succeeded", job
    assert job["result"]["mt_release"] == {d0: "MT still holds", d1: "MT still holds"}
    assert "MT still holds the disk" in job["steps"][1]["detail"]


async def test_a_rerun_does_not_release_again() -> None:
    """After a lease loss the settings change is not done twice: its stored result is reused."""
    recorded: list[str] = []

    async def step(name: str, **_: Any) -> None:
        recorded.append(name)

    async def release_again(_: Any) -> Any:
        raise AssertionError("released twice")

    stored = {"result": {"released": ["d"], "keep_points": False}, "mts": {"d": "m"}, "at_ns": 5}
    ctx = SimpleNamespace(params={"released": stored}, done_steps=set(), step=step)
    assert await release_jobs._released(ctx, release_again) == (stored["result"], {"d": "m"}, 5)  # type: ignore[arg-type]
    assert recorded == ["released"]  # the step, lost before it was recorded, is recorded now
    ctx.done_steps = {"released"}
    await release_jobs._released(ctx, release_again)  # type: ignore[arg-type]
    assert recorded == ["released"]


def test_mt_state_reads_the_latest_heartbeat() -> None:
    def mt(beat: int | None, held: Any, role: str = "mt") -> Any:
        return SimpleNamespace(role=role, last_heartbeat=beat, metrics={"disks": held})

    assert release_jobs.mt_state(None, "d", 10) == "MT gone"
    assert release_jobs.mt_state(mt(20, {}, role="ps"), "d", 10) == "MT gone"
    assert release_jobs.mt_state(mt(None, {}), "d", 10) is None  # never heartbeated
    assert release_jobs.mt_state(mt(10, {}), "d", 10) is None  # not after the release
    assert release_jobs.mt_state(mt(20, {"d": {}}), "d", 10) is None  # holds it
    assert release_jobs.mt_state(mt(20, {"e": {}}), "d", 10) == "released"
    assert release_jobs.mt_state(mt(20, None), "d", 10) == "released"
    assert release_jobs._late(mt(5, {}), 10) == "MT down"
    assert release_jobs._late(mt(20, {"d": {}}), 10) == "MT still holds"
