"""Hypervisors and the discovered inventory (cs/hypervisors.py, cs/api/hypervisors.py) on a real CS:
admin CRUD with bad input changing nothing, the PS's settings (never a password), credentials only
for the hypervisor's own PS, inventory reports with pinned fingerprints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site, raw, settings

from common import errors, tls
from cs import hypervisors

PASSWORD = "hv-Secret-pw-9f3a"
FP = "ab" * 32


async def setup(site: Site) -> tuple[Any, Enrolled, Enrolled]:
    """(admin api, PS with the hypervisor hv1, another PS); account ``vc`` holds the password."""
    api = site.env.admin._api
    ps, other = await site.ps("ps1"), await site.ps("ps2")
    await api.post("/v1/accounts", {"name": "vc", "username": "administrator@vsphere", "password": PASSWORD})
    await site.env.admin.add_hypervisor("hv1", "127.0.0.1", "vc", ps.component_id, port=8443)
    return api, ps, other


def machine(vm: str, host_id: str, power: str = "on") -> dict[str, Any]:
    return {"vm": vm, "host_id": host_id, "address": "10.0.0.5", "os": "linux", "power_state": power,
            "disks": [{"name": "disk0", "size_bytes": 1 << 20}], "agent_installed": False}


def test_report_bodies_are_checked() -> None:
    seen, machines, err = hypervisors.parse_report({"fingerprint": FP.upper(), "machines": [machine("a", "h")]})
    assert seen == FP and machines is not None and machines[0]["vm"] == "a" and err is None
    assert hypervisors.parse_report({"error": {"code": "unreachable", "message": "x"}})[2] == {
        "code": "unreachable", "message": "x"}
    bad: list[dict[str, Any]] = [{"fingerprint": "xyz", "machines": []}, {"machines": []},
           {"fingerprint": FP, "machines": [machine("a", "h"), machine("a", "h2")]},
           {"fingerprint": FP, "machines": [{**machine("a", "h"), "os": "beos"}]},
           {"fingerprint": FP, "machines": [{**machine("a", "h"), "disks": [{"name": "d"}]}]},
           {"error": "down"}, {"fingerprint": FP, "machines": [], "extra": 1}]
    for body in bad:
        with pytest.raises(errors.BadRequest):
            hypervisors.parse_report(body)


async def test_crud_and_bad_input_changes_nothing(site: Site) -> None:
    api, ps, _ = await setup(site)
    admin = site.env.admin
    before = await admin.hypervisors()
    assert [(h["name"], h["port"], h["account"], h["machines"], h["fingerprint"]) for h in before] == [
        ("hv1", 8443, "vc", 0, None)]
    good = {"name": "hv2", "address": "vc.example.com", "account": "vc", "ps_id": ps.component_id}
    cases = [({**good, "account": "nope"}, errors.NotFound, "account nope"),
             ({**good, "ps_id": "0" * 32}, errors.NotFound, "process server"),
             ({**good, "ps_id": (await site.mt()).component_id}, errors.NotFound, "process server"),
             ({**good, "name": "Bad Name!"}, errors.BadRequest, "name"),
             ({**good, "port": 70000}, errors.BadRequest, "port"),
             ({**good, "fingerprint": "12"}, errors.BadRequest, "fingerprint"),
             ({**good, "password": "x"}, errors.BadRequest, "unknown field"),
             ({**good, "name": "hv1"}, errors.Conflict, "already exists")]
    for body, exc, words in cases:
        with pytest.raises(exc) as caught:
            await api.post("/v1/hypervisors", body)
        assert words in caught.value.message
    assert await admin.hypervisors() == before
    with pytest.raises(errors.NotFound):
        await admin.hypervisor("nope")
    seq = (await admin.hypervisor("hv1"))["discover_seq"]
    assert (await admin.discover_hypervisor("hv1"))["discover_seq"] == seq + 1
    created = await admin.add_hypervisor("hv2", "vc.example.com", "vc", ps.component_id, fingerprint=FP.upper())
    assert created["port"] == 443 and created["fingerprint"] == FP
    await admin.remove_hypervisor("hv2")
    with pytest.raises(errors.NotFound):
        await admin.remove_hypervisor("hv2")
    assert [h["name"] for h in await admin.hypervisors()] == ["hv1"]


async def test_ps_settings_carry_hypervisors_without_password(site: Site) -> None:
    api, ps, other = await setup(site)
    reply = await settings(ps)
    doc = reply["document"]
    assert doc["hypervisors"] == [{"name": "hv1", "address": "127.0.0.1", "port": 8443, "account": "vc",
                                   "fingerprint": None, "discover_seq": 0}]
    assert doc["push_installs"] == [] and doc["discovery_interval_s"] == 900.0
    assert PASSWORD not in str(doc)
    assert "hypervisors" not in (await settings(other))["document"]  # only the PS's own
    await site.env.admin.discover_hypervisor("hv1")  # a settings change: the long poll returns at once
    newer = await settings(ps, version=reply["version"], wait_s=5)
    assert newer["version"] > reply["version"] and newer["document"]["hypervisors"][0]["discover_seq"] == 1


async def test_credentials_only_for_the_hypervisors_ps(site: Site) -> None:
    api, ps, other = await setup(site)
    path = "/v1/ps/self/hypervisors/hv1/credentials"
    assert await ps.api.post(path) == {"username": "administrator@vsphere", "password": PASSWORD}
    with pytest.raises(errors.Forbidden):
        await other.api.post(path)
    with pytest.raises(errors.NotFound):
        await ps.api.post("/v1/ps/self/hypervisors/nope/credentials")
    agent, _ = await site.agent("m9")
    with pytest.raises(errors.Forbidden):  # not a PS at all
        await agent.api.post(path)
    status, _ = await raw(site.env.url, tls.client_context(site.env.admin_files), "POST", path)
    assert status == 403  # the admin neither
    assert PASSWORD not in str(await api.get("/v1/hypervisors/hv1"))


async def test_inventory_report_pins_and_lists_agents(site: Site) -> None:
    api, ps, other = await setup(site)
    admin = site.env.admin
    path = "/v1/ps/self/hypervisors/hv1/inventory"
    version = (await settings(ps))["version"]
    await ps.api.put(path, {"fingerprint": FP, "machines": [machine("vm1", "m1"), machine("vm2", "m2", "off")]})
    doc = await settings(ps, version=version, wait_s=5)  # the pinned fingerprint is a settings change
    assert doc["document"]["hypervisors"][0]["fingerprint"] == FP
    agent, _ = await site.agent("m1")
    items = await admin.inventory()
    assert [(i["vm"], i["host_id"], i["power_state"], i["component_id"], i["protected"]) for i in items] == [
        ("vm1", "m1", "on", agent.component_id, False), ("vm2", "m2", "off", None, False)]
    assert (await admin.hypervisor("hv1"))["machines"] == 2
    with pytest.raises(errors.Conflict) as caught:  # another certificate: refused, nothing stored
        await ps.api.put(path, {"fingerprint": "cd" * 32, "machines": []})
    assert caught.value.code == "fingerprint_mismatch"
    assert len(await admin.inventory("hv1")) == 2
    with pytest.raises(errors.Forbidden):
        await other.api.put(path, {"fingerprint": FP, "machines": []})
    with pytest.raises(errors.BadRequest):
        await ps.api.put(path, {"fingerprint": FP, "machines": [{"vm": "x"}]})
    assert len(await admin.inventory()) == 2
    await site.mt()
    await admin.protect(agent.component_id)
    await ps.api.put(path, {"fingerprint": FP, "machines": [machine("vm1", "m1")]})  # vm2 is gone
    items = await admin.inventory()
    assert [(i["vm"], i["component_id"], i["protected"]) for i in items] == [("vm1", agent.component_id, True)]
    await ps.api.put(path, {"error": {"code": "unreachable", "message": "connection refused"}})
    hv = await admin.hypervisor("hv1")
    assert hv["last_error"]["code"] == "unreachable" and hv["machines"] == 1 and hv["last_discovery_ns"]
    await admin.remove_hypervisor("hv1")
    assert await admin.inventory() == []


async def test_inventory_query_is_checked(site: Site, tmp_path: Path) -> None:
    api = site.env.admin._api
    with pytest.raises(errors.BadRequest):
        await api.get("/v1/inventory", params={"hv": "x"})
    assert await api.get("/v1/inventory", params={"hypervisor": "none"}) == {"items": []}
