"""Settings documents per role, the long-poll, protection and the agent's disk routes."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import pytest
from cshelpers import MT_PORTS, PS_PORTS, Site, raw, settings

from common import errors
from common.config import CSConfig
from cs.client import CSAdminClient
from cs.service import CSService


async def test_long_poll_returns_at_once_on_a_newer_version(site: Site) -> None:
    ps = await site.ps()
    started = time.monotonic()
    reply = await settings(ps, version=-1, wait_s=5)
    assert time.monotonic() - started < 1.0
    assert reply["version"] >= 1 and reply["document"] == {"disks": []}


async def test_long_poll_waits_when_nothing_changed(site: Site) -> None:
    ps = await site.ps()
    current = (await settings(ps))["version"]
    started = time.monotonic()
    reply = await settings(ps, version=current, wait_s=0.6)
    elapsed = time.monotonic() - started
    assert 0.55 <= elapsed < 3.0
    assert reply["version"] == current


async def test_long_poll_is_woken_by_protect(cs_factory: Any, tmp_path: Path) -> None:
    """Woken in-process at once: the DB re-check (30 s here) plays no part."""
    site = Site(await cs_factory(recheck_s=30.0), tmp_path)
    try:
        await _woken_by_protect(site)
    finally:
        await site.close()


async def _woken_by_protect(site: Site) -> None:
    ps, mt = await site.ps(), await site.mt()
    agent, names = await site.agent()
    current = (await settings(ps))["version"]
    poll = asyncio.create_task(settings(ps, version=current, wait_s=4), name="test-long-poll")
    await asyncio.sleep(0.3)
    assert not poll.done()
    await site.env.admin.protect(agent.component_id)
    changed = time.monotonic()
    reply = await asyncio.wait_for(poll, 3)
    assert time.monotonic() - changed < 0.5
    assert reply["version"] > current
    assert [d["disk_id"] for d in reply["document"]["disks"]] == [names["disk0"]]
    assert reply["document"]["disks"][0]["mt_url"] == f"https://127.0.0.1:{MT_PORTS['data']}"
    assert mt.component_id in {c["component_id"] for c in await site.env.admin.components()}


async def test_wait_is_capped_by_long_poll_max(cs_factory: Any, tmp_path: Path) -> None:
    env = await cs_factory(long_poll_max_s=0.4)
    s = Site(env, tmp_path)
    try:
        ps = await s.ps()
        current = (await settings(ps))["version"]
        started = time.monotonic()
        await settings(ps, version=current, wait_s=30)
        assert time.monotonic() - started < 2.0
    finally:
        await s.close()


async def test_second_cs_process_on_the_same_database_wakes_the_poll(site: Site) -> None:
    """A change made through another CSService on the same DB is seen by the DB re-check."""
    ps, _ = await site.ps(), await site.mt()
    agent, _ = await site.agent()
    cfg = site.env.cfg
    other = CSService(CSConfig(data_dir=cfg.data_dir, listen_host="127.0.0.1", port=0, db_url=cfg.db_url),
                      recheck_s=0.5)
    await other.start()
    admin2 = CSAdminClient(other.url, site.env.admin_files)
    try:
        current = (await settings(ps))["version"]
        poll = asyncio.create_task(settings(ps, version=current, wait_s=4), name="test-long-poll-2")
        await asyncio.sleep(0.2)
        await admin2.protect(agent.component_id)
        changed = time.monotonic()
        reply = await asyncio.wait_for(poll, 4)
        assert time.monotonic() - changed < 1.5  # recheck_s = 0.5 in the fixture's CS
        assert len(reply["document"]["disks"]) == 1
    finally:
        await admin2.close()
        await other.stop()


async def test_protect_fills_every_document(site: Site) -> None:
    ps, mt = await site.ps(), await site.mt()
    agent, names = await site.agent(disks={"disk0": 1 << 20, "disk1": 2 << 20})
    assert (await settings(agent))["document"] == {"disks": []}  # not protected yet
    out = await site.env.admin.protect(agent.component_id)
    assert sorted(d["disk_id"] for d in out) == sorted(names.values())
    assert all((d["ps_id"], d["mt_id"], d["generation"], d["state"]) == (ps.component_id, mt.component_id, 1,
                                                                          "enabling") for d in out)

    agent_doc = {d["name"]: d for d in (await settings(agent))["document"]["disks"]}
    assert agent_doc["disk1"] == {"disk_id": names["disk1"], "name": "disk1", "size_bytes": 2 << 20,
                                  "generation": 1, "ps_url": f"https://127.0.0.1:{PS_PORTS['data']}"}
    ps_doc = {d["disk_id"]: d for d in (await settings(ps))["document"]["disks"]}
    mt_doc = (await settings(mt))["document"]
    assert mt_doc["jobs"] == []
    mt_disks = {d["disk_id"]: d for d in mt_doc["disks"]}
    assert set(ps_doc) == set(mt_disks) == set(names.values())
    for disk_id, d in ps_doc.items():
        assert d["machine_id"] == agent.component_id and d["generation"] == 1 and d["key_epoch"] == 1
        assert d["mt_url"] == f"https://127.0.0.1:{MT_PORTS['data']}"
        assert d["mt_control_url"] == f"https://127.0.0.1:{MT_PORTS['control']}"
        assert len(base64.b64decode(d["key_b64"])) == 32
        m = mt_disks[disk_id]
        assert (m["ps_id"], m["key_b64"], m["key_epoch"], m["generation"]) == (ps.component_id, d["key_b64"], 1, 1)
    assert len({d["key_b64"] for d in ps_doc.values()}) == 2  # one key per disk
    listed = {d["disk_id"]: d for d in await site.env.admin.disks()}
    assert "key_b64" not in listed[names["disk0"]]


async def test_protect_picks_the_least_loaded_ps_and_mt(site: Site) -> None:
    ps1, ps2 = await site.ps("ps1"), await site.ps("ps2")
    mt1, mt2 = await site.mt("mt1"), await site.mt("mt2")
    a1, _ = await site.agent("m1")
    a2, _ = await site.agent("m2")
    first = (await site.env.admin.protect(a1.component_id))[0]
    second = (await site.env.admin.protect(a2.component_id))[0]
    assert {first["ps_id"], second["ps_id"]} == {ps1.component_id, ps2.component_id}
    assert {first["mt_id"], second["mt_id"]} == {mt1.component_id, mt2.component_id}
    again = (await site.env.admin.protect(a1.component_id))[0]  # idempotent: same assignment, same key
    assert (again["ps_id"], again["generation"]) == (first["ps_id"], 1)


async def test_protect_refusals(site: Site) -> None:
    agent, _ = await site.agent()
    with pytest.raises(errors.Conflict):  # no PS, no MT yet
        await site.env.admin.protect(agent.component_id)
    await site.ps()
    await site.mt()
    with pytest.raises(errors.NotFound):
        await site.env.admin.protect("cd" * 16)
    with pytest.raises(errors.BadRequest):
        await site.env.admin.protect("not-an-id")
    assert all(d["ps_id"] is None for d in await site.env.admin.disks())


async def test_reported_disks_keep_their_ids(site: Site) -> None:
    agent, names = await site.agent(disks={"disk0": 4096})
    reply = await agent.api.put("/v1/machines/self/disks", {"disks": [{"name": "disk0", "size_bytes": 8192},
                                                                       {"name": "disk1", "size_bytes": 4096}]})
    ids = {d["name"]: d["disk_id"] for d in reply["disks"]}
    assert ids["disk0"] == names["disk0"] and ids["disk1"] != ids["disk0"]
    sizes = {d["name"]: d["size_bytes"] for d in await site.env.admin.disks()}
    assert sizes == {"disk0": 8192, "disk1": 4096}
    for bad in ({"disks": [{"name": "x", "size_bytes": 0}]}, {"disks": "x"},
                {"disks": [{"name": "d", "size_bytes": 1}, {"name": "d", "size_bytes": 1}]}):
        with pytest.raises(errors.BadRequest):
            await agent.api.put("/v1/machines/self/disks", bad)
    assert len(await site.env.admin.disks()) == 2


async def test_progress_only_for_own_disks(site: Site) -> None:
    await site.ps()
    await site.mt()
    agent, names = await site.agent("m1")
    other, _ = await site.agent("m2")
    disk_id = names["disk0"]
    await site.env.admin.protect(agent.component_id)
    body = {"state": "initial-replication", "percent": 42.5, "bytes_done": 425, "bytes_total": 1000}
    assert (await agent.api.post(f"/v1/disks/{disk_id}/progress", body)) == {"ok": True}
    status, reply = await raw(site.env.url, other.ssl, "POST", f"/v1/disks/{disk_id}/progress",
                              {**body, "percent": 99})
    assert (status, reply["code"]) == (403, "forbidden")
    for bad in ({**body, "state": "bogus"}, {**body, "percent": 101}, {**body, "bytes_done": -1}):
        with pytest.raises(errors.BadRequest):
            await agent.api.post(f"/v1/disks/{disk_id}/progress", bad)
    with pytest.raises(errors.NotFound):
        await agent.api.post(f"/v1/disks/{'ef' * 16}/progress", body)
    disk = next(d for d in await site.env.admin.disks() if d["disk_id"] == disk_id)
    assert (disk["state"], disk["percent"], disk["bytes_done"], disk["bytes_total"]) == (
        "initial-replication", 42.5, 425, 1000)


async def test_resync_bumps_the_generation_everywhere(site: Site) -> None:
    ps, _ = await site.ps(), await site.mt()
    agent, names = await site.agent("m1")
    other, _ = await site.agent("m2")
    disk_id = names["disk0"]
    with pytest.raises(errors.Conflict):  # not protected yet
        await agent.api.post(f"/v1/disks/{disk_id}/resync", {"reason": "user"})
    await site.env.admin.protect(agent.component_id)
    before = await settings(ps)
    assert (await agent.api.post(f"/v1/disks/{disk_id}/resync", {"reason": "unclean-shutdown"})) == {"generation": 2}
    after = await settings(ps, version=before["version"], wait_s=2)
    assert after["version"] > before["version"] and after["document"]["disks"][0]["generation"] == 2
    assert (await settings(agent))["document"]["disks"][0]["generation"] == 2
    disk = next(d for d in await site.env.admin.disks() if d["disk_id"] == disk_id)
    assert (disk["generation"], disk["state"]) == (2, "resync")
    status, reply = await raw(site.env.url, other.ssl, "POST", f"/v1/disks/{disk_id}/resync", {"reason": "x"})
    assert (status, reply["code"]) == (403, "forbidden")
    assert next(d for d in await site.env.admin.disks() if d["disk_id"] == disk_id)["generation"] == 2


async def test_bad_settings_queries_are_400(site: Site) -> None:
    ps = await site.ps()
    for query in ("version=abc", "version=1.5", "wait_s=-1", "wait_s=nan"):
        status, reply = await raw(site.env.url, ps.ssl, "GET", f"/v1/settings?{query}")
        assert (status, reply["code"]) == (400, "bad_request"), query


async def test_stop_releases_waiting_long_polls(cs_factory: Any, tmp_path: Path) -> None:
    env = await cs_factory(recheck_s=30.0)
    s = Site(env, tmp_path)
    try:
        ps = await s.ps()
        current = (await settings(ps))["version"]
        poll = asyncio.create_task(settings(ps, version=current, wait_s=4), name="test-poll-at-stop")
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await env.service.stop()
        assert time.monotonic() - started < 2.0
        reply = await asyncio.wait_for(poll, 2)
        assert reply["version"] == current
    finally:
        await s.close()
