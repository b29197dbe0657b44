"""Push installation (cs/push_install.py) on a real CS, the test playing the PS: claim once, report,
an agent enrolls with the token; refused guest credentials fail the job naming the account; no
password or token in job rows, the database or the logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site, settings

from common import component, enroll, errors, tls
from common.http import ApiClient
from cs import push_install
from tests.conftest import stored_bytes

HV_PASSWORD = "vc-Secret-4411"
GUEST_PASSWORD = "guest-Secret-7720"
FP = "ab" * 32


def vm(name: str, host_id: str) -> dict[str, Any]:
    return {"vm": name, "host_id": host_id, "address": "10.0.0.7", "os": "linux", "power_state": "on",
            "disks": [{"name": "disk0", "size_bytes": 1 << 20}], "agent_installed": False}


async def setup(site: Site) -> tuple[Any, Enrolled, Enrolled]:
    """(admin api, PS of hv1 holding vm1 and vm2, another PS)."""
    api = site.env.admin._api
    ps, other = await site.ps("ps1"), await site.ps("ps2")
    await api.post("/v1/accounts", {"name": "vc", "username": "administrator", "password": HV_PASSWORD})
    await api.post("/v1/accounts", {"name": "guest", "username": "root", "password": GUEST_PASSWORD})
    await site.env.admin.add_hypervisor("hv1", "127.0.0.1", "vc", ps.component_id, port=8443, fingerprint=FP)
    await ps.api.put("/v1/ps/self/hypervisors/hv1/inventory",
                     {"fingerprint": FP, "machines": [vm("vm1", "vm-host-1"), vm("vm2", "vm-host-2")]})
    return api, ps, other


async def enroll_agent(site: Site, token_text: str, host_id: str) -> Enrolled:
    files = tls.IdentityFiles(site.tmp / f"pushed-{host_id}")
    meta = await component.register(site.env.url, enroll.parse(token_text), role="agent", host_id=host_id,
                                    address="10.0.0.7", ports={}, files=files)
    agent = Enrolled("agent", host_id, str(meta["component_id"]), files,
                     ApiClient(site.env.url, tls.client_context(files), timeout_s=15.0))
    site.members.append(agent)
    return agent


async def test_install_bodies_are_checked_and_change_nothing(site: Site) -> None:
    api, ps, _ = await setup(site)
    path = "/v1/inventory/hv1/vm1/install"
    cases = [("/v1/inventory/hv1/vm1/install", {"account": "nope"}, errors.NotFound),
             ("/v1/inventory/hv1/vm9/install", {"account": "guest"}, errors.NotFound),
             ("/v1/inventory/hv9/vm1/install", {"account": "guest"}, errors.NotFound),
             (path, {"account": "guest", "ps_id": "0" * 32}, errors.NotFound),
             (path, {"account": "guest", "password": "x"}, errors.BadRequest),
             (path, {}, errors.BadRequest)]
    for where, body, exc in cases:
        with pytest.raises(exc):
            await api.post(where, body)
    assert (await api.get("/v1/jobs", params={"kind": push_install.KIND}))["items"] == []
    assert (await settings(ps))["document"]["push_installs"] == []
    job_id = await site.env.admin.install_agent("hv1", "vm1", "guest")
    with pytest.raises(errors.Conflict):  # one push install of a VM at a time
        await site.env.admin.install_agent("hv1", "vm1", "guest")
    assert [j["job_id"] for j in (await api.get("/v1/jobs", params={"kind": push_install.KIND}))["items"]] == [job_id]


async def test_push_install_enrolls_the_agent(site: Site, capsys: pytest.CaptureFixture[str],
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api, ps, other = await setup(site)
    admin = site.env.admin
    job_id = await admin.install_agent("hv1", "vm1", "guest")
    doc = (await settings(ps))["document"]
    assert doc["push_installs"] == [{"job_id": job_id, "hypervisor": "hv1", "vm": "vm1", "host_id": "vm-host-1",
                                     "account": "guest"}]
    assert "push_installs" not in (await settings(other))["document"]
    claim_path = f"/v1/ps/self/push/{job_id}/claim"
    with pytest.raises(errors.Forbidden):
        await other.api.post(claim_path)
    with pytest.raises(errors.Conflict):  # nothing to report before the claim
        await ps.api.post(f"/v1/ps/self/push/{job_id}/result", {"ok": True})
    claimed = await ps.api.post(claim_path)
    assert {k: claimed[k] for k in ("username", "password", "address", "port", "fingerprint")} == {
        "username": "root", "password": GUEST_PASSWORD, "address": "127.0.0.1", "port": 8443, "fingerprint": FP}
    token = enroll.parse(claimed["enroll_token"])
    with pytest.raises(errors.Conflict):
        await ps.api.post(claim_path)
    assert (await settings(ps))["document"]["push_installs"] == []  # claimed: no longer waiting for the PS
    with pytest.raises(errors.BadRequest):
        await ps.api.post(f"/v1/ps/self/push/{job_id}/result", {"ok": "yes"})
    await ps.api.post(f"/v1/ps/self/push/{job_id}/result", {"ok": True, "message": "agent started"})
    with pytest.raises(errors.Conflict):
        await ps.api.post(f"/v1/ps/self/push/{job_id}/result", {"ok": True})
    agent = await enroll_agent(site, claimed["enroll_token"], "vm-host-1")
    await agent.api.post("/v1/heartbeat", {"metrics": {}})
    job = await admin.wait_job(job_id, timeout_s=20, poll_s=0.1)
    assert job["state"] == "succeeded", job
    assert [s["name"] for s in job["steps"]] == ["request push install through PS ps1",
                                                 "PS installs the agent", "agent enrolls"]
    assert job["result"]["component_id"] == agent.component_id
    items = await admin.inventory("hv1")
    assert [i["component_id"] for i in items if i["vm"] == "vm1"] == [agent.component_id]
    secrets = [GUEST_PASSWORD, HV_PASSWORD, claimed["enroll_token"], claimed["enroll_token"].rsplit(".", 1)[1]]
    jobs_text = str(await api.get("/v1/jobs")) + str(job) + str(await api.get("/v1/audit"))
    stored = await stored_bytes(site.env)
    out = capsys.readouterr()
    logs = out.out + out.err + caplog.text
    assert "push_install_claimed" in logs and token.token_id in logs  # the flow did log (the id is no secret)
    for secret in secrets:
        assert secret not in jobs_text and secret not in logs and secret.encode() not in stored


async def test_refused_guest_credentials_fail_the_job(site: Site) -> None:
    api, ps, _ = await setup(site)
    job_id = await site.env.admin.install_agent("hv1", "vm2", "guest")
    claimed = await ps.api.post(f"/v1/ps/self/push/{job_id}/claim")
    await ps.api.post(f"/v1/ps/self/push/{job_id}/result",
                      {"ok": False, "code": "guest_credentials_refused", "message": "401 from the hypervisor"})
    job = await site.env.admin.wait_job(job_id, timeout_s=20, poll_s=0.1)
    assert job["state"] == "failed"
    assert job["error"].startswith("guest_credentials_refused:")
    assert "account guest" in job["error"] and "user root" in job["error"] and "refused" in job["error"]
    assert GUEST_PASSWORD not in str(job)
    with pytest.raises(errors.Unauthorized):  # the token was burnt: nothing can register with it
        await enroll_agent(site, claimed["enroll_token"], "vm-host-2")
    assert not [c for c in await site.env.admin.components() if c["host_id"] == "vm-host-2"]
    with pytest.raises(errors.Conflict):  # the job is over
        await ps.api.post(f"/v1/ps/self/push/{job_id}/claim")


async def test_unclaimed_job_times_out(site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(push_install, "RESULT_TIMEOUT_S", 0.5)
    _, ps, _ = await setup(site)
    job_id = await site.env.admin.install_agent("hv1", "vm1", "guest")
    job = await site.env.admin.wait_job(job_id, timeout_s=20, poll_s=0.1)
    assert job["state"] == "failed" and "did not claim" in job["error"] and ps.component_id in job["error"]
