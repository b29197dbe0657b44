"""Agent enrollment by single-use token (cs/enrollment.py, cs/registration.py) against the real CS."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Site, raw

from common import auth, component, enroll, errors, tls
from common.http import ApiClient
from cs import accounts, enrollment, registration, revocation
from cs.db.models_access import Challenge, EnrollmentToken
from tests.conftest import stored_bytes


async def issue(env: Any, host_id: str = "m1", ttl_s: float = 60.0, job_id: str | None = None) -> enroll.EnrollToken:
    async with env.service.state.db.write() as session:
        return await enrollment.issue(session, accounts.load_key(env.data_dir), host_id=host_id, ttl_s=ttl_s,
                                      job_id=job_id)


async def row_of(env: Any, token_id: str) -> EnrollmentToken:
    async with env.service.state.db.read() as session:
        row = await session.get(EnrollmentToken, token_id)
    assert row is not None
    return row


async def token_register(env: Any, token: enroll.EnrollToken, *, role: str = "agent", host_id: str = "m1",
                         challenge_host: str | None = None) -> tuple[int, Any]:
    """The client side by hand, with the token's key: (status, body) of POST /v1/register."""
    client = ApiClient(env.url, tls.bootstrap_context())
    try:
        ch = await client.post("/v1/register/challenge", {"role": role, "host_id": challenge_host or host_id,
                                                          "enroll_token_id": token.token_id})
    finally:
        await client.close()
    csr = tls.make_csr(tls.new_key(), role, host_id)
    client_nonce, server_nonce = auth.nonce(), base64.b64decode(ch["server_nonce"])
    proof = auth.client_proof(token.key, server_nonce=server_nonce, client_nonce=client_nonce, role=role,
                              host_id=host_id, csr_pem=csr)
    body = {"challenge_id": ch["challenge_id"], "role": role, "host_id": host_id, "address": "127.0.0.1",
            "ports": {}, "version": "0.1.0", "csr_pem": csr.decode(),
            "client_nonce": base64.b64encode(client_nonce).decode(), "proof": base64.b64encode(proof).decode()}
    return await raw(env.url, tls.bootstrap_context(), "POST", "/v1/register", body)


async def test_an_agent_enrolls_with_a_token_once(site: Site, tmp_path: Path) -> None:
    token = await issue(site.env, "m1", job_id="ab" * 16)
    files = tls.IdentityFiles(tmp_path / "agent-id")
    meta = await component.register(site.env.url, token, role="agent", host_id="m1", address="127.0.0.1",
                                    ports={}, files=files)
    assert files.exists() and files.read_meta()["component_id"] == meta["component_id"]
    api = ApiClient(site.env.url, tls.client_context(files), timeout_s=15.0)
    try:
        assert (await api.post("/v1/heartbeat", {"metrics": {}}))["ok"] is True
    finally:
        await api.close()
    row = await row_of(site.env, token.token_id)
    assert row.used and (row.host_id, row.role, row.job_id) == ("m1", "agent", "ab" * 16)
    async with site.env.service.state.db.read() as session:  # recorded under the current passphrase epoch
        serial = int(tls.serial_hex(files.cert.read_bytes()), 16)
        assert await revocation.epoch_of(session, serial) == await revocation.current_epoch(session)
        challenges = (await session.execute(Challenge.__table__.select())).all()
    assert [c.enroll_token_id for c in challenges] == [token.token_id]

    with pytest.raises(errors.Unauthorized):  # single use
        await component.register(site.env.url, token, role="agent", host_id="m1", address="127.0.0.1", ports={},
                                 files=tls.IdentityFiles(tmp_path / "again"))
    status, reply = await token_register(site.env, token)
    assert (status, reply["code"]) == (401, "unauthorized") and "used" in reply["message"]
    assert [c["host_id"] for c in await site.env.admin.components()] == ["m1"]


async def test_an_expired_token_is_refused(site: Site) -> None:
    token = await issue(site.env, "m1", ttl_s=0.05)
    await asyncio.sleep(0.1)
    status, reply = await token_register(site.env, token)
    assert (status, reply["code"]) == (401, "unauthorized") and "expired" in reply["message"]
    assert await site.env.admin.components() == []


async def test_an_unknown_token_is_refused(site: Site) -> None:
    status, reply = await token_register(site.env, enroll.new())
    assert (status, reply["code"]) == (401, "unauthorized")
    assert await site.env.admin.components() == []


async def test_a_token_for_another_host_is_refused_and_burnt(site: Site) -> None:
    token = await issue(site.env, "m1")
    status, reply = await token_register(site.env, token, host_id="m2")
    assert (status, reply["code"]) == (401, "unauthorized") and "not for agent m2" in reply["message"]
    assert (await row_of(site.env, token.token_id)).used
    status, _ = await token_register(site.env, token, host_id="m1")
    assert status == 401
    assert await site.env.admin.components() == []


async def test_a_tampered_secret_is_refused_and_burns_the_token(site: Site) -> None:
    token = await issue(site.env, "m1")
    forged = dataclasses.replace(token, secret=bytes(b ^ 1 for b in token.secret))
    status, reply = await token_register(site.env, forged)
    assert (status, reply["code"]) == (401, "unauthorized") and "proof does not match" in reply["message"]
    assert (await row_of(site.env, token.token_id)).used
    status, _ = await token_register(site.env, token)  # the real secret now comes too late
    assert status == 401
    assert await site.env.admin.components() == []


async def test_the_passphrase_key_does_not_open_a_token_challenge(site: Site) -> None:
    token = await issue(site.env, "m1")
    client = ApiClient(site.env.url, tls.bootstrap_context())
    try:
        ch = await client.post("/v1/register/challenge", {"role": "agent", "host_id": "m1",
                                                          "enroll_token_id": token.token_id})
    finally:
        await client.close()
    key = auth.derive_key(site.env.passphrase, base64.b64decode(ch["salt"]), **ch["kdf"])
    csr = tls.make_csr(tls.new_key(), "agent", "m1")
    nonce = auth.nonce()
    proof = auth.client_proof(key, server_nonce=base64.b64decode(ch["server_nonce"]), client_nonce=nonce,
                              role="agent", host_id="m1", csr_pem=csr)
    body = {"challenge_id": ch["challenge_id"], "role": "agent", "host_id": "m1", "address": "127.0.0.1",
            "ports": {}, "version": "0.1.0", "csr_pem": csr.decode(), "client_nonce": base64.b64encode(nonce).decode(),
            "proof": base64.b64encode(proof).decode()}
    status, _ = await raw(site.env.url, tls.bootstrap_context(), "POST", "/v1/register", body)
    assert status == 401
    assert await site.env.admin.components() == []


@pytest.mark.parametrize("role", ["ps", "mt"])
async def test_only_an_agent_enrolls_by_token(site: Site, role: str) -> None:
    token = await issue(site.env, "m1")
    status, reply = await raw(site.env.url, tls.bootstrap_context(), "POST", "/v1/register/challenge",
                              {"role": role, "host_id": "m1", "enroll_token_id": token.token_id})
    assert (status, reply["code"]) == (401, "unauthorized") and "only an agent" in reply["message"]
    assert not (await row_of(site.env, token.token_id)).used  # refused before the token was looked at
    assert await site.env.admin.components() == []


@pytest.mark.parametrize("bad", ["nothex", "AB" * 16, 12, ""])
async def test_a_malformed_token_id_is_a_bad_request(site: Site, bad: Any) -> None:
    status, reply = await raw(site.env.url, tls.bootstrap_context(), "POST", "/v1/register/challenge",
                              {"role": "agent", "host_id": "m1", "enroll_token_id": bad})
    assert (status, reply["code"]) == (400, "bad_request") and "enroll_token_id" in reply["message"]
    async with site.env.service.state.db.read() as session:
        assert (await session.execute(Challenge.__table__.select())).all() == []


async def test_the_token_key_is_never_stored_in_clear(site: Site) -> None:
    token = await issue(site.env, "m1")
    row = await row_of(site.env, token.token_id)
    key_b64 = base64.b64encode(token.key).decode()
    assert row.key_enc not in (key_b64, token.key.hex(), token.text)
    assert accounts.load_key(site.env.data_dir).open(token.token_id, row.key_enc) == key_b64
    assert "key_enc" not in repr(row) and key_b64 not in repr(row)
    stored = await stored_bytes(site.env)
    for secret in (key_b64.encode(), token.key, token.key.hex().encode(), token.text.split(".")[2].encode(),
                   token.secret):
        assert secret not in stored


async def test_issue_refuses_a_lifetime_not_above_zero(site: Site) -> None:
    with pytest.raises(errors.BadRequest):
        await issue(site.env, "m1", ttl_s=0)
    assert registration.parse_challenge_token({}, "ps") is None
