"""The discovered inventory and the hypervisors as the dashboard reads them: both operator roles
(admin, reader) GET ``/v1/inventory`` and ``/v1/hypervisors`` with the session cookie, never seeing
a password; a reader's POST /v1/hypervisors is 403 and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from cshelpers import Site, anonymous
from ophelpers import call, snapshot

from common import tls

OP_PASSWORD = "correct horse battery"
HV_PASSWORD = "hv-Secret-pw-7c1e"
FP = "ab" * 32


async def _session(site: Site, name: str, role: str) -> str:
    admin = tls.client_context(site.env.admin_files)
    status, body, _ = await call(site.env.url, admin, "POST", "/v1/operators",
                                 {"name": name, "role": role, "password": OP_PASSWORD})
    assert status == 201, body
    status, body, _ = await call(site.env.url, anonymous(site.env), "POST", "/v1/login",
                                 {"name": name, "password": OP_PASSWORD})
    assert status == 200, body
    return str(body["token"])


@pytest.mark.parametrize("role", ["admin", "reader"])
async def test_operator_sessions_read_inventory_and_hypervisors(site: Site, role: str) -> None:
    api = site.env.admin._api
    ps = await site.ps("ps1")
    await api.post("/v1/accounts", {"name": "vc", "username": "administrator@vsphere", "password": HV_PASSWORD})
    await site.env.admin.add_hypervisor("hv1", "127.0.0.1", "vc", ps.component_id, port=8443)
    vm = {"vm": "web1", "host_id": "web1-host", "address": "10.0.0.5", "os": "linux", "power_state": "on",
          "disks": [{"name": "disk0", "size_bytes": 64 << 20}], "agent_installed": False}
    await ps.api.put("/v1/ps/self/hypervisors/hv1/inventory", {"fingerprint": FP, "machines": [vm]})
    cookie = await _session(site, "olga", role)
    url, anon = site.env.url, anonymous(site.env)
    status, body, _ = await call(url, anon, "GET", "/v1/inventory", cookie=cookie)
    assert status == 200, body
    assert [(i["hypervisor"], i["vm"], i["power_state"], i["disks"], i["agent_installed"], i["component_id"],
             i["protected"]) for i in body["items"]] == [
        ("hv1", "web1", "on", [{"name": "disk0", "size_bytes": 64 << 20}], False, None, False)]
    status, hvs, _ = await call(url, anon, "GET", "/v1/hypervisors", cookie=cookie)
    assert status == 200 and [(h["name"], h["machines"], h["fingerprint"]) for h in hvs["items"]] == [("hv1", 1, FP)]
    status, one, _ = await call(url, anon, "GET", "/v1/hypervisors/hv1", cookie=cookie)
    assert status == 200 and one["name"] == "hv1"
    assert HV_PASSWORD not in str((body, hvs, one))
    status, body, _ = await call(url, anon, "GET", "/v1/inventory", cookie=None)
    assert status == 401  # no session, no certificate: nothing


async def test_a_reader_session_cannot_add_or_change_hypervisors(site: Site) -> None:
    api = site.env.admin._api
    ps = await site.ps("ps1")
    await api.post("/v1/accounts", {"name": "vc", "username": "administrator@vsphere", "password": HV_PASSWORD})
    await site.env.admin.add_hypervisor("hv1", "127.0.0.1", "vc", ps.component_id)
    cookie = await _session(site, "rita", "reader")
    url, anon = site.env.url, anonymous(site.env)
    db = site.env.service.state.db  # type: ignore[union-attr]
    before = await snapshot(db)
    new = {"name": "hv2", "address": "vc.example.com", "account": "vc", "ps_id": ps.component_id}
    both: tuple[dict[str, Any], ...] = ({"cookie": cookie}, {"token": cookie})
    for creds in both:
        status, body, _ = await call(url, anon, "POST", "/v1/hypervisors", new, **creds)
        assert (status, body["code"]) == (403, "forbidden"), body
        status, body, _ = await call(url, anon, "POST", "/v1/hypervisors/hv1/discover", {}, **creds)
        assert status == 403, body
        status, body, _ = await call(url, anon, "DELETE", "/v1/hypervisors/hv1", **creds)
        assert status == 403, body
    assert await snapshot(db) == before
    status, body, _ = await call(url, anon, "GET", "/v1/hypervisors", cookie=cookie)
    assert status == 200 and [h["name"] for h in body["items"]] == ["hv1"]
