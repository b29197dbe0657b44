"""Resync records on the CS: reason, start and end, bytes compared and sent; the admin's
``POST /v1/disks/{id}/resync``; the per-disk history."""

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


@dataclass
class Protected:
    site: Site
    ps: Enrolled
    agent: Enrolled
    other: Enrolled
    disk_id: str
    admin: ApiClient

    async def disk(self) -> dict[str, Any]:
        return next(d for d in await self.site.env.admin.disks() if d["disk_id"] == self.disk_id)

    async def history(self) -> list[dict[str, Any]]:
        return list((await self.admin.get(f"/v1/disks/{self.disk_id}/resyncs"))["items"])

    async def progress(self, **fields: Any) -> Any:
        body = {"state": "initial-replication", "percent": 50.0, "bytes_done": SIZE // 2, "bytes_total": SIZE,
                **fields}
        return await self.agent.api.post(f"/v1/disks/{self.disk_id}/progress", body)


@pytest.fixture
async def protected(cs_env: Any, tmp_path: Path) -> AsyncIterator[Protected]:
    site = Site(cs_env, tmp_path)
    admin = ApiClient(cs_env.url, tls.client_context(cs_env.admin_files), timeout_s=15.0)
    try:
        ps = await site.ps()
        await site.mt()
        agent, names = await site.agent("m1", disks={"disk0": SIZE})
        other, _ = await site.agent("m2")
        await cs_env.admin.protect(agent.component_id)
        yield Protected(site, ps, agent, other, names["disk0"], admin)
    finally:
        await admin.close()
        await site.close()


@pytest.mark.timeout(30)
async def test_protection_starts_an_initial_resync_that_progress_ends(protected: Protected) -> None:
    p = protected
    last = (await p.disk())["last_resync"]
    assert (last["generation"], last["reason"], last["state"], last["ended_ns"]) == (1, "initial", "running", None)
    await p.progress(generation=1, mode="copy", bytes_compared=0, bytes_sent=SIZE // 2, reason="initial")
    last = (await p.disk())["last_resync"]
    assert (last["mode"], last["bytes_sent"], last["percent"]) == ("copy", SIZE // 2, 50.0)
    await p.progress(generation=1, state="protected", percent=100.0, bytes_done=SIZE, mode="copy",
                     bytes_sent=SIZE)
    last = (await p.disk())["last_resync"]
    assert last["state"] == "done" and last["ended_ns"] >= last["started_ns"] > 0 and last["bytes_sent"] == SIZE
    await p.progress(generation=1, state="protected", percent=100.0, bytes_done=SIZE, bytes_sent=7)
    assert (await p.disk())["last_resync"]["bytes_sent"] == SIZE  # a finished record stays as it ended


@pytest.mark.timeout(30)
async def test_admin_resync_bumps_the_generation_with_reason_user(protected: Protected) -> None:
    p = protected
    before = await settings(p.ps)
    assert await p.admin.post(f"/v1/disks/{p.disk_id}/resync", {}) == {"generation": 2}
    after = await settings(p.ps, version=before["version"], wait_s=2)
    assert after["document"]["disks"][0]["generation"] == 2
    assert (await settings(p.agent))["document"]["disks"][0]["generation"] == 2
    disk = await p.disk()
    assert (disk["generation"], disk["state"]) == (2, "resync")
    assert (disk["last_resync"]["generation"], disk["last_resync"]["reason"]) == (2, "user")
    assert await p.admin.post(f"/v1/disks/{p.disk_id}/resync", {"reason": "target"}) == {"generation": 3}
    history = await p.history()
    assert [(r["generation"], r["reason"], r["state"]) for r in history] == [
        (3, "target", "running"), (2, "user", "superseded"), (1, "initial", "superseded")]
    assert history[1]["ended_ns"] is not None
    assert len((await p.admin.get(f"/v1/disks/{p.disk_id}/resyncs", params={"limit": 1}))["items"]) == 1


@pytest.mark.timeout(30)
async def test_agent_resync_is_recorded_with_its_reason_and_bytes(protected: Protected) -> None:
    p = protected
    reply = await p.agent.api.post(f"/v1/disks/{p.disk_id}/resync", {"reason": "unclean-shutdown"})
    assert reply == {"generation": 2}
    await p.progress(generation=2, state="resyncing", mode="checksum", bytes_compared=SIZE, bytes_sent=4096)
    await p.progress(generation=1, state="protected", percent=100.0)  # a fenced pipeline's last report
    disk = await p.disk()
    assert (disk["state"], disk["generation"]) == ("resyncing", 2)
    last = disk["last_resync"]
    assert (last["reason"], last["mode"], last["bytes_compared"], last["bytes_sent"]) == (
        "unclean-shutdown", "checksum", SIZE, 4096)


@pytest.mark.timeout(30)
async def test_progress_for_a_generation_without_record_creates_one(protected: Protected) -> None:
    p = protected
    await p.admin.post(f"/v1/disks/{p.disk_id}/resync", {"reason": "user"})
    await p.progress(generation=2, state="protected", percent=100.0, bytes_done=SIZE, mode="checksum",
                     bytes_compared=SIZE, bytes_sent=0)
    last = (await p.disk())["last_resync"]
    assert (last["reason"], last["state"], last["bytes_sent"]) == ("user", "done", 0)


@pytest.mark.timeout(30)
async def test_resync_refusals_change_nothing(protected: Protected, cs_env: Any) -> None:
    p = protected
    for body in ({"reason": "User!"}, {"reason": 5}, {"reason": "x" * 40}, {"reason": ""}):
        with pytest.raises(errors.BadRequest):
            await p.admin.post(f"/v1/disks/{p.disk_id}/resync", body)
    with pytest.raises(errors.NotFound):
        await p.admin.post(f"/v1/disks/{'ef' * 16}/resync", {"reason": "user"})
    with pytest.raises(errors.BadRequest):
        await p.admin.post("/v1/disks/nope/resync", {"reason": "user"})
    _, names = await p.site.agent("m3")
    with pytest.raises(errors.Conflict):  # not protected
        await p.admin.post(f"/v1/disks/{names['disk0']}/resync", {"reason": "user"})
    status, reply = await raw(cs_env.url, p.ps.ssl, "POST", f"/v1/disks/{p.disk_id}/resync", {"reason": "user"})
    assert (status, reply["code"]) == (403, "forbidden")
    status, reply = await raw(cs_env.url, p.other.ssl, "POST", f"/v1/disks/{p.disk_id}/resync", {})
    assert (status, reply["code"]) == (403, "forbidden")
    for bad in ({"generation": 0}, {"generation": 1, "mode": "rsync"}, {"generation": 1, "bytes_sent": -1},
                {"generation": 1, "reason": "Bad Reason"}):
        with pytest.raises(errors.BadRequest):
            await p.progress(**bad)
    for query in ("limit=0", "limit=x", "limit=100000"):
        status, reply = await raw(cs_env.url, tls.client_context(cs_env.admin_files), "GET",
                                  f"/v1/disks/{p.disk_id}/resyncs?{query}")
        assert (status, reply["code"]) == (400, "bad_request"), query
    status, reply = await raw(cs_env.url, p.agent.ssl, "GET", f"/v1/disks/{p.disk_id}/resyncs")
    assert status == 403
    with pytest.raises(errors.NotFound):
        await p.admin.get(f"/v1/disks/{'ef' * 16}/resyncs")
    disk = await p.disk()
    assert (disk["generation"], disk["last_resync"]["reason"]) == (1, "initial")
    assert len(await p.history()) == 1


@pytest.mark.timeout(30)
async def test_a_protected_disk_that_changed_size_is_resync_required(protected: Protected) -> None:
    """Issue 7 point 7 (tests/cs/test_cs_disk_resize.py has the rest): no automatic resync."""
    p = protected
    await p.agent.api.put("/v1/machines/self/disks", {"disks": [{"name": "disk0", "size_bytes": SIZE}]})
    assert (await p.disk())["generation"] == 1  # same size: nothing to do
    await p.agent.api.put("/v1/machines/self/disks", {"disks": [{"name": "disk0", "size_bytes": 2 * SIZE}]})
    disk = await p.disk()
    assert (disk["size_bytes"], disk["generation"], disk["state"]) == (SIZE, 1, "resync-required")
    assert (await settings(p.ps))["document"]["disks"] == []  # replication stopped
    await p.other.api.put("/v1/machines/self/disks", {"disks": [{"name": "disk0", "size_bytes": 3 * SIZE}]})
    other = next(d for d in await p.site.env.admin.disks() if d["machine_id"] == p.other.component_id)
    assert (other["size_bytes"], other["generation"], other["last_resync"]) == (3 * SIZE, 0, None)  # unprotected
