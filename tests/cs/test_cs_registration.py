"""Registration by passphrase proof against the real CS over real TLS."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from cshelpers import Site, raw

from common import auth, component, errors, tls
from common.http import ApiClient


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def manual_body(env: Any, role: str = "ps", host_id: str = "ps-manual",
                      passphrase: auth.Passphrase | None = None) -> tuple[dict[str, Any], bytes, bytes]:
    """Do the client side of the protocol by hand: (register body, derived key, server nonce)."""
    client = ApiClient(env.url, tls.bootstrap_context())
    try:
        ch = await client.post("/v1/register/challenge", {"role": role, "host_id": host_id})
    finally:
        await client.close()
    key = auth.derive_key(passphrase or env.passphrase, base64.b64decode(ch["salt"]), **ch["kdf"])
    csr = tls.make_csr(tls.new_key(), role, host_id)
    client_nonce, server_nonce = auth.nonce(), base64.b64decode(ch["server_nonce"])
    proof = auth.client_proof(key, server_nonce=server_nonce, client_nonce=client_nonce, role=role,
                              host_id=host_id, csr_pem=csr)
    body = {"challenge_id": ch["challenge_id"], "role": role, "host_id": host_id, "address": "127.0.0.1",
            "ports": {"data": 9443}, "version": "0.1.0", "csr_pem": csr.decode(), "client_nonce": _b64(client_nonce),
            "proof": _b64(proof)}
    return body, key, server_nonce


async def test_register_then_heartbeat_over_mtls(site: Site) -> None:
    ps = await site.enroll("ps", "ps-a", {"data": 19443}, address="127.0.0.1")
    cert = x509.load_pem_x509_certificate(ps.files.cert.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ps.component_id
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "ps"
    assert len(ps.component_id) == 32 and int(ps.component_id, 16) >= 0
    assert ps.files.read_meta()["component_id"] == ps.component_id

    before = await site.env.admin.components()
    assert [c["last_heartbeat"] for c in before if c["component_id"] == ps.component_id] == [None]
    reply = await ps.api.post("/v1/heartbeat", {"metrics": {"cpu_percent": 12.5}})
    assert reply["ok"] is True and reply["time_ns"] > 0
    items = {c["component_id"]: c for c in await site.env.admin.components()}
    row = items[ps.component_id]
    assert (row["role"], row["host_id"], row["address"]) == ("ps", "ps-a", "127.0.0.1")
    assert row["last_heartbeat"] and row["metrics"] == {"cpu_percent": 12.5}
    assert row["registered_at"] <= row["last_heartbeat"]


async def test_wrong_passphrase_is_refused_and_nothing_is_stored(site: Site, tmp_path: Path) -> None:
    files = tls.IdentityFiles(tmp_path / "intruder")
    with pytest.raises(errors.Unauthorized):
        await component.register(site.env.url, auth.Passphrase("not-the-passphrase"), role="agent",
                                 host_id="intruder", address="127.0.0.1", ports={}, files=files)
    assert not files.exists()
    assert await site.env.admin.components() == []


async def test_wrong_proof_burns_the_challenge(site: Site) -> None:
    body, _, _ = await manual_body(site.env)
    good_proof = body["proof"]
    body["proof"] = _b64(bytes(32))
    status, reply = await raw(site.env.url, tls.bootstrap_context(), "POST", "/v1/register", body)
    assert (status, reply["code"]) == (401, "unauthorized")
    body["proof"] = good_proof
    status, reply = await raw(site.env.url, tls.bootstrap_context(), "POST", "/v1/register", body)
    assert (status, reply["code"]) == (401, "unauthorized")
    assert await site.env.admin.components() == []


async def test_replayed_challenge_is_refused(site: Site) -> None:
    body, key, server_nonce = await manual_body(site.env)
    status, reply = await raw(site.env.url, tls.bootstrap_context(), "POST", "/v1/register", body)
    assert status == 201
    expected = auth.server_proof(key, server_nonce=server_nonce, client_nonce=base64.b64decode(body["client_nonce"]),
                                 role="ps", host_id="ps-manual", ca_der=tls.der_of_pem(reply["ca_pem"].encode()),
                                 cert_der=tls.der_of_pem(reply["cert_pem"].encode()))
    assert base64.b64decode(reply["server_proof"]) == expected
    status, again = await raw(site.env.url, tls.bootstrap_context(), "POST", "/v1/register", body)
    assert (status, again["code"]) == (401, "unauthorized")
    assert len(await site.env.admin.components()) == 1


async def test_expired_challenge_is_refused(cs_factory: Any) -> None:
    env = await cs_factory(challenge_ttl_s=0.3)
    body, _, _ = await manual_body(env)
    await asyncio.sleep(0.5)
    status, reply = await raw(env.url, tls.bootstrap_context(), "POST", "/v1/register", body)
    assert (status, reply["code"]) == (401, "unauthorized")
    assert await env.admin.components() == []


async def test_challenge_is_bound_to_role_and_host(site: Site) -> None:
    body, _, _ = await manual_body(site.env)
    body["host_id"] = "someone-else"
    status, reply = await raw(site.env.url, tls.bootstrap_context(), "POST", "/v1/register", body)
    assert (status, reply["code"]) == (401, "unauthorized")


@pytest.mark.parametrize("body", [
    {"role": "admin", "host_id": "x"},
    {"role": "cs", "host_id": "x"},
    {"role": "ps"},
    {"role": "ps", "host_id": ""},
    {"role": "ps", "host_id": "bad host\n"},
    {"role": "ps", "host_id": 7},
])
async def test_bad_challenge_requests_are_400(site: Site, body: dict[str, Any]) -> None:
    status, reply = await raw(site.env.url, tls.bootstrap_context(), "POST", "/v1/register/challenge", body)
    assert (status, reply["code"]) == (400, "bad_request")


@pytest.mark.parametrize("field,value", [
    ("address", "not an address!"), ("ports", {"data": 70000}), ("ports", [1]), ("proof", "***"),
    ("challenge_id", "nope"), ("version", ""), ("client_nonce", 5),
])
async def test_bad_register_requests_are_400_and_store_nothing(site: Site, field: str, value: Any) -> None:
    body, _, _ = await manual_body(site.env)
    body[field] = value
    status, reply = await raw(site.env.url, tls.bootstrap_context(), "POST", "/v1/register", body)
    assert (status, reply["code"]) == (400, "bad_request")
    assert await site.env.admin.components() == []


async def test_garbage_csr_with_a_valid_proof_is_400(site: Site) -> None:
    body, key, server_nonce = await manual_body(site.env)
    csr = b"-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n-----END CERTIFICATE REQUEST-----\n"
    proof = auth.client_proof(key, server_nonce=server_nonce, client_nonce=base64.b64decode(body["client_nonce"]),
                              role="ps", host_id="ps-manual", csr_pem=csr)
    body.update(csr_pem=csr.decode(), proof=_b64(proof))
    status, reply = await raw(site.env.url, tls.bootstrap_context(), "POST", "/v1/register", body)
    assert (status, reply["code"]) == (400, "bad_request")
    assert await site.env.admin.components() == []


async def test_reregistration_keeps_the_id_and_replaces_the_entry(site: Site) -> None:
    first = await site.enroll("mt", "mt-x", {"data": 1000, "control": 1001}, address="127.0.0.1")
    second = await site.enroll("mt", "mt-x", {"data": 2000, "control": 2001}, address="localhost")
    assert second.component_id == first.component_id
    serial = [x509.load_pem_x509_certificate(m.files.cert.read_bytes()).serial_number for m in (first, second)]
    assert serial[0] != serial[1]
    items = [c for c in await site.env.admin.components() if c["host_id"] == "mt-x"]
    assert len(items) == 1
    assert (items[0]["address"], items[0]["ports"]) == ("localhost", {"data": 2000, "control": 2001})
    other = await site.enroll("ps", "mt-x")  # same host id, other role: another component
    assert other.component_id != first.component_id


async def test_ca_is_public_and_matches_the_issuer(site: Site) -> None:
    status, reply = await raw(site.env.url, tls.bootstrap_context(), "GET", "/v1/ca")
    assert status == 200
    assert reply["ca_pem"].encode() == (site.env.data_dir / "ca" / "cert.pem").read_bytes()
    agent = await site.enroll("agent", "m-ca")
    assert agent.files.ca.read_bytes() == reply["ca_pem"].encode()


async def test_reinstalled_machine_replaces_its_entry_and_keeps_its_disks(site: Site) -> None:
    agent, disks = await site.agent("m-reinstalled", {"disk0": 1 << 20, "disk1": 2 << 20})
    # the machine is reinstalled: a new key, the same host id, nothing kept locally
    again = await site.enroll("agent", "m-reinstalled")
    assert again.component_id == agent.component_id
    assert again.files.key.read_bytes() != agent.files.key.read_bytes()
    rows = [c for c in await site.env.admin.components() if c["host_id"] == "m-reinstalled"]
    assert len(rows) == 1 and rows[0]["role"] == "agent"
    # its disks are still its own: reporting them again gives the same ids, nothing new
    reply = await again.api.put("/v1/machines/self/disks", {"disks": [{"name": "disk0", "size_bytes": 1 << 20},
                                                                      {"name": "disk1", "size_bytes": 2 << 20}]})
    assert {d["name"]: d["disk_id"] for d in reply["disks"]} == disks
    mine = [d for d in await site.env.admin.disks() if d.get("machine_id") == agent.component_id]
    assert sorted(d["disk_id"] for d in mine) == sorted(disks.values())
    assert len(await site.env.admin.disks()) == 2
