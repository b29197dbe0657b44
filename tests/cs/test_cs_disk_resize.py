"""A protected disk resized (cs/resize.py): resync-required with reason disk_resize and a critical
alert, replication stopped, resyncs refused; disable (keeping points) + protect clears it at the new
size. Runs on both engines (tests/cs/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site, raw, settings

from common import errors, tls
from common.http import ApiClient
from cs import release_jobs

SIZE = 1 << 20


@dataclass
class Resized:
    site: Site
    ps: Enrolled
    mt: Enrolled
    agent: Enrolled
    disk_id: str
    other_id: str
    admin: ApiClient

    @property
    def machine_id(self) -> str:
        return self.agent.component_id

    async def disk(self, disk_id: str | None = None) -> dict[str, Any]:
        wanted = disk_id or self.disk_id
        return next(d for d in await self.site.env.admin.disks() if d["disk_id"] == wanted)

    async def report(self, size: int) -> None:
        await self.agent.api.put("/v1/machines/self/disks", {"disks": [{"name": "disk0", "size_bytes": size},
                                                                       {"name": "disk1", "size_bytes": SIZE}]})

    async def open_alerts(self) -> list[dict[str, Any]]:
        items = (await self.admin.get("/v1/alerts?active=1&limit=1000"))["items"]
        return [a for a in items if a["code"] == "disk_resized"]

    async def doc_ids(self, member: Enrolled) -> set[str]:
        return {d["disk_id"] for d in (await settings(member))["document"]["disks"]}


@pytest.fixture
async def resized(cs_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Resized]:
    monkeypatch.setattr(release_jobs, "MT_RELEASE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(release_jobs, "POLL_S", 0.05)
    site = Site(cs_env, tmp_path)
    admin = ApiClient(cs_env.url, tls.client_context(cs_env.admin_files), timeout_s=15.0)
    try:
        ps, mt = await site.ps(), await site.mt()
        agent, names = await site.agent("m1", disks={"disk0": SIZE, "disk1": SIZE})
        await cs_env.admin.protect(agent.component_id)
        yield Resized(site, ps, mt, agent, names["disk0"], names["disk1"], admin)
    finally:
        await admin.close()
        await site.close()


@pytest.mark.timeout(30)
async def test_a_resize_makes_the_disk_resync_required_with_a_critical_alert(resized: Resized) -> None:
    r = resized
    await r.report(SIZE)  # same size: nothing happens
    assert (await r.disk())["state"] == "enabling" and await r.open_alerts() == []
    await r.report(2 * SIZE)
    disk = await r.disk()
    assert (disk["state"], disk["size_bytes"], disk["generation"]) == ("resync-required", SIZE, 1)
    assert (await r.disk(r.other_id))["state"] == "enabling"  # the other disk replicates on
    (alert,) = await r.open_alerts()
    assert (alert["severity"], alert["disk_id"], alert["source_id"]) == ("critical", r.disk_id, r.machine_id)
    assert "disk_resize" in alert["message"] and f"{SIZE} to {2 * SIZE} bytes" in alert["message"]
    assert f"drlab machine disable {r.machine_id} --keep-points" in alert["message"]
    machine = await r.admin.get(f"/v1/machines/{r.machine_id}")
    assert machine["protection_state"] == "resync-required"
    # replication stops: out of the agent's and the PS's documents, still in the MT's (its points stay)
    assert await r.doc_ids(r.agent) == {r.other_id}
    assert await r.doc_ids(r.ps) == {r.other_id}
    assert await r.doc_ids(r.mt) == {r.disk_id, r.other_id}
    # the agent's progress does not move it; a second identical report raises no second alert
    body = {"state": "protected", "percent": 100.0, "bytes_done": SIZE, "bytes_total": SIZE, "generation": 1}
    await r.agent.api.post(f"/v1/disks/{r.disk_id}/progress", body)
    await r.report(2 * SIZE)
    assert (await r.disk())["state"] == "resync-required" and len(await r.open_alerts()) == 1


@pytest.mark.timeout(30)
async def test_a_resync_does_not_clear_it(resized: Resized) -> None:
    r = resized
    await r.report(SIZE // 2)  # shrunk
    before = await r.disk()
    for client in (r.admin, r.agent.api):
        with pytest.raises(errors.Conflict) as exc:
            await client.post(f"/v1/disks/{r.disk_id}/resync", {"reason": "user"})
        assert "resized" in exc.value.message and "--keep-points" in exc.value.message
        assert "drlab protect" in exc.value.message
    status, reply = await raw(r.site.env.url, tls.client_context(r.site.env.admin_files), "POST",
                              f"/v1/disks/{r.disk_id}/resync", {})
    assert status == 409 and reply["code"] == "conflict"
    assert await r.disk() == before and len(await r.open_alerts()) == 1
    await r.site.env.admin.protect(r.machine_id)  # protect alone leaves it alone (still assigned)
    assert (await r.disk())["state"] == "resync-required"


@pytest.mark.timeout(30)
async def test_disable_keeping_points_then_protect_takes_the_new_size(resized: Resized) -> None:
    r = resized
    await r.report(3 * SIZE)
    reply = await r.admin.post(f"/v1/machines/{r.machine_id}/disable-protection", {"keep_points": True})
    job = await r.site.env.admin.wait_job(reply["job_id"], timeout_s=20.0, poll_s=0.05)
    assert job["state"] == "succeeded", job
    assert (await r.disk())["state"] == "unprotected"
    assert len(await r.open_alerts()) == 1  # still open: enabling again clears it
    await r.site.env.admin.protect(r.machine_id)
    disk = await r.disk()
    assert (disk["size_bytes"], disk["generation"], disk["state"]) == (3 * SIZE, 2, "enabling")
    assert disk["last_resync"]["bytes_total"] == 3 * SIZE
    assert await r.open_alerts() == []
    agent_doc = {d["disk_id"]: d for d in (await settings(r.agent))["document"]["disks"]}
    assert (agent_doc[r.disk_id]["size_bytes"], agent_doc[r.disk_id]["generation"]) == (3 * SIZE, 2)
    mt_doc = {d["disk_id"]: d for d in (await settings(r.mt))["document"]["disks"]}
    assert mt_doc[r.disk_id]["size_bytes"] == 3 * SIZE
    await r.admin.post(f"/v1/disks/{r.disk_id}/resync", {"reason": "user"})  # resyncs work again
    assert (await r.disk())["generation"] == 3
