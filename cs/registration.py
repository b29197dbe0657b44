"""Component registration by passphrase proof (see common.auth for the proofs).

A challenge is single-use and expires after ``challenge_ttl_s``; it is consumed before the
proof is checked, so a wrong proof burns it. Nothing else is stored unless the proof is right.
Re-registering the same (role, host_id) keeps the component id and replaces the certificate,
address, ports and version.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from sqlalchemy import delete

from common import auth, errors, tls
from common import logging as dlog
from cs import validate
from cs.db import meta, repo
from cs.db.models import Challenge, Component
from cs.state import CSState

log = dlog.get("drlab.cs.registration")

REGISTRABLE_ROLES = ("ps", "mt", "agent")
MAX_CSR_CHARS = 8192


@dataclass(frozen=True)
class RegisterRequest:
    challenge_id: str
    role: str
    host_id: str
    address: str
    ports: dict[str, int]
    version: str
    csr_pem: bytes
    client_nonce: bytes
    proof: bytes = field(repr=False)


def parse_challenge(body: dict[str, Any]) -> tuple[str, str]:
    return (validate.choice(body, "role", REGISTRABLE_ROLES),
            validate.string(body, "host_id", pattern=validate.NAME))


def parse_register(body: dict[str, Any]) -> RegisterRequest:
    role, host_id = parse_challenge(body)
    return RegisterRequest(
        challenge_id=validate.hex_id(body.get("challenge_id"), "challenge_id"), role=role, host_id=host_id,
        address=validate.address(body), ports=validate.ports(body),
        version=validate.string(body, "version", max_len=64), csr_pem=validate.string(
            body, "csr_pem", max_len=MAX_CSR_CHARS).encode(),
        client_nonce=validate.b64(body, "client_nonce", max_bytes=64), proof=validate.b64(body, "proof", max_bytes=64))


async def new_challenge(state: CSState, role: str, host_id: str) -> dict[str, Any]:
    now = time.time_ns()
    ttl_ns = int(state.cfg.challenge_ttl_s * 1e9)
    challenge = Challenge(challenge_id=uuid.uuid4().hex, server_nonce=base64.b64encode(auth.nonce()).decode(),
                          role=role, host_id=host_id, used=False,
                          expires_at=now + ttl_ns)
    async with state.db.write() as session:
        await session.execute(delete(Challenge).where(Challenge.expires_at < now - ttl_ns))
        session.add(challenge)
        params = await meta.load_auth(session)
    log.info("challenge_issued", role=role, host_id=host_id, challenge_id=challenge.challenge_id)
    return {"challenge_id": challenge.challenge_id, "server_nonce": challenge.server_nonce,
            "salt": base64.b64encode(params.salt).decode(), "kdf": params.kdf}


async def _consume(state: CSState, req: RegisterRequest) -> tuple[bytes, meta.AuthParams]:
    """Mark the challenge used (whatever happens next); its server nonce if it was valid."""
    async with state.db.write() as session:
        ch = await session.get(Challenge, req.challenge_id)
        valid = (ch is not None and not ch.used and ch.expires_at > time.time_ns()
                 and ch.role == req.role and ch.host_id == req.host_id)
        if ch is not None:
            ch.used = True
        params = await meta.load_auth(session)
    if ch is None or not valid:
        raise errors.Unauthorized("unknown, expired or already used challenge")
    return base64.b64decode(ch.server_nonce), params


def _check_proof(key: bytes, server_nonce: bytes, req: RegisterRequest) -> None:
    expected = auth.client_proof(key, server_nonce=server_nonce, client_nonce=req.client_nonce, role=req.role,
                                 host_id=req.host_id, csr_pem=req.csr_pem)
    if not auth.equal(expected, req.proof):
        raise errors.Unauthorized("registration proof does not match the passphrase")


async def register(state: CSState, req: RegisterRequest) -> dict[str, Any]:
    server_nonce, params = await _consume(state, req)
    _check_proof(params.key, server_nonce, req)
    async with state.db.read() as session:
        known = await repo.component_by_host(session, req.role, req.host_id)
    component_id = known.component_id if known is not None else uuid.uuid4().hex
    cert_pem = await asyncio.to_thread(state.ca.issue, req.csr_pem, component_id=component_id, role=req.role,
                                       hosts=[req.address], days=state.cfg.cert_validity_days)
    serial = format(x509.load_pem_x509_certificate(cert_pem).serial_number, "x")
    async with state.change() as session:
        await _upsert(session, req, component_id, serial)
    proof = auth.server_proof(params.key, server_nonce=server_nonce, client_nonce=req.client_nonce, role=req.role,
                              host_id=req.host_id, ca_der=tls.der_of_pem(state.ca.cert_pem),
                              cert_der=tls.der_of_pem(cert_pem))
    log.info("registered", role=req.role, host_id=req.host_id, component_id=component_id, address=req.address,
             ports=req.ports, again=known is not None)
    return {"component_id": component_id, "cert_pem": cert_pem.decode(), "ca_pem": state.ca.cert_pem.decode(),
            "server_proof": base64.b64encode(proof).decode()}


async def _upsert(session: Any, req: RegisterRequest, component_id: str, serial: str) -> None:
    row = await repo.component_by_host(session, req.role, req.host_id)
    if row is not None and row.component_id != component_id:
        raise errors.Conflict(f"{req.role} {req.host_id} registered concurrently; register again")
    if row is None:
        row = Component(component_id=component_id, role=req.role, host_id=req.host_id, last_heartbeat=None,
                        metrics={})
        session.add(row)
    row.address, row.ports, row.version = req.address, req.ports, req.version
    row.cert_serial, row.registered_at = serial, time.time_ns()
