"""A simulated fleet: many components registered through the CS's real registration.

Each member goes through ``/v1/register/challenge`` and ``/v1/register`` with its own key, CSR,
nonces and passphrase proof, exactly as :func:`common.component.register` does, except that the
scrypt key is derived once for the whole fleet (every challenge carries the same salt), so 500
registrations take seconds instead of minutes. The CS's proof is checked for every member.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import auth, errors, tls
from common.http import ApiClient

ROLES = ("agent", "ps", "mt")
REGISTER_CONCURRENCY = 16


@dataclass(frozen=True)
class Member:
    role: str
    host_id: str
    component_id: str
    files: tls.IdentityFiles

    def ssl_context(self) -> ssl.SSLContext:
        return tls.client_context(self.files)


def role_mix(n: int) -> list[str]:
    """``n`` roles: one PS and one MT per 25 components (at least one each), agents for the rest."""
    if n < 3:
        return list(ROLES[:n])
    servers = max(1, n // 25)
    return ["ps"] * servers + ["mt"] * servers + ["agent"] * (n - 2 * servers)


def metrics_for(role: str, index: int) -> dict[str, Any]:
    """Heartbeat metrics shaped like the real components' (see ps/mt/agent ``metrics()``)."""
    if role == "ps":
        disk = {"backlog_batches": 0, "backlog_bytes": 0, "ps_durable": 41, "mt_received": 41, "mt_applied": 40,
                "uploaded_bytes": 1 << 20, "uploaded_batches": 41, "throttle": {"active": False}}
        return {"cache_used_bytes": 4096, "cache_max_bytes": 1 << 30, "cache_free_pct": 80.0,
                "throttle": {"active": False, "free_pct": 80.0, "threshold_pct": 20.0, "throttled_disks": []},
                "uploaded_bytes": 1 << 20, "disks": {f"{index:08x}{d:024x}": dict(disk) for d in range(4)}}
    if role == "mt":
        return {"disks": {f"{index:08x}{d:024x}": {"received": 41, "applied": 40} for d in range(4)},
                "staging_bytes": 0}
    return {"disks": {"disk0": {"state": "protected", "percent": 100.0, "next_seq": 42, "acked_seq": 41,
                                "unacked_bytes": 0}}, "backlog_bytes": 0, "backlog_waits": 0}


async def register_fleet(cs_url: str, passphrase: auth.Passphrase, roles: list[str], root: Path) -> list[Member]:
    """Register one component per role in ``roles``; identity files go under ``root``."""
    client = ApiClient(cs_url, tls.bootstrap_context(), timeout_s=60.0, limit=REGISTER_CONCURRENCY)
    keys: dict[bytes, bytes] = {}
    gate = asyncio.Semaphore(REGISTER_CONCURRENCY)

    async def one(i: int, role: str) -> Member:
        async with gate:
            return await _register(client, passphrase, keys, role, f"sim-{role}-{i:05d}", root / f"c{i:05d}")

    try:
        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(roles))))
    finally:
        await client.close()


async def _key(keys: dict[bytes, bytes], passphrase: auth.Passphrase, salt: bytes, kdf: dict[str, Any]) -> bytes:
    if salt not in keys:
        keys[salt] = await asyncio.to_thread(auth.derive_key, passphrase, salt, int(kdf.get("n", auth.KDF_N)),
                                             int(kdf.get("r", auth.KDF_R)), int(kdf.get("p", auth.KDF_P)))
    return keys[salt]


async def _register(client: ApiClient, passphrase: auth.Passphrase, keys: dict[bytes, bytes], role: str,
                    host_id: str, directory: Path) -> Member:
    ch = await client.post("/v1/register/challenge", {"role": role, "host_id": host_id})
    salt, server_nonce = base64.b64decode(ch["salt"]), base64.b64decode(ch["server_nonce"])
    key = await _key(keys, passphrase, salt, ch.get("kdf", {}))
    private = tls.new_key()
    csr = tls.make_csr(private, role, host_id)
    client_nonce = auth.nonce()
    proof = auth.client_proof(key, server_nonce=server_nonce, client_nonce=client_nonce, role=role,
                              host_id=host_id, csr_pem=csr)
    reply = await client.post("/v1/register", {
        "challenge_id": ch["challenge_id"], "role": role, "host_id": host_id, "address": "127.0.0.1",
        "ports": {}, "version": "0.1.0", "csr_pem": csr.decode(),
        "client_nonce": base64.b64encode(client_nonce).decode(), "proof": base64.b64encode(proof).decode()})
    ca_pem, cert_pem = reply["ca_pem"].encode(), reply["cert_pem"].encode()
    expected = auth.server_proof(key, server_nonce=server_nonce, client_nonce=client_nonce, role=role,
                                 host_id=host_id, ca_der=tls.der_of_pem(ca_pem), cert_der=tls.der_of_pem(cert_pem))
    if not auth.equal(expected, base64.b64decode(reply["server_proof"])):
        raise errors.Unauthorized("the configuration server did not prove knowledge of the passphrase")
    files = tls.IdentityFiles(directory)
    _write_plain(files, tls.key_pem(private), cert_pem, ca_pem,
                 {"component_id": reply["component_id"], "role": role, "host_id": host_id})
    return Member(role, host_id, str(reply["component_id"]), files)


def _write_plain(files: tls.IdentityFiles, key_pem: bytes, cert_pem: bytes, ca_pem: bytes,
                 meta: dict[str, Any]) -> None:
    """Throwaway identities: written without the fsyncs of ``IdentityFiles.write`` (key still 0600)."""
    files.directory.mkdir(parents=True, exist_ok=True)
    files.key.touch(mode=0o600)
    files.key.write_bytes(key_pem)
    files.cert.write_bytes(cert_pem)
    files.ca.write_bytes(ca_pem)
    files.meta.write_text(json.dumps(meta))
