"""PS switch and load balance jobs on a real CS (its job runner), with components simulated by
their heartbeats: the settings each side sees at each step, the drain, the fence, the fallback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site, raw, settings

from common import tls
from common.http import ApiClient

SIZE = 1 << 20
PS2_PORTS = {"data": 19444}


@dataclass
class Fleet:
    env: Any
    site: Site
    ps1: Enrolled
    ps2: Enrolled
    mt: Enrolled
    agent: Enrolled
    disk_id: str
    admin: ApiClient
    ps_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # what each PS heartbeats
    beating: set[str] = field(default_factory=set)
    agent_status: dict[str, Any] | None = None  # what the agent heartbeats, once it follows a PS


    async def disk(self) -> dict[str, Any]:
        return next(d for d in await self.env.admin.disks() if d["disk_id"] == self.disk_id)

    async def agent_beat(self, ps_port: int, generation: int) -> None:
        """The agent follows that PS and generation: it says so now and in every beat after (as a real
        agent does), so a job that starts watching later still sees a fresh heartbeat."""
        self.agent_status = {"disk_id": self.disk_id, "state": "protected", "generation": generation,
                             "ps_url": f"https://127.0.0.1:{ps_port}"}
        await self._beat_agent()

    async def _beat_agent(self) -> None:
        if self.agent_status is not None:
            await self.agent.api.post("/v1/heartbeat", {"metrics": {"disks": {"disk0": self.agent_status}}})

    async def protected(self, generation: int) -> None:
        body = {"state": "protected", "percent": 100.0, "bytes_done": SIZE, "bytes_total": SIZE,
                "generation": generation}
        await self.agent.api.post(f"/v1/disks/{self.disk_id}/progress", body)

    def backlog(self, ps: Enrolled, batches: int, version: int) -> None:
        self.ps_metrics[ps.component_id] = {"settings_version": version,
                                            "disks": {self.disk_id: {"backlog_batches": batches,
                                                                     "backlog_bytes": batches * 4096}}}

    async def heartbeats(self) -> None:
        while True:
            for ps in (self.ps1, self.ps2):
                if ps.component_id in self.beating:
                    try:
                        await ps.api.post("/v1/heartbeat", {"metrics": self.ps_metrics.get(ps.component_id, {})})
                    except Exception as exc:  # shown by the test's output; the next beat retries
                        print(f"heartbeat of {ps.host_id} failed: {exc!r}")
            try:
                await self._beat_agent()
            except Exception as exc:
                print(f"heartbeat of the agent failed: {exc!r}")
            await asyncio.sleep(0.2)

    async def job(self, kind: str, ps: Enrolled, body: dict[str, Any]) -> str:
        reply = await self.admin.post(f"/v1/ps/{ps.component_id}/{kind}", body)
        return str(reply["job_id"])

    async def until(self, what: str, check: Any, timeout_s: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = await check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.1)


@pytest.fixture
async def fleet(cs_env: Any, tmp_path: Path) -> AsyncIterator[Fleet]:
    site = Site(cs_env, tmp_path)
    admin = ApiClient(cs_env.url, tls.client_context(cs_env.admin_files), timeout_s=15.0)
    beat: asyncio.Task[None] | None = None
    try:
        ps1 = await site.ps("ps1")
        ps2 = await site.ps("ps2", PS2_PORTS)
        mt = await site.mt()
        agent, names = await site.agent("m1", disks={"disk0": SIZE})
        await cs_env.admin.protect(agent.component_id)
        f = Fleet(cs_env, site, ps1, ps2, mt, agent, names["disk0"], admin)
        assert (await f.disk())["ps_id"] == ps1.component_id
        await f.protected(1)
        f.beating = {ps1.component_id, ps2.component_id}
        beat = asyncio.create_task(f.heartbeats(), name="test-heartbeats")
        await f.until("the first heartbeats", lambda: _beating(f))
        yield f
    finally:
        if beat is not None:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
        await admin.close()
        await site.close()


async def _beating(f: Fleet) -> bool:
    comps = {c["component_id"]: c for c in await f.env.admin.components()}
    return all(comps[ps.component_id]["last_heartbeat"] for ps in (f.ps1, f.ps2))


def disk_in(doc: dict[str, Any], disk_id: str) -> dict[str, Any] | None:
    return next((d for d in doc["document"]["disks"] if d["disk_id"] == disk_id), None)


async def job_steps(f: Fleet, job_id: str) -> list[str]:
    return [s["name"] for s in (await f.env.admin.job(job_id)).get("steps") or []]


@pytest.mark.timeout(60)
async def test_balance_with_the_old_ps_alive_drains_then_fences_without_a_new_generation(fleet: Fleet) -> None:
    f = fleet
    f.backlog(f.ps1, 3, 0)
    job_id = await f.job("balance", f.ps1, {"machine_ids": [f.agent.component_id], "to_ps_id": f.ps2.component_id})
    await f.until("the reassignment", lambda: _on(f, f.ps2))
    assert (await f.disk())["generation"] == 1  # same generation: the stream goes on
    version = int((await settings(f.ps1))["version"])
    old, new, mt, agent = [await settings(m) for m in (f.ps1, f.ps2, f.mt, f.agent)]
    old_entry, new_entry = disk_in(old, f.disk_id), disk_in(new, f.disk_id)
    assert old_entry is not None and old_entry["draining"] is True
    assert new_entry is not None and "draining" not in new_entry
    assert disk_in(mt, f.disk_id)["drain_ps_ids"] == [f.ps1.component_id]  # type: ignore[index]
    entry = disk_in(agent, f.disk_id)
    assert entry is not None and entry["ps_url"] == f"https://127.0.0.1:{PS2_PORTS['data']}"
    assert entry["generation"] == 1 and "resync_scope" not in entry
    f.backlog(f.ps1, 3, version)  # the old PS has the change but still holds batches: the job waits
    await asyncio.sleep(1.5)
    assert "drain" not in await job_steps(f, job_id)
    assert (await f.env.admin.job(job_id))["state"] == "running"
    f.backlog(f.ps1, 0, version)  # drained
    await f.until("the fence", lambda: _fenced(f))
    await f.agent_beat(PS2_PORTS["data"], 1)
    job = await f.env.admin.wait_job(job_id, timeout_s=20)
    assert job["state"] == "succeeded", job
    assert [s for s in await job_steps(f, job_id)] == ["plan", "reassign", "drain", "fence", "verify"]
    assert job["result"]["mode"] == "drain" and job["result"]["regenerated"] == []
    assert (await f.disk())["generation"] == 1


async def _on(f: Fleet, ps: Enrolled) -> bool:
    return (await f.disk())["ps_id"] == ps.component_id


async def _fenced(f: Fleet) -> bool:
    old, mt = await settings(f.ps1), await settings(f.mt)
    entry = disk_in(mt, f.disk_id)
    return disk_in(old, f.disk_id) is None and entry is not None and "drain_ps_ids" not in entry


@pytest.mark.timeout(60)
async def test_switch_with_the_old_ps_dead_regenerates_with_reason_ps_switch_and_hot_scope(fleet: Fleet) -> None:
    f = fleet
    f.beating.discard(f.ps1.component_id)
    job_id = await f.job("switch", f.ps1, {"old_ps_dead": True})  # the target is picked: ps2, the only other
    await f.until("the new generation", lambda: _generation(f, 2))
    assert (await f.disk())["ps_id"] == f.ps2.component_id
    entry = disk_in(await settings(f.agent), f.disk_id)
    assert entry is not None and entry["resync_scope"] == "hot" and entry["resync_reason"] == "ps-switch"
    assert disk_in(await settings(f.ps1), f.disk_id) is None  # fenced at once: nothing to drain
    assert "drain_ps_ids" not in (disk_in(await settings(f.mt), f.disk_id) or {})
    history = (await f.admin.get(f"/v1/disks/{f.disk_id}/resyncs"))["items"]
    assert history[0]["reason"] == "ps-switch" and history[0]["generation"] == 2
    await f.protected(2)
    await f.agent_beat(PS2_PORTS["data"], 2)
    job = await f.env.admin.wait_job(job_id, timeout_s=20)
    assert job["state"] == "succeeded", job
    assert await job_steps(f, job_id) == ["plan", "reassign", "regenerate", "fence", "verify"]
    assert job["result"]["regenerated"] == [f.disk_id]
    assert "resync_scope" not in (disk_in(await settings(f.agent), f.disk_id) or {})  # the resync is done


async def _generation(f: Fleet, gen: int) -> bool:
    return int((await f.disk())["generation"]) == gen


@pytest.mark.timeout(60)
async def test_an_old_ps_that_dies_during_the_drain_is_replaced_by_a_new_generation(fleet: Fleet) -> None:
    f = fleet
    f.backlog(f.ps1, 5, 1 << 40)  # never drains
    job_id = await f.job("switch", f.ps1, {"to_ps_id": f.ps2.component_id, "dead_after_s": 1.5})
    await f.until("the reassignment", lambda: _on(f, f.ps2))
    assert (await f.disk())["generation"] == 1
    f.beating.discard(f.ps1.component_id)  # killed mid-drain
    await f.until("the fallback generation", lambda: _generation(f, 2))
    assert disk_in(await settings(f.ps1), f.disk_id) is None
    await f.protected(2)
    await f.agent_beat(PS2_PORTS["data"], 2)
    job = await f.env.admin.wait_job(job_id, timeout_s=20)
    assert job["state"] == "succeeded", job
    assert job["result"]["mode"] == "drain" and job["result"]["regenerated"] == [f.disk_id]


@pytest.mark.timeout(60)
async def test_bad_requests_are_refused_and_change_nothing(fleet: Fleet) -> None:
    f = fleet
    ps1, ps2, machine = f.ps1.component_id, f.ps2.component_id, f.agent.component_id
    cases = [
        (f"/v1/ps/{'f' * 32}/switch", {"to_ps_id": ps2}, 404),
        (f"/v1/ps/{ps1}/switch", {"to_ps_id": "f" * 32}, 404),
        (f"/v1/ps/{ps1}/switch", {"to_ps_id": ps1}, 400),
        (f"/v1/ps/{ps1}/switch", {"to_ps_id": ps2, "bogus": 1}, 400),
        (f"/v1/ps/{ps1}/switch", {"timeout_s": -1}, 400),
        (f"/v1/ps/{ps1}/switch", {"old_ps_dead": "yes"}, 400),
        (f"/v1/ps/{ps1}/balance", {"to_ps_id": ps2}, 400),  # which machines?
        (f"/v1/ps/{ps1}/balance", {"machine_ids": ["nothex"]}, 400),
        (f"/v1/ps/{ps2}/balance", {"machine_ids": [machine]}, 409),  # not on ps2
        (f"/v1/ps/{ps2}/switch", {}, 409),  # ps2 serves nothing
        (f"/v1/ps/{f.mt.component_id}/switch", {}, 404),  # not a PS
    ]
    ctx = tls.client_context(f.env.admin_files)
    for path, body, status in cases:
        got, reply = await raw(f.env.url, ctx, "POST", path, body)
        assert (got, path, body) == (status, path, body) and set(reply) == {"code", "message"}
    got, _ = await raw(f.env.url, f.ps1.ssl, "POST", f"/v1/ps/{ps1}/switch", {})
    assert got == 403  # a component may not ask
    got, _ = await raw(f.env.url, f.agent.ssl, "POST", f"/v1/ps/{ps1}/switch", {})
    assert got == 403
    disk = await f.disk()
    assert (disk["ps_id"], disk["generation"]) == (ps1, 1)
    first = await f.job("switch", f.ps1, {"to_ps_id": ps2, "timeout_s": 5})
    got, reply = await raw(f.env.url, ctx, "POST", f"/v1/ps/{ps1}/switch", {"to_ps_id": ps2})
    assert got == 409 and first in reply["message"]  # one switch at a time


@pytest.mark.timeout(60)
async def test_without_a_target_the_job_measures_churn_and_picks_the_quieter_ps(cs_env: Any, tmp_path: Path) -> None:
    site = Site(cs_env, tmp_path)
    beat: asyncio.Task[None] | None = None
    try:
        pss = [await site.ps(f"ps{i}", {"data": 19450 + i}) for i in range(3)]
        await site.mt()
        disks: dict[str, str] = {}
        for i in range(3):  # one machine per PS (protection picks the least loaded)
            agent, names = await site.agent(f"m{i}")
            await cs_env.admin.protect(agent.component_id)
            disks[agent.component_id] = names["disk0"]
        on = {d["disk_id"]: d["ps_id"] for d in await cs_env.admin.disks()}
        source = pss[0]
        others = sorted((p for p in pss[1:]), key=lambda p: p.component_id)
        busy, quiet = others  # the busy one would win a tie on the id: churn must decide
        busy_disk = next(d for d, ps in on.items() if ps == busy.component_id)
        uploaded = {"n": 0}

        async def heartbeats() -> None:
            while True:
                uploaded["n"] += 10 << 20  # 10 MiB per beat on the busy PS's disk
                for ps in pss:
                    disks_metrics = {busy_disk: {"uploaded_bytes": uploaded["n"]}} if ps is busy else {}
                    await ps.api.post("/v1/heartbeat", {"metrics": {"disks": disks_metrics}})
                await asyncio.sleep(0.2)

        beat = asyncio.create_task(heartbeats(), name="test-heartbeats")
        await asyncio.sleep(0.5)
        job_id = await cs_env.admin.ps_move(source.component_id, "switch", {"timeout_s": 0.5, "sample_s": 10})
        job = await cs_env.admin.wait_job(job_id, timeout_s=30)
        assert job["steps"][0]["name"] == "plan"  # (the job then times out: no agent follows)
        plan = (await cs_env.admin.job(job["job_id"]))["params"]["plan"]
        assert {m["to_ps"] for m in plan["moves"]} == {quiet.component_id}
    finally:
        if beat is not None:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
        await site.close()
