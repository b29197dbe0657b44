"""Disable protection of a machine, exclude a disk, add a disk to a protected machine (cs/release.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site, raw, settings

from common import tls


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
async def lab(cs_env: Any, tmp_path: Path) -> AsyncIterator[Lab]:
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


async def test_exclude_takes_one_disk_out_of_every_document(lab: Lab) -> None:
    d0, d1 = lab.disks["disk0"], lab.disks["disk1"]
    status, body = await lab.call(f"/v1/disks/{d1}/exclude", {})
    assert status == 200, body
    assert body["released"] == [d1] and body["keep_points"] is False
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
    before = await lab.doc(lab.mt)
    assert (await lab.call(f"/v1/disks/{'0' * 32}/exclude", {}))[0] == 404
    assert (await lab.call("/v1/disks/nothex/exclude", {}))[0] in (400, 404)
    status, body = await lab.call(f"/v1/disks/{d1}/exclude", {"keep_points": "yes"})
    assert status == 400 and "keep_points" in body["message"]
    assert (await lab.call(f"/v1/disks/{d1}/exclude", {"other": 1}))[0] == 400
    assert await lab.doc(lab.mt) == before
    assert (await lab.call(f"/v1/disks/{d1}/exclude", {}))[0] == 200
    status, body = await lab.call(f"/v1/disks/{d1}/exclude", {})  # not protected any more
    assert status == 409
    status, body = await lab.call(f"/v1/disks/{d0}/exclude", {})  # the last protected disk
    assert status == 409 and "disable protection" in body["message"]
    assert ids(await lab.doc(lab.mt)) == {d0}


async def test_exclude_refused_while_a_job_runs(lab: Lab) -> None:
    d1 = lab.disks["disk1"]
    job_id = await lab.site.env.admin.failover(d1)
    status, body = await lab.call(f"/v1/disks/{d1}/exclude", {})
    assert status == 409 and "job" in body["message"]
    assert (await lab.call(f"/v1/machines/{lab.machine_id}/disable-protection", {}))[0] == 409
    assert ids(await lab.doc(lab.mt)) == set(lab.disks.values())
    await lab.mt.api.post(f"/v1/jobs/{job_id}/result", {"state": "failed", "error": "test"})
    assert (await lab.call(f"/v1/disks/{d1}/exclude", {}))[0] == 200


async def test_disable_with_keep_points_then_enable_again_on_the_same_mt(lab: Lab) -> None:
    d0 = lab.disks["disk0"]
    gen = (await lab.disk(d0))["generation"]
    status, body = await lab.call(f"/v1/machines/{lab.machine_id}/disable-protection", {"keep_points": True})
    assert status == 200, body
    assert sorted(body["released"]) == sorted(lab.disks.values()) and body["protection_state"] == "unprotected"
    for member in (lab.agent, lab.ps, lab.mt):
        assert ids(await lab.doc(member)) == set()
    assert "delete_disks" not in await lab.doc(lab.mt)  # kept
    machine = await lab.machine()
    assert (machine["protection_state"], machine["policy"]) == ("unprotected", None)
    # twice: idempotent, nothing released
    status, body = await lab.call(f"/v1/machines/{lab.machine_id}/disable-protection", {"keep_points": True})
    assert status == 200 and body["released"] == []
    await lab.site.env.admin.protect(lab.machine_id)
    view = await lab.disk(d0)
    assert view["mt_id"] == lab.mt.component_id and view["generation"] == gen + 1  # a newer generation
    assert view["state"] == "enabling" and view["last_resync"]["reason"] == "initial"
    assert ids(await lab.doc(lab.mt)) == set(lab.disks.values())
    assert "delete_disks" not in await lab.doc(lab.mt)


async def test_disable_without_points_then_second_disable_drops_kept_points(lab: Lab) -> None:
    d0, d1 = lab.disks["disk0"], lab.disks["disk1"]
    assert (await lab.call(f"/v1/disks/{d1}/exclude", {"keep_points": True}))[0] == 200
    assert "delete_disks" not in await lab.doc(lab.mt)
    status, body = await lab.call(f"/v1/machines/{lab.machine_id}/disable-protection", {})
    assert status == 200 and body["released"] == [d0]
    assert (await lab.doc(lab.mt))["delete_disks"] == sorted([d0, d1])  # the earlier kept points go too
    await lab.site.env.admin.protect(lab.machine_id)  # protected again on the same MT: no delete
    doc = await lab.doc(lab.mt)
    assert ids(doc) == {d0} and doc["delete_disks"] == [d1]  # the excluded disk stays out
    status, body = await lab.call(f"/v1/disks/{d1}/include")
    assert status == 200, body
    doc = await lab.doc(lab.mt)
    assert ids(doc) == {d0, d1} and "delete_disks" not in doc
    assert (await lab.disk(d1))["state"] == "enabling"


async def test_include_refusals_and_include_of_an_unprotected_machine(lab: Lab) -> None:
    d0, d1 = lab.disks["disk0"], lab.disks["disk1"]
    assert (await lab.call(f"/v1/disks/{'0' * 32}/include"))[0] == 404
    assert (await lab.call(f"/v1/disks/{d0}/include"))[0] == 409  # not excluded
    assert (await lab.call(f"/v1/disks/{d1}/exclude", {"keep_points": True}))[0] == 200
    assert (await lab.call(f"/v1/machines/{lab.machine_id}/disable-protection", {"keep_points": True}))[0] == 200
    status, body = await lab.call(f"/v1/disks/{d1}/include")
    assert status == 200 and body["protection_state"] == "unprotected"  # the machine's next protect takes it
    assert ids(await lab.doc(lab.mt)) == set()
    await lab.site.env.admin.protect(lab.machine_id)
    assert ids(await lab.doc(lab.mt)) == {d0, d1}


async def test_disable_refusals(lab: Lab) -> None:
    before = await lab.doc(lab.mt)
    assert (await lab.call(f"/v1/machines/{'0' * 32}/disable-protection", {}))[0] == 404
    assert (await lab.call(f"/v1/machines/{lab.mt.component_id}/disable-protection", {}))[0] == 404  # not a machine
    status, body = await lab.call(f"/v1/machines/{lab.machine_id}/disable-protection", {"keep_points": 1})
    assert status == 400
    assert (await lab.call(f"/v1/machines/{lab.machine_id}/disable-protection", [1]))[0] == 400
    assert await lab.doc(lab.mt) == before
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
    assert (await lab.call(f"/v1/disks/{d1}/exclude", {}))[0] == 200
    views = {v["disk_id"]: v for v in await lab.site.env.admin.protect(lab.machine_id)}
    assert views[d1]["state"] == "unprotected" and views[d0]["mt_id"] == lab.mt.component_id
    assert ids(await lab.doc(lab.agent)) == {d0}
