"""Decommission (DELETE /v1/ps/{id}) and purge (POST /v1/ps/{id}/purge) of a process server on a
real CS, with the components simulated by their heartbeats (the fleet of test_switch_jobs.py)."""

from __future__ import annotations

import asyncio

import pytest
from cshelpers import Site, raw
from test_switch_jobs import PS2_PORTS, Fleet, _generation, job_steps
from test_switch_jobs import fleet as fleet  # noqa: F401 (the fixture)

from common import errors, tls
from deploy import cli


async def drlab(f: Fleet, *argv: str) -> int:
    base = ["--cs-url", f.env.url, "--admin-dir", str(f.env.admin_files.directory)]
    return int(await asyncio.to_thread(cli.main, [*base, *argv]))


async def _ps_ids(f: Fleet) -> set[str]:
    return {c["component_id"] for c in await f.env.admin.components() if c["role"] == "ps"}


async def _revoked(f: Fleet, member: object) -> bool:
    try:
        await f.ps1.api.post("/v1/heartbeat", {"metrics": {}})
    except errors.Unauthorized as exc:
        return exc.code == "certificate_revoked"
    return False


async def _jobs(f: Fleet) -> list[str]:
    return [j["job_id"] for j in (await f.admin.get("/v1/jobs"))["items"]]


@pytest.mark.timeout(60)
async def test_remove_is_refused_while_disks_are_assigned_and_allowed_after_a_switch(fleet: Fleet) -> None:
    f = fleet
    admin_ctx = tls.client_context(f.env.admin_files)
    ps1 = f.ps1.component_id
    status, body = await raw(f.env.url, admin_ctx, "DELETE", f"/v1/ps/{ps1}")
    assert status == 409 and f"drlab ps switch {ps1} --to OTHER" in body["message"], body
    assert ps1 in await _ps_ids(f)
    assert await drlab(f, "ps", "remove", "ps1") == 2  # by host id, through the CLI: refused alike
    assert ps1 in await _ps_ids(f)
    assert (await raw(f.env.url, admin_ctx, "DELETE", "/v1/ps/" + "0" * 32))[0] == 404
    assert (await raw(f.env.url, admin_ctx, "DELETE", "/v1/ps/not-an-id"))[0] == 400
    assert (await raw(f.env.url, admin_ctx, "DELETE", f"/v1/ps/{f.mt.component_id}"))[0] == 404  # not a PS
    f.beating.discard(ps1)
    job_id = await f.job("switch", f.ps1, {"old_ps_dead": True, "to_ps_id": f.ps2.component_id})
    await f.until("the new generation", lambda: _generation(f, 2))
    await f.protected(2)
    await f.agent_beat(PS2_PORTS["data"], 2)
    assert (await f.env.admin.wait_job(job_id, timeout_s=20))["state"] == "succeeded"
    assert (await raw(f.env.url, admin_ctx, "PUT", f"/v1/ps/{ps1}/bandwidth", {"bytes_per_s": 1_000_000}))[0] == 200
    assert await drlab(f, "ps", "remove", ps1) == 0
    assert await _ps_ids(f) == {f.ps2.component_id}
    assert (await raw(f.env.url, admin_ctx, "GET", f"/v1/ps/{ps1}/bandwidth"))[0] == 404  # its settings went too
    await f.until("the PS's certificate refused", lambda: _revoked(f, f.ps1))
    assert (await raw(f.env.url, admin_ctx, "DELETE", f"/v1/ps/{ps1}"))[0] == 404  # gone already


@pytest.mark.timeout(60)
async def test_purge_of_a_live_ps_is_refused_and_bad_bodies_change_nothing(fleet: Fleet) -> None:
    f = fleet
    admin_ctx = tls.client_context(f.env.admin_files)
    ps1, ps2 = f.ps1.component_id, f.ps2.component_id
    before = await _jobs(f)
    status, body = await raw(f.env.url, admin_ctx, "POST", f"/v1/ps/{ps1}/purge", {"to_ps_id": ps2})
    assert status == 409 and "still heartbeating" in body["message"], body
    for bad in ({"force": "yes"}, {"to_ps_id": ps1}, {"to_ps_id": "x"}, {"dead_after_s": -1}, {"nope": 1}):
        status, body = await raw(f.env.url, admin_ctx, "POST", f"/v1/ps/{ps1}/purge", bad)
        assert status == 400, (bad, body)
    status, _ = await raw(f.env.url, admin_ctx, "POST", f"/v1/ps/{'0' * 32}/purge", {})
    assert status == 404
    assert await _jobs(f) == before
    assert await _ps_ids(f) == {ps1, ps2}
    assert (await f.disk())["ps_id"] == ps1 and (await f.disk())["generation"] == 1


@pytest.mark.timeout(60)
async def test_purge_of_a_silent_ps_moves_its_disks_under_a_new_generation_and_removes_it(fleet: Fleet) -> None:
    f = fleet
    ps1, ps2 = f.ps1.component_id, f.ps2.component_id
    f.beating.discard(ps1)
    await asyncio.sleep(1.0)
    purge = asyncio.create_task(drlab(f, "--json", "ps", "purge", "ps1", "--to", "ps2", "--dead-after-s", "0.5",
                                      "--wait", "--timeout-s", "30"))
    await f.until("the new generation", lambda: _generation(f, 2))
    assert (await f.disk())["ps_id"] == ps2
    await f.protected(2)
    await f.agent_beat(PS2_PORTS["data"], 2)
    assert await purge == 0
    job_id = next(j["job_id"] for j in (await f.admin.get("/v1/jobs"))["items"] if j["kind"] == "ps-purge")
    job = await f.env.admin.wait_job(job_id, timeout_s=20)
    assert job["state"] == "succeeded", job
    assert await job_steps(f, job_id) == ["plan", "reassign", "regenerate", "fence", "verify", "remove"]
    assert job["result"]["removed"] == ps1 and job["result"]["regenerated"] == [f.disk_id]
    assert await _ps_ids(f) == {ps2}
    await f.until("the PS's certificate refused", lambda: _revoked(f, f.ps1))


@pytest.mark.timeout(60)
async def test_hypervisors_refuse_a_decommission_and_follow_a_purge_to_its_target(site: Site) -> None:
    api = site.env.admin._api
    ps, other, third = await site.ps("ps1"), await site.ps("ps2", {"data": 19444}), await site.ps("ps3")
    await api.post("/v1/accounts", {"name": "vc", "username": "administrator@vsphere", "password": "hv-pw-9f3a-X"})
    await site.env.admin.add_hypervisor("hv1", "127.0.0.1", "vc", ps.component_id, port=8443)
    with pytest.raises(errors.Conflict) as caught:
        await api.request("DELETE", f"/v1/ps/{ps.component_id}")
    assert "hv1" in caught.value.message
    with pytest.raises(errors.Conflict) as caught:  # never heartbeated, serves nothing: the heir must be named
        await api.post(f"/v1/ps/{ps.component_id}/purge", {})
    assert "--to" in caught.value.message
    job_id = str((await api.post(f"/v1/ps/{ps.component_id}/purge", {"to_ps_id": other.component_id}))["job_id"])
    job = await site.env.admin.wait_job(job_id, timeout_s=20)
    assert job["state"] == "succeeded" and [s["name"] for s in job["steps"]] == ["remove"], job
    assert [(h["name"], h["ps_id"]) for h in await site.env.admin.hypervisors()] == [("hv1", other.component_id)]
    assert (await api.request("DELETE", f"/v1/ps/{third.component_id}"))[0] == 200  # nothing assigned: removed
    ids = {c["component_id"] for c in await site.env.admin.components()}
    assert ps.component_id not in ids and third.component_id not in ids and other.component_id in ids
