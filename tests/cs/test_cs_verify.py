"""Online verify on the CS: the admin asks, the agent's settings list it, the agent posts the
result, the admin reads it; ``repair`` starts a resync with reason ``verify``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site, raw, settings

from common import errors, tls
from common.http import ApiClient

SIZE = 1 << 20
BLOCK = 64 << 10


@dataclass
class Protected:
    site: Site
    agent: Enrolled
    other: Enrolled
    disk_id: str
    admin: ApiClient

    async def ask(self, **body: Any) -> dict[str, Any]:
        return dict(await self.admin.post(f"/v1/disks/{self.disk_id}/verify", body))

    async def post(self, verify_id: str, body: dict[str, Any], who: Enrolled | None = None) -> Any:
        return await (who or self.agent).api.post(f"/v1/disks/{self.disk_id}/verify/{verify_id}", body)

    async def latest(self) -> dict[str, Any]:
        return dict(await self.admin.get(f"/v1/disks/{self.disk_id}/verify"))


def result(differing: list[int], **over: Any) -> dict[str, Any]:
    return {"state": "succeeded", "generation": 1, "block_bytes": BLOCK, "blocks_compared": SIZE // BLOCK,
            "bytes_compared": SIZE, "differing": differing, "unsettled": [], "rounds": 2, "seconds": 0.5, **over}


@pytest.fixture
async def protected(cs_env: Any, tmp_path: Path) -> AsyncIterator[Protected]:
    site = Site(cs_env, tmp_path)
    admin = ApiClient(cs_env.url, tls.client_context(cs_env.admin_files), timeout_s=15.0)
    try:
        await site.ps()
        await site.mt()
        agent, names = await site.agent("m1", disks={"disk0": SIZE})
        other, _ = await site.agent("m2")
        await cs_env.admin.protect(agent.component_id)
        await cs_env.admin.protect(other.component_id)
        yield Protected(site, agent, other, names["disk0"], admin)
    finally:
        await admin.close()
        await site.close()


@pytest.mark.timeout(30)
async def test_verify_travels_admin_agent_admin(protected: Protected) -> None:
    p = protected
    with pytest.raises(errors.NotFound):
        await p.latest()
    before = await settings(p.agent)
    assert "verify" not in before["document"]
    asked = await p.ask(block_bytes=BLOCK)
    assert (asked["state"], asked["block_bytes"], asked["repair"], asked["result"]) == ("queued", BLOCK, False, None)
    vid = asked["verify_id"]
    doc = await settings(p.agent, version=before["version"], wait_s=2)
    assert doc["document"]["verify"] == [{"verify_id": vid, "disk_id": p.disk_id, "block_bytes": BLOCK}]
    assert "verify" not in (await settings(p.other))["document"]
    with pytest.raises(errors.Conflict):  # one at a time
        await p.ask()
    assert await p.post(vid, {"state": "running", "generation": 1}) == {"ok": True}
    assert (await p.latest())["state"] == "running"
    await p.post(vid, result([3 * BLOCK, 0, 3 * BLOCK]))
    done = dict(await p.admin.get(f"/v1/disks/{p.disk_id}/verify/{vid}"))
    assert done["state"] == "succeeded" and done["generation"] == 1
    assert done["result"]["differing"] == [0, 3 * BLOCK] and done["result"]["blocks_compared"] == SIZE // BLOCK
    assert "verify" not in (await settings(p.agent))["document"]
    assert await p.post(vid, result([0])) == {"ok": True}  # the same final state again: a retry
    with pytest.raises(errors.Conflict):
        await p.post(vid, {"state": "failed", "error": "late"})
    disk = next(d for d in await p.site.env.admin.disks() if d["disk_id"] == p.disk_id)
    assert disk["generation"] == 1  # no repair asked
    second = await p.ask()
    assert second["block_bytes"] == 1 << 20 and (await p.latest())["verify_id"] == second["verify_id"]
    await p.post(second["verify_id"], {"state": "failed", "error": "the disk's generation ended"})
    assert (await p.latest())["error"] == "the disk's generation ended"


@pytest.mark.timeout(30)
async def test_repair_resyncs_only_when_blocks_differ(protected: Protected) -> None:
    p = protected
    clean = await p.ask(repair=True)
    await p.post(clean["verify_id"], result([]))
    disk = next(d for d in await p.site.env.admin.disks() if d["disk_id"] == p.disk_id)
    assert disk["generation"] == 1
    dirty = await p.ask(repair=True)
    await p.post(dirty["verify_id"], result([BLOCK]))
    assert (await p.latest())["result"]["repair_generation"] == 2
    disk = next(d for d in await p.site.env.admin.disks() if d["disk_id"] == p.disk_id)
    assert (disk["generation"], disk["last_resync"]["reason"]) == (2, "verify")
    assert (await settings(p.agent))["document"]["disks"][0]["generation"] == 2


@pytest.mark.timeout(30)
async def test_verify_refusals_change_nothing(protected: Protected, cs_env: Any) -> None:
    p = protected
    for body in ({"block_bytes": 5000}, {"block_bytes": 1024}, {"block_bytes": 1 << 30}, {"repair": "yes"},
                 {"extra": 1}):
        with pytest.raises(errors.BadRequest):
            await p.ask(**body)
    with pytest.raises(errors.NotFound):
        await p.admin.post(f"/v1/disks/{'ef' * 16}/verify", {})
    _, names = await p.site.agent("m3")
    with pytest.raises(errors.Conflict):  # not protected
        await p.admin.post(f"/v1/disks/{names['disk0']}/verify", {})
    status, reply = await raw(cs_env.url, p.agent.ssl, "POST", f"/v1/disks/{p.disk_id}/verify", {})
    assert (status, reply["code"]) == (403, "forbidden")
    status, reply = await raw(cs_env.url, p.agent.ssl, "GET", f"/v1/disks/{p.disk_id}/verify")
    assert (status, reply["code"]) == (403, "forbidden")
    with pytest.raises(errors.NotFound):
        await p.latest()

    vid = (await p.ask())["verify_id"]
    for bad in (result([SIZE]), result([-1]), result(["0"]), result([0], rounds=-1), {"state": "done"},
                {"state": "failed"}, {k: v for k, v in result([0]).items() if k != "bytes_compared"},
                result([True])):
        with pytest.raises(errors.BadRequest):
            await p.post(vid, bad)
    with pytest.raises(errors.Forbidden):
        await p.post(vid, result([]), who=p.other)
    with pytest.raises(errors.NotFound):
        await p.post("ef" * 16, result([]))
    status, reply = await raw(cs_env.url, tls.client_context(cs_env.admin_files), "POST",
                              f"/v1/disks/{p.disk_id}/verify/{vid}", result([]))
    assert (status, reply["code"]) == (403, "forbidden")
    with pytest.raises(errors.NotFound):
        await p.admin.get(f"/v1/disks/{p.disk_id}/verify/{'ef' * 16}")
    assert (await p.latest())["state"] == "queued"
