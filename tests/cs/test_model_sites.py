"""Sites and machines: validation, CRUD, members (components and machines), the machine inventory,
and the machine's protection state following its disks."""

from __future__ import annotations

import pytest
from cshelpers import Site, raw

from common import errors
from cs import protection, sites


def test_site_bodies_are_checked() -> None:
    body = {"name": "paris-dc1", "kind": "on-prem"}
    assert sites.parse(body, create=True) == body
    for body in ({"name": "x"}, {"name": "x", "kind": "moon"}, {"name": "-x", "kind": "cloud"},
                 {"name": "x" * 65, "kind": "cloud"}, {"name": "x", "kind": "cloud", "owner": "me"},
                 {"name": "x", "kind": "cloud", "description": 5}):
        with pytest.raises(errors.BadRequest):
            sites.parse(body, create=True)
    with pytest.raises(errors.BadRequest):
        sites.parse({"name": "y"}, create=False)  # the name never changes
    with pytest.raises(errors.BadRequest):
        sites.parse_members({"members": ["not-an-id"]})
    assert sites.parse_members({"members": ["b" * 32, "a" * 32, "b" * 32]}) == ["a" * 32, "b" * 32]


def test_machine_state_is_the_disk_state_that_needs_attention_first() -> None:
    assert protection.machine_state([]) == "unprotected"
    assert protection.machine_state(["protected", "protected"]) == "protected"
    assert protection.machine_state(["protected", "initial-replication"]) == "initial-replication"
    assert protection.machine_state(["protected", "resync-required", "enabling"]) == "resync-required"
    assert protection.machine_state(["failed-over", "failover-in-progress"]) == "failover-in-progress"


async def test_sites_members_and_machines(site: Site) -> None:
    env = site.env
    api = env.admin._api
    ps = await site.ps()
    mt = await site.mt()
    agent, names = await site.agent("m1", {"disk0": 1 << 20, "disk1": 1 << 20})
    assert (await api.post("/v1/sites", {"name": "paris", "kind": "on-prem"}))["members"] == 0
    await api.post("/v1/sites", {"name": "azure-weu", "kind": "cloud", "description": "West Europe"})
    await api.post("/v1/sites/paris/members", {"members": [ps.component_id, agent.component_id]})
    await api.post("/v1/sites/azure-weu/members", {"members": [mt.component_id]})
    paris = await api.get("/v1/sites/paris")
    assert paris["site"]["members"] == 2
    assert sorted(c["role"] for c in paris["components"]) == ["agent", "ps"]
    listed = (await api.get("/v1/sites", params={"limit": 1}))
    assert [s["name"] for s in listed["items"]] == ["azure-weu"] and listed["next"]

    machine = await api.get(f"/v1/machines/{agent.component_id}")
    assert (machine["site"], machine["policy"], machine["protection_state"], machine["name"]) == (
        "paris", None, "unprotected", "m1")
    assert sorted(d["name"] for d in machine["disks"]) == ["disk0", "disk1"]
    await api.request("PATCH", f"/v1/machines/{agent.component_id}", json_body={"name": "web server 1"})
    assert [m["name"] for m in (await api.get("/v1/machines", params={"site": "paris"}))["items"]] == ["web server 1"]
    assert (await api.get("/v1/machines", params={"site": "azure-weu"}))["items"] == []

    await env.admin.protect(agent.component_id)
    assert (await api.get(f"/v1/machines/{agent.component_id}"))["protection_state"] == "enabling"
    body = {"state": "initial-replication", "percent": 10.0, "bytes_done": 1, "bytes_total": 10, "generation": 1}
    await agent.api.post(f"/v1/disks/{names['disk0']}/progress", body)
    assert (await api.get(f"/v1/machines/{agent.component_id}"))["protection_state"] == "enabling"
    await agent.api.post(f"/v1/disks/{names['disk1']}/progress", body)
    assert (await api.get(f"/v1/machines/{agent.component_id}"))["protection_state"] == "initial-replication"

    for method, path, payload, code in (
            ("POST", "/v1/sites", {"name": "paris", "kind": "cloud"}, 409),
            ("DELETE", "/v1/sites/paris", None, 409),  # still has members
            ("POST", "/v1/sites/paris/members", {"members": ["f" * 32]}, 404),
            ("POST", "/v1/sites/nowhere/members", {"members": [ps.component_id]}, 404),
            ("PATCH", "/v1/sites/paris", {"kind": "moon"}, 400),
            ("GET", f"/v1/machines/{ps.component_id}", None, 404)):  # a PS is not a machine
        status, reply = await raw(env.url, api._ssl, method, path, payload)
        assert status == code, (method, path, reply)
    await api.post("/v1/sites/azure-weu/members", {"members": [ps.component_id, agent.component_id]})  # moved
    assert (await api.get("/v1/sites/paris"))["site"]["members"] == 0
    await api.request("DELETE", "/v1/sites/paris")
    assert [s["name"] for s in (await api.get("/v1/sites"))["items"]] == ["azure-weu"]
