"""Protect targets and seeds (cs/targets.py, cs/disks.py protect): the body's parsing, the site-aware
choice of PS and MT, named targets, and seeds checked against the MT's datastore before anything
changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site, raw, settings

from common import errors, tls
from cs import targets
from cs.db.models import Component

DATASTORE = "/srv/datastore"

# -- pure -----------------------------------------------------------------------------------------


def test_parse_every_field_optional() -> None:
    assert targets.parse({}) == targets.ProtectRequest()
    req = targets.parse({"policy": "gold", "ps_id": "a" * 32, "mt_id": "b" * 32,
                         "seed": {"disk0": "/srv/datastore/vm//d0.img", "disk1": "/srv/./d1.img"}})
    assert (req.policy, req.ps_id, req.mt_id) == ("gold", "a" * 32, "b" * 32)
    assert req.seed == {"disk0": "/srv/datastore/vm/d0.img", "disk1": "/srv/d1.img"}  # normalised


@pytest.mark.parametrize("body", [
    {"unknown": 1},
    {"ps_id": "nothex"},
    {"mt_id": "A" * 32},
    {"seed": ["disk0", "/x"]},
    {"seed": {"disk0": 5}},
    {"seed": {"bad name!": "/srv/x.img"}},
    {"seed": {f"d{i}": "/srv/x.img" for i in range(65)}},
])
def test_parse_refuses_bad_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(errors.BadRequest):
        targets.parse(body)


@pytest.mark.parametrize("path", ["relative/disk.img", "", "/", "/srv/../etc/passwd", "/srv/..",
                                  "/srv/disk\n.img", "/srv/\x00disk", "/srv/\x1bdisk", "/" + "a" * 4096, None])
def test_clean_path_refuses(path: Any) -> None:
    with pytest.raises(errors.BadRequest):
        targets.clean_path(path)


def test_clean_path_accepts_and_normalises() -> None:
    assert targets.clean_path("/srv/datastore/") == "/srv/datastore"
    assert targets.clean_path("/srv//a/./b.img") == "/srv/a/b.img"
    assert targets.clean_path("/srv/..x/b.img") == "/srv/..x/b.img"  # a name starting with dots is fine
    assert targets.clean_path("/" + "a" * 4095) == "/" + "a" * 4095


@pytest.mark.parametrize(("path", "root", "result"), [
    ("/srv/ds/a.img", "/srv/ds", True),
    ("/srv/ds", "/srv/ds", True),
    ("/srv/ds/a.img", "/srv/ds/", True),
    ("/srv/ds/x/y/a.img", "/srv/ds", True),
    ("/srv/dsx/a.img", "/srv/ds", False),
    ("/srv/a.img", "/srv/ds", False),
    ("/etc/passwd", "/", True),
])
def test_inside(path: str, root: str, result: bool) -> None:
    assert targets.inside(path, root) is result


def comp(cid: str, site: str | None, registered_at: int = 1) -> Component:
    return Component(component_id=cid, role="ps", host_id=cid, address="x", cert_serial="1",
                     registered_at=registered_at, site_name=site)


def test_pick_prefers_the_site_for_a_ps_and_another_for_an_mt() -> None:
    onprem, cloud, nosite = comp("a" * 32, "paris"), comp("b" * 32, "azure"), comp("c" * 32, None)
    cands = [onprem, cloud, nosite]
    load = {onprem.component_id: 5, cloud.component_id: 5, nosite.component_id: 0}
    assert targets.pick(cands, load, "ps", site="paris", same_site=True) is onprem
    assert targets.pick(cands, load, "mt", site="paris", same_site=False) is cloud
    assert targets.pick(cands, load, "ps", site="azure", same_site=True) is cloud
    assert targets.pick(cands, load, "mt", site="azure", same_site=False) is onprem
    assert targets.pick(cands, load, "ps", site=None, same_site=True) is nosite  # no site: least loaded


def test_pick_falls_back_to_the_least_loaded_when_no_site_matches() -> None:
    first, second = comp("a" * 32, "paris", registered_at=2), comp("b" * 32, None, registered_at=1)
    assert targets.pick([first, second], {first.component_id: 1}, "mt", site="paris", same_site=False) is second
    assert targets.pick([first, second], {}, "ps", site="tokyo", same_site=True) is second  # older wins a tie
    assert targets.pick([first, second], {second.component_id: 3}, "ps", site="tokyo", same_site=True) is first
    with pytest.raises(errors.Conflict):
        targets.pick([], {}, "process server", site="paris", same_site=True)


# -- through the CS ---------------------------------------------------------------------------------


@dataclass
class Lab:
    site: Site
    ps: Enrolled
    mt: Enrolled
    agent: Enrolled
    disks: dict[str, str]

    @property
    def machine_id(self) -> str:
        return self.agent.component_id

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await raw(self.site.env.url, tls.client_context(self.site.env.admin_files), method, path, body)

    async def protect(self, body: Any, machine: Enrolled | None = None) -> tuple[int, Any]:
        return await self.admin("POST", f"/v1/machines/{(machine or self.agent).component_id}/protect", body)

    async def doc(self, member: Enrolled) -> dict[str, Any]:
        return dict((await settings(member))["document"])

    async def snapshot(self) -> tuple[Any, ...]:
        disks = [d for d in await self.site.env.admin.disks() if d["machine_id"] == self.machine_id]
        return (sorted((d["disk_id"], d["state"], d["ps_id"], d["mt_id"]) for d in disks),
                await self.doc(self.mt), await self.doc(self.agent), await self.doc(self.ps))


async def beat(member: Enrolled, metrics: dict[str, Any]) -> None:
    await member.api.post("/v1/heartbeat", {"metrics": metrics})


@pytest.fixture
async def lab(cs_env: Any, tmp_path: Path) -> AsyncIterator[Lab]:
    site = Site(cs_env, tmp_path)
    try:
        ps, mt = await site.ps(), await site.mt()
        agent, names = await site.agent(disks={"disk0": 1 << 20, "disk1": 1 << 20})
        yield Lab(site, ps, mt, agent, names)
    finally:
        await site.close()


async def test_seeded_protect_sends_the_path_to_the_mt_and_seeded_to_the_agent(lab: Lab) -> None:
    await beat(lab.mt, {"datastore_dir": DATASTORE})
    status, body = await lab.protect({"seed": {"disk0": DATASTORE + "/vm1/disk0.img"}})
    assert status == 200, body
    mt_disks = {d["disk_id"]: d for d in (await lab.doc(lab.mt))["disks"]}
    assert mt_disks[lab.disks["disk0"]]["replica_path"] == DATASTORE + "/vm1/disk0.img"
    assert "replica_path" not in mt_disks[lab.disks["disk1"]]
    agent_disks = {d["disk_id"]: d for d in (await lab.doc(lab.agent))["disks"]}
    assert agent_disks[lab.disks["disk0"]].get("seeded") is True
    assert "seeded" not in agent_disks[lab.disks["disk1"]]


async def test_a_seeded_disk_shows_reprotecting_until_protected(lab: Lab) -> None:
    """The first generation of a seeded disk compares with an existing disk: the CS shows it as
    ``reprotecting`` (ARCHITECTURE.md §6), an unseeded one as ``initial-replication``."""
    await beat(lab.mt, {"datastore_dir": DATASTORE})
    status, _ = await lab.protect({"seed": {"disk0": DATASTORE + "/vm1/disk0.img"}})
    assert status == 200

    async def report(name: str, state: str) -> str:
        body = {"generation": 1, "state": state, "percent": 50.0, "bytes_done": 1, "bytes_total": 2}
        await lab.agent.api.post(f"/v1/disks/{lab.disks[name]}/progress", body)
        return next(d["state"] for d in await lab.site.env.admin.disks() if d["disk_id"] == lab.disks[name])

    assert await report("disk0", "initial-replication") == "reprotecting"
    assert await report("disk1", "initial-replication") == "initial-replication"
    assert await report("disk0", "protected") == "protected"


@pytest.mark.parametrize(("metrics", "body", "status"), [
    ({}, {"seed": {"disk0": DATASTORE + "/d.img"}}, 409),  # the MT reported no datastore
    ({"datastore_dir": DATASTORE}, {"seed": {"disk0": "/srv/elsewhere/d.img"}}, 409),
    ({"datastore_dir": DATASTORE}, {"seed": {"disk0": DATASTORE + "x/d.img"}}, 409),
    ({"datastore_dir": DATASTORE}, {"seed": {"disk9": DATASTORE + "/d.img"}}, 404),  # no such disk
    ({"datastore_dir": DATASTORE}, {"seed": {"disk0": "vm/d.img"}}, 400),
    ({"datastore_dir": DATASTORE}, {"seed": {"disk0": DATASTORE + "/../etc/d.img"}}, 400),
    ({"datastore_dir": DATASTORE}, {"seed": {"disk0": DATASTORE + "/d\x01.img"}}, 400),
    ({"datastore_dir": DATASTORE}, {"seed": {"disk0": DATASTORE + "/d.img"}, "extra": 1}, 400),
    ({"datastore_dir": DATASTORE}, {"ps_id": "0" * 32}, 404),  # no such component
])
async def test_protect_refusals_change_nothing(lab: Lab, metrics: dict[str, Any], body: dict[str, Any],
                                               status: int) -> None:
    await beat(lab.mt, metrics)
    before = await lab.snapshot()
    got, reply = await lab.protect(body)
    assert got == status, reply
    assert isinstance(reply, dict) and reply.get("code") and reply.get("message")
    assert await lab.snapshot() == before
    assert all(state == "unprotected" for _, state, _, _ in before[0])


async def test_naming_a_component_of_another_role_is_404(lab: Lab) -> None:
    before = await lab.snapshot()
    assert (await lab.protect({"ps_id": lab.mt.component_id}))[0] == 404
    assert (await lab.protect({"mt_id": lab.ps.component_id}))[0] == 404
    assert (await lab.protect({"ps_id": lab.agent.component_id}))[0] == 404
    assert await lab.snapshot() == before


async def test_named_targets_are_used_and_cannot_change_while_replicating(lab: Lab) -> None:
    ps2, mt2 = await lab.site.ps("ps2"), await lab.site.mt("mt2")
    status, body = await lab.protect({"ps_id": ps2.component_id, "mt_id": mt2.component_id})
    assert status == 200, body
    assert {(d["ps_id"], d["mt_id"]) for d in body["disks"]} == {(ps2.component_id, mt2.component_id)}
    before = await lab.snapshot()
    for other in ({"ps_id": lab.ps.component_id}, {"mt_id": lab.mt.component_id},
                  {"ps_id": ps2.component_id, "mt_id": lab.mt.component_id}):
        got, reply = await lab.protect(other)
        assert got == 409, reply
    assert await lab.snapshot() == before
    status, body = await lab.protect({"ps_id": ps2.component_id})  # the same targets again: fine
    assert status == 200, body


async def load(lab: Lab, host: str, ndisks: int, ps: Enrolled, mt: Enrolled) -> None:
    """A machine without a site protected on ``ps`` and ``mt``: ``ndisks`` more disks of load on them."""
    agent, _ = await lab.site.agent(host, {f"disk{i}": 1 << 20 for i in range(ndisks)})
    status, body = await lab.protect({"ps_id": ps.component_id, "mt_id": mt.component_id}, machine=agent)
    assert status == 200, body


async def test_default_targets_follow_the_machine_site(lab: Lab) -> None:
    cloud_ps, cloud_mt = await lab.site.ps("ps-cloud"), await lab.site.mt("mt-cloud")
    cloud_agent, cloud_disks = await lab.site.agent("m-cloud", {"disk0": 1 << 20})
    for name, kind in (("paris", "on-prem"), ("azure", "cloud")):
        status, reply = await lab.admin("POST", "/v1/sites", {"name": name, "kind": kind})
        assert status == 201, reply
    for name, members in (("paris", [lab.ps, lab.mt, lab.agent]), ("azure", [cloud_ps, cloud_mt, cloud_agent])):
        status, reply = await lab.admin("POST", f"/v1/sites/{name}/members",
                                        {"members": [m.component_id for m in members]})
        assert status == 200, reply
    # each time the expected picks carry more load: the least loaded alone would choose the others
    await load(lab, "load1", 1, lab.ps, cloud_mt)
    status, body = await lab.protect({})  # on-prem machine: the on-prem PS, the cloud MT
    assert status == 200, body
    assert {(d["ps_id"], d["mt_id"]) for d in body["disks"]} == {(lab.ps.component_id, cloud_mt.component_id)}
    await load(lab, "load2", 4, cloud_ps, lab.mt)
    status, body = await lab.protect({}, machine=cloud_agent)  # cloud machine: the cloud PS, the on-prem MT
    assert status == 200, body
    assert {(d["ps_id"], d["mt_id"]) for d in body["disks"]} == {(cloud_ps.component_id, lab.mt.component_id)}
    assert {d["disk_id"] for d in body["disks"]} == set(cloud_disks.values())
