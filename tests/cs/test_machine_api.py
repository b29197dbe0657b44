"""Machine points and failover through the CS's routes, the test playing the machine's MT: it reads
the jobs from its settings and posts their results, as mt/jobs.py does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site, raw, settings

from common import errors, tls
from cs import machines

NAMES = ("disk0", "disk1", "disk2")


@dataclass
class Machine:
    site: Site
    mt: Enrolled
    agent: Enrolled
    disks: dict[str, str]  # name -> disk id

    @property
    def admin(self) -> Any:
        return self.site.env.admin

    @property
    def machine_id(self) -> str:
        return self.agent.component_id

    def name_of(self, disk_id: str) -> str:
        return next(n for n, d in self.disks.items() if d == disk_id)

    async def mt_jobs(self, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The MT's queued jobs once there are ``count`` of them."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            jobs = (await settings(self.mt))["document"]["jobs"]
            if len(jobs) == count or asyncio.get_running_loop().time() > deadline:
                return list(jobs)
            await asyncio.sleep(0.02)

    async def post(self, job: dict[str, Any], result: dict[str, Any] | None = None, error: str | None = None) -> None:
        body = {"state": "failed", "error": error} if error is not None else {"state": "succeeded", "result": result}
        assert await self.mt.api.post(f"/v1/jobs/{job['job_id']}/result", body) == {"ok": True}


@pytest.fixture
async def machine(cs_env: Any, tmp_path: Path) -> AsyncIterator[Machine]:
    site = Site(cs_env, tmp_path)
    try:
        await site.ps()
        mt = await site.mt()
        agent, names = await site.agent(disks={n: 1 << 20 for n in NAMES})
        await cs_env.admin.protect(agent.component_id)
        yield Machine(site, mt, agent, names)
    finally:
        await site.close()


def pt(seq: int, wnum_first: int, wnum_hi: int, t_last: int, accuracy: str = "exact") -> dict[str, Any]:
    return {"gen": 1, "seq": seq, "wnum_first": wnum_first, "wnum_hi": wnum_hi, "t_first_ns": t_last - 1,
            "t_last_ns": t_last, "accuracy": accuracy}


def image(job: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    return {"image_path": f"/img/{job['job_id']}.img", "disk_id": job["disk_id"],
            "point": {k: point[k] for k in ("gen", "seq", "wnum_hi", "t_last_ns", "accuracy")}}


async def test_machine_failover_to_latest_puts_every_disk_at_the_smallest_latest_w(machine: Machine) -> None:
    m = machine
    job_id = await m.admin.machine_failover(m.machine_id, "latest")
    job = await m.admin.job(job_id)
    assert (job["kind"], job["machine_id"], job["disk_id"], job["state"]) == (
        "machine-failover", m.machine_id, None, "running")

    probes = await m.mt_jobs(3)
    assert sorted(j["disk_id"] for j in probes) == sorted(m.disks.values())
    assert all(j["kind"] == "points" and j["point"] == {"drain": True} for j in probes)
    # while it runs, neither a disk's own failover nor a second machine failover may start
    with pytest.raises(errors.Conflict):
        await m.admin.failover(m.disks["disk1"], "latest")
    with pytest.raises(errors.Conflict):
        await m.admin.machine_failover(m.machine_id, "latest")

    latest = {"disk0": pt(9, 20, 24, 90), "disk1": pt(7, 19, 21, 80), "disk2": pt(5, 23, 23, 85)}
    for probe in probes:
        await m.post(probe, {"disk_id": probe["disk_id"], "latest": latest[m.name_of(probe["disk_id"])]})
    failovers = await m.mt_jobs(3)
    assert all(j["kind"] == "failover" and j["point"] == {"wnum": 21} for j in failovers), failovers

    at_w = {"disk0": pt(8, 15, 21, 70), "disk1": latest["disk1"], "disk2": pt(4, 11, 18, 60, "approximate")}
    for fo in failovers:
        await m.post(fo, image(fo, at_w[m.name_of(fo["disk_id"])]))
    done = await m.admin.wait_job(job_id, timeout_s=5)
    assert done["state"] == "succeeded", done
    result = done["result"]
    assert (result["wnum"], result["accuracy"], result["t_ns"]) == (21, "approximate", 80)
    assert [d["name"] for d in result["disks"]] == list(NAMES)
    assert {d["name"]: d["point"]["wnum_hi"] for d in result["disks"]} == {"disk0": 21, "disk1": 21, "disk2": 18}
    assert result["latest"] == {m.disks[n]: p["wnum_hi"] for n, p in latest.items()}
    assert (await m.mt_jobs(0)) == []
    # the machine is free again: a disk's own failover may start
    assert await m.admin.failover(m.disks["disk1"], {"wnum": 21})


async def test_machine_failover_by_time_probes_twice_then_fails_over(machine: Machine) -> None:
    m = machine
    job_id = await m.admin.machine_failover(m.machine_id, {"time_ns": 50})
    probes = await m.mt_jobs(3)
    assert all(j["point"] == {"drain": True, "time_ns": 50} for j in probes)
    facts = {"disk0": (pt(9, 20, 24, 90), pt(6, 12, 14, 55)), "disk1": (pt(7, 19, 21, 80), None),
             "disk2": (pt(5, 23, 23, 85), pt(3, 13, 13, 52))}
    for probe in probes:
        latest, after = facts[m.name_of(probe["disk_id"])]
        await m.post(probe, {"disk_id": probe["disk_id"], "latest": latest, "after": after})
    belows = await m.mt_jobs(3)
    assert all(j["kind"] == "points" and j["point"] == {"drain": False, "below": 12} for j in belows), belows
    below = {"disk0": pt(5, 9, 11, 48), "disk1": pt(4, 10, 10, 40), "disk2": pt(2, 7, 9, 30)}
    for probe in belows:
        await m.post(probe, {"disk_id": probe["disk_id"], "latest": None, "below": below[m.name_of(probe["disk_id"])]})
    failovers = await m.mt_jobs(3)
    assert all(j["kind"] == "failover" and j["point"] == {"wnum": 11} for j in failovers)
    for fo in failovers:
        await m.post(fo, image(fo, below[m.name_of(fo["disk_id"])]))
    done = await m.admin.wait_job(job_id, timeout_s=5)
    assert (done["state"], done["result"]["wnum"], done["result"]["point"]) == ("succeeded", 11, {"time_ns": 50})


async def test_a_disk_that_fails_fails_the_machine_job_naming_it(machine: Machine) -> None:
    m = machine
    job_id = await m.admin.machine_failover(m.machine_id, {"wnum": 21})
    probes = await m.mt_jobs(3)
    for probe in probes:
        await m.post(probe, {"disk_id": probe["disk_id"], "latest": pt(9, 20, 24, 90)})
    failovers = await m.mt_jobs(3)
    assert all(j["point"] == {"wnum": 21} for j in failovers)
    for fo in failovers:
        if fo["disk_id"] == m.disks["disk2"]:
            await m.post(fo, error="wnum 21 is not a boundary of disk x")
        else:
            await m.post(fo, image(fo, pt(8, 15, 21, 70)))
    done = await m.admin.wait_job(job_id, timeout_s=5)
    assert done["state"] == "failed" and done["result"] is None
    assert f"disk disk2 ({m.disks['disk2']}): wnum 21 is not a boundary" in done["error"]


async def test_a_w_past_a_disks_latest_point_is_refused_before_any_image(machine: Machine) -> None:
    m = machine
    job_id = await m.admin.machine_failover(m.machine_id, {"wnum": 30})
    for probe in await m.mt_jobs(3):
        wnum = 25 if probe["disk_id"] == m.disks["disk1"] else 40
        await m.post(probe, {"disk_id": probe["disk_id"], "latest": pt(3, wnum, wnum, 9)})
    done = await m.admin.wait_job(job_id, timeout_s=5)
    assert done["state"] == "failed" and "past the machine's latest consistent point 25" in done["error"]
    assert await m.mt_jobs(0) == []  # no image was asked for


async def test_a_malformed_mt_answer_fails_the_job_clearly(machine: Machine) -> None:
    m = machine
    job_id = await m.admin.machine_failover(m.machine_id, "latest-processed")
    probes = await m.mt_jobs(3)
    assert all(j["point"] == {"drain": False} for j in probes)
    for probe in probes:
        await m.post(probe, {"disk_id": probe["disk_id"], "latest": {"gen": "one"}})
    done = await m.admin.wait_job(job_id, timeout_s=5)
    assert done["state"] == "failed" and "must be an unsigned 64-bit integer" in done["error"]


async def test_machine_points_listing_asks_every_disks_mt_and_keeps_no_probe(machine: Machine) -> None:
    m = machine
    windows = {"disk0": [pt(1, 1, 3, 10), pt(2, 4, 6, 20), pt(3, 9, 9, 40)],
               "disk1": [pt(1, 2, 3, 11), pt(2, 7, 8, 30)],
               "disk2": [pt(1, 0, 3, 12), pt(2, 5, 6, 21), pt(3, 0, 9, 41)]}
    listing = asyncio.create_task(m.admin.machine_points(m.machine_id, limit=10))
    probes = await m.mt_jobs(3)
    assert all(j["kind"] == "points" and j["point"] == {"recent": 10, "named": True} for j in probes)
    # a listing does not hold the disks: a disk's own failover may start meanwhile
    other = await m.admin.failover(m.disks["disk0"], "latest")
    for probe in probes:
        items = windows[m.name_of(probe["disk_id"])]
        await m.post(probe, {"disk_id": probe["disk_id"], "latest": items[-1], "points": items})
    out = await asyncio.wait_for(listing, 5)
    assert out["latest_wnum"] == 8
    assert [d["name"] for d in out["disks"]] == list(NAMES)
    assert [(p["wnum"], p["t_ns"]) for p in out["items"]] == [(3, 12), (6, 21), (8, 30)]
    assert out["items"][1]["disks"][m.disks["disk1"]]["wnum_hi"] == 3
    for probe in probes:
        with pytest.raises(errors.NotFound):
            await m.admin.job(probe["job_id"])
    assert (await m.admin.job(other))["state"] == "queued"


async def test_machine_points_answer_503_when_an_mt_does_not_answer(machine: Machine,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    m = machine
    monkeypatch.setattr(machines, "PROBE_TIMEOUT_S", 0.5)
    with pytest.raises(errors.Unavailable, match="did not answer"):
        await m.admin.machine_points(m.machine_id)
    assert await m.mt_jobs(0) == []  # the unanswered probes expired


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("GET", "/v1/machines/{m}/points?limit=0", None, 400),
    ("GET", "/v1/machines/{m}/points?limit=1001", None, 400),
    ("GET", "/v1/machines/{m}/points?since=1", None, 400),
    ("GET", "/v1/machines/NOTHEX/points", None, 400),
    ("GET", "/v1/machines/" + "a" * 32 + "/points", None, 404),
    ("POST", "/v1/machines/{m}/failover", {"point": "latest-app"}, 400),
    ("POST", "/v1/machines/{m}/failover", {"point": {"wnum": -3}}, 400),
    ("POST", "/v1/machines/{m}/failover", {"point": "latest", "disks": []}, 400),
    ("POST", "/v1/machines/" + "a" * 32 + "/failover", {"point": "latest"}, 404),
])
async def test_bad_machine_requests_are_refused_and_change_nothing(machine: Machine, method: str, path: str,
                                                                   body: Any, status: int) -> None:
    m = machine
    env = m.site.env
    code, reply = await raw(env.url, tls.client_context(env.admin_files), method, path.format(m=m.machine_id), body)
    assert code == status and set(reply) == {"code", "message"}, reply
    assert await m.mt_jobs(0, timeout_s=0) == []


async def test_a_machine_without_protected_disks_has_no_points_and_no_failover(machine: Machine) -> None:
    other, _ = await machine.site.agent(host_id="m2")
    for call in (machine.admin.machine_points(other.component_id), machine.admin.machine_failover(other.component_id)):
        with pytest.raises(errors.Conflict):
            await call
    with pytest.raises(errors.Forbidden):  # only the admin reads a machine's points
        await other.api.get(f"/v1/machines/{machine.machine_id}/points")
