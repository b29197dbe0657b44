"""Certificates: automatic renewal (components and the CS itself, no restart) and revocation
(refused at the CS at once, at the PS and the MT through their settings), with a real fleet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fleet import Fleet, call, peer_serial, serial_of, start_fleet, wait_until

from common import component, errors, tls
from common.config import ComponentConfig
from common.http import ApiClient
from cs import revocation
from deploy.cli import main as drlab


@pytest.fixture
async def fleet(cs_env: Any, tmp_path: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(cs_env, tmp_path)
    try:
        yield f
    finally:
        await f.stop()


def test_renewal_is_due_below_the_fraction(tmp_path: Path) -> None:
    ca = tls.make_ca()
    key = tls.new_key()
    pem = tls.issue(*ca, tls.make_csr(key, "ps", "h"), component_id="c" * 32, role="ps", hosts=[], validity_s=100)
    start, end = tls.validity(pem)
    assert end - start == pytest.approx(125, abs=1)  # 100 s ahead, backdated by a quarter of it
    assert tls.renew_at(pem, 0.2) == pytest.approx(end - 25, abs=0.01)
    assert tls.seconds_until_renewal(pem, 0.2, now=end - 26) > 0 > tls.seconds_until_renewal(pem, 0.2, now=end - 24)
    tls.check_issued(pem, ca[1], key)
    with pytest.raises(ValueError):
        tls.check_issued(pem, ca[1], tls.new_key())
    with pytest.raises(ValueError):
        tls.check_issued(pem, tls.make_ca()[1], key)


def test_interrupted_replacement_leaves_a_matching_pair(tmp_path: Path) -> None:
    ca = tls.make_ca()
    files = tls.IdentityFiles(tmp_path / "id")
    tls.issue_local(*ca, files, component_id="a" * 32, role="ps", hosts=[], meta={"component_id": "a" * 32})
    old_key = files.key.read_bytes()
    (files.directory / "key.pem.pending").write_bytes(b"half-written")  # crashed before the cert was written
    files.complete_pending()
    assert files.key.read_bytes() == old_key and not (files.directory / "key.pem.pending").exists()
    tls.server_context(files)  # still a matching pair


async def test_components_and_the_cs_renew_without_a_restart(cs_factory: Any, tmp_path: Path) -> None:
    env = await cs_factory(cert_validity_s=6.0, cert_renew_fraction=0.5, cert_check_interval_s=1.0)
    fleet = await start_fleet(env, tmp_path, cert_renew_fraction=0.5, cert_check_interval_s=1.0)
    try:
        ca_pem = fleet.ps_files.ca.read_bytes()
        first = {"ps": fleet.ps_files.cert.read_bytes(), "mt": fleet.mt_files.cert.read_bytes(),
                 "admin": env.admin_files.cert.read_bytes()}
        cs_first = await peer_serial("127.0.0.1", env.service.port, ca_pem)
        ps_id = fleet.ps.component_id
        # renewal is due ~2.25 s after issue (6 s validity backdated 1.5 s: half of 7.5 s remains)
        await wait_until(lambda: fleet.ps_files.cert.read_bytes() != first["ps"], timeout_s=10, what="PS renewal")
        await wait_until(lambda: fleet.mt_files.cert.read_bytes() != first["mt"], timeout_s=10, what="MT renewal")
        assert fleet.ps_files.read_meta()["component_id"] == ps_id
        # the PS serves its current certificate: the one in its files (a renewal may land between a
        # read of the files and a handshake — renewals come every ~3 s here — so look until they agree)
        deadline = time.monotonic() + 10
        while await peer_serial("127.0.0.1", fleet.ps.data_port, ca_pem) != serial_of(fleet.ps_files):
            assert time.monotonic() < deadline, "the PS does not serve the certificate in its files"
            await asyncio.sleep(0.1)
        await wait_until(lambda: env.admin_files.cert.read_bytes() != first["admin"], timeout_s=10,
                         what="admin renewal")
        assert await peer_serial("127.0.0.1", env.service.port, ca_pem) != cs_first  # the CS's own, no restart
        # past the first certificates' expiry: new handshakes and heartbeats keep working
        await asyncio.sleep(max(0.0, tls.validity(first["ps"])[1] - time.time() + 0.5))
        seen = {c["component_id"]: c["last_heartbeat"] for c in await env.admin.components()}
        deadline = time.monotonic() + 10  # heartbeats every 0.3 s (tests/cs/fleet.py)
        while True:
            after = {c["component_id"]: c for c in await env.admin.components()}
            if all(after[cid]["last_heartbeat"] > seen[cid] for cid in (ps_id, fleet.mt.component_id)):
                break
            assert time.monotonic() < deadline, f"no new heartbeat of the PS and the MT: {seen} -> {after}"
            await asyncio.sleep(0.1)
        assert sorted(c["role"] for c in after.values()) == ["agent", "mt", "ps"]  # no duplicate rows
        status, _ = await call(fleet.mt_control_url, tls.client_context(fleet.ps_files), "GET",
                               f"/v1/disks/{fleet.disk_id}/status")
        assert status == 200  # PS -> MT with renewed certificates on both sides
    finally:
        await fleet.stop()


async def test_renew_route_keeps_id_and_refuses_strangers(cs_env: Any, tmp_path: Path) -> None:
    files = tls.IdentityFiles(tmp_path / "agent")
    await component.register(cs_env.url, cs_env.passphrase, role="agent", host_id="m-renew", address="127.0.0.1",
                             ports={}, files=files)
    cfg = ComponentConfig(data_dir=tmp_path, cs_url=cs_env.url)

    async def noop(_doc: dict[str, Any]) -> None:
        return None

    control = component.ControlPlane(cfg, files, on_settings=noop, metrics=dict)
    try:
        before = serial_of(files)
        await control.renew_once()
        assert serial_of(files) != before and files.read_meta()["component_id"] == control.component_id
        await control.heartbeat_once()
    finally:
        await control.stop()
    status, body = await call(cs_env.url, tls.client_context(cs_env.admin_files), "POST", "/v1/certificate/renew",
                              body={"csr_pem": tls.make_csr(tls.new_key(), "admin", "x").decode()})
    assert status == 403 and body["code"] == "forbidden"
    client = ApiClient(cs_env.url, tls.client_context(files), timeout_s=5.0)
    try:
        with pytest.raises(errors.BadRequest):
            await client.post("/v1/certificate/renew", {"csr_pem": "not a CSR"})
    finally:
        await client.close()


async def test_revoked_agent_is_refused_at_the_cs_and_the_ps(fleet: Fleet) -> None:
    env = fleet.env
    assert (await fleet.put_batch(fleet.agent, 1))[0] in (200, 201)  # accepted before
    durable = fleet.ps.registry.progress_of(fleet.disk_id).ps_durable
    serial = serial_of(fleet.agent)
    started = time.monotonic()
    status, reply = await call(env.url, tls.client_context(env.admin_files), "POST",
                               f"/v1/components/{fleet.machine_id}/revoke")
    assert status == 200 and reply["revoked"] == [format(serial, "x")]
    # the CS refuses at once
    status, body = await call(env.url, tls.client_context(fleet.agent), "POST", "/v1/heartbeat", body={"metrics": {}})
    assert (status, body["code"]) == (401, "certificate_revoked")
    status, body = await call(env.url, tls.client_context(fleet.agent), "PUT", "/v1/machines/self/disks",
                              body={"disks": [{"name": "evil", "size_bytes": 4096}]})
    assert (status, body["code"]) == (401, "certificate_revoked")
    assert [d["name"] for d in await env.admin.disks() if d.get("machine_id") == fleet.machine_id] == ["disk0"]
    states = {c["component_id"]: c["state"] for c in await env.admin.components()}
    assert states[fleet.machine_id] == "revoked" and states[fleet.ps.component_id] == "registered"
    # the PS learns it through its settings and refuses the agent's batches; nothing is cached
    await wait_until(lambda: fleet.ps.registry.is_revoked(serial), what="PS learns the revoked serial")
    print(f"revocation reached the PS {1000 * (time.monotonic() - started):.0f} ms after the admin's call")
    status, body = await fleet.put_batch(fleet.agent, 2)
    assert status == 401 and body["code"] == "unauthorized"
    assert fleet.ps.registry.progress_of(fleet.disk_id).ps_durable == durable == 1
    assert not [p for p in (fleet.ps.cfg.data_dir / "cache" / fleet.disk_id).iterdir() if "-000000000002" in p.name]
    # the agent cannot renew its way out
    status, body = await call(env.url, tls.client_context(fleet.agent), "POST", "/v1/certificate/renew",
                              body={"csr_pem": tls.make_csr(tls.new_key(), "agent", "m1").decode()})
    assert (status, body["code"]) == (401, "certificate_revoked")
    # ... but may register again with the passphrase: same id, disks still its own, accepted again
    again = tls.IdentityFiles(fleet.tmp / "agent-again")
    meta = await component.register(env.url, env.passphrase, role="agent", host_id="m1", address="127.0.0.1",
                                    ports={}, files=again)
    assert meta["component_id"] == fleet.machine_id
    status, doc = await call(env.url, tls.client_context(again), "GET", "/v1/settings?version=-1&wait_s=0")
    assert status == 200 and [d["disk_id"] for d in doc["document"]["disks"]] == [fleet.disk_id]
    assert (await fleet.put_batch(again, 2))[0] in (200, 201)


async def test_revoked_ps_is_refused_at_the_cs_and_the_mt(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    env = fleet.env
    ps_ctx = tls.client_context(fleet.ps_files)
    status, before = await call(fleet.mt_control_url, ps_ctx, "GET", f"/v1/disks/{fleet.disk_id}/status")
    assert status == 200
    serial = serial_of(fleet.ps_files)
    argv = ["--cs-url", env.url, "cs", "revoke", fleet.ps.component_id, "--data-dir", str(env.data_dir)]
    assert await asyncio.to_thread(drlab, argv) == 0  # the CLI, with the CS's admin identity
    assert f"revoked 1 certificate(s) of {fleet.ps.component_id}" in capsys.readouterr().out
    status, body = await call(env.url, ps_ctx, "GET", "/v1/settings?version=-1&wait_s=0")
    assert (status, body["code"]) == (401, "certificate_revoked")
    await wait_until(lambda: fleet.mt.registry.is_revoked(serial), what="MT learns the revoked serial")
    status, body = await call(fleet.mt_url, ps_ctx, "PUT", f"/v1/disks/{fleet.disk_id}/batches/1/1", data=b"x" * 64)
    assert status == 401 and body["code"] == "unauthorized"
    status, body = await call(fleet.mt_control_url, tls.client_context(fleet.ps_files), "GET",
                              f"/v1/disks/{fleet.disk_id}/status")
    assert status == 401
    status, after = await call(fleet.mt_control_url, tls.client_context(env.admin_files), "GET",
                               f"/v1/disks/{fleet.disk_id}/status")
    assert status == 200 and after == before


async def test_revoke_needs_an_admin_and_a_known_component(fleet: Fleet) -> None:
    env = fleet.env
    status, body = await call(env.url, tls.client_context(fleet.ps_files), "POST",
                              f"/v1/components/{fleet.machine_id}/revoke")
    assert status == 403
    status, body = await call(env.url, tls.client_context(env.admin_files), "POST", f"/v1/components/{'0' * 32}/revoke")
    assert (status, body["code"]) == (404, "not_found")
    status, body = await call(env.url, tls.client_context(env.admin_files), "POST", "/v1/components/nope/revoke")
    assert (status, body["code"]) == (400, "bad_request")
    assert (await fleet.put_batch(fleet.agent, 1))[0] in (200, 201)  # nothing was revoked
    async with env.service.state.db.read() as session:
        assert await revocation.revoked_serials(session) == []
