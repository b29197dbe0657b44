"""Component registration by passphrase proof (see common.auth for the proofs).

A challenge is single-use and expires after ``challenge_ttl_s``; it is consumed before the
proof is checked, so a wrong proof burns it. Nothing else is stored unless the proof is right.
Re-registering the same (role, host_id) keeps the component id and replaces the certificate,
address, ports and version: a machine reinstalled with a new key but the same host id gets its
old entry (and so its disks) back, never a second one. This is also how a revoked component
comes back, and how every component moves to a new passphrase after a rotation.

An agent may instead enroll with a single-use token (cs/enrollment.py): its challenge names
``enroll_token_id``, and the proofs of that registration use the token's key in place of the
passphrase-derived key. The certificate is recorded under the current passphrase epoch.

Renewal (:func:`renew`) needs no passphrase: a registered component sends a new CSR under its
current, unrevoked certificate and gets a certificate with the same id, role and passphrase
epoch. :func:`rotate_passphrase` replaces the derived key and starts a new epoch (see
cs/revocation.py for what that does to certificates of older epochs).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete

from common import auth, errors, tls
from common import logging as dlog
from cs import accounts, enrollment, revocation, upgrade, validate
from cs.db import meta, repo
from cs.db.engine import Database
from cs.db.models import Component
from cs.db.models_access import Challenge
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


def parse_challenge_token(body: dict[str, Any], role: str) -> str | None:
    """The optional ``enroll_token_id`` of a challenge request; only an agent enrolls by token (401)."""
    if body.get("enroll_token_id") is None:
        return None
    token_id = validate.hex_id(body.get("enroll_token_id"), "enroll_token_id")
    if role != enrollment.ROLE:
        raise errors.Unauthorized(f"only an {enrollment.ROLE} may enroll with a token, not a {role}")
    return token_id


def parse_register(body: dict[str, Any]) -> RegisterRequest:
    role, host_id = parse_challenge(body)
    return RegisterRequest(
        challenge_id=validate.hex_id(body.get("challenge_id"), "challenge_id"), role=role, host_id=host_id,
        address=validate.address(body), ports=validate.ports(body),
        version=validate.string(body, "version", max_len=64), csr_pem=validate.string(
            body, "csr_pem", max_len=MAX_CSR_CHARS).encode(),
        client_nonce=validate.b64(body, "client_nonce", max_bytes=64), proof=validate.b64(body, "proof", max_bytes=64))


async def new_challenge(state: CSState, role: str, host_id: str,
                        enroll_token_id: str | None = None) -> dict[str, Any]:
    now = time.time_ns()
    ttl_ns = int(state.cfg.challenge_ttl_s * 1e9)
    challenge = Challenge(challenge_id=uuid.uuid4().hex, server_nonce=base64.b64encode(auth.nonce()).decode(),
                          role=role, host_id=host_id, used=False,
                          expires_at=now + ttl_ns, enroll_token_id=enroll_token_id)
    async with state.db.write() as session:
        await session.execute(delete(Challenge).where(Challenge.expires_at < now - ttl_ns))
        session.add(challenge)
        params = await meta.load_auth(session, _store_key(state))
    log.info("challenge_issued", role=role, host_id=host_id, challenge_id=challenge.challenge_id,
             enroll_token_id=enroll_token_id)
    return {"challenge_id": challenge.challenge_id, "server_nonce": challenge.server_nonce,
            "salt": base64.b64encode(params.salt).decode(), "kdf": params.kdf}


async def _consume(state: CSState, req: RegisterRequest) -> tuple[bytes, bytes]:
    """Mark the challenge, and its enrollment token if any, used (whatever happens next);
    (server nonce, proof key) if both were valid. The key is the token's or the passphrase's."""
    token_refused: errors.Unauthorized | None = None
    async with state.db.write() as session:
        ch = await session.get(Challenge, req.challenge_id)
        valid = (ch is not None and not ch.used and ch.expires_at > time.time_ns()
                 and ch.role == req.role and ch.host_id == req.host_id)
        if ch is not None:
            ch.used = True
        key = (await meta.load_auth(session, _store_key(state))).key
        if ch is not None and valid and ch.enroll_token_id is not None:
            try:
                key = await enrollment.consume(session, _store_key(state), ch.enroll_token_id, role=req.role,
                                               host_id=req.host_id)
            except errors.Unauthorized as exc:  # committed all the same: the token is burnt
                token_refused = exc
    if ch is None or not valid:
        raise errors.Unauthorized("unknown, expired or already used challenge")
    if token_refused is not None:
        raise token_refused
    return base64.b64decode(ch.server_nonce), key


def _store_key(state: CSState) -> accounts.StoreKey:
    """The account store's key (cs/accounts.py), which seals enrollment token keys."""
    return accounts.load_key(state.cfg.data_dir)


def _check_proof(key: bytes, server_nonce: bytes, req: RegisterRequest) -> None:
    expected = auth.client_proof(key, server_nonce=server_nonce, client_nonce=req.client_nonce, role=req.role,
                                 host_id=req.host_id, csr_pem=req.csr_pem)
    if not auth.equal(expected, req.proof):
        raise errors.Unauthorized("registration proof does not match the passphrase or enrollment token")


async def register(state: CSState, req: RegisterRequest) -> dict[str, Any]:
    upgrade.check(req.role, req.version)  # a component newer than this CS: refused before anything is stored
    server_nonce, key = await _consume(state, req)
    _check_proof(key, server_nonce, req)
    async with state.db.read() as session:
        known = await repo.component_by_host(session, req.role, req.host_id)
    component_id = known.component_id if known is not None else uuid.uuid4().hex
    cert_pem = await asyncio.to_thread(state.ca.issue, req.csr_pem, component_id=component_id, role=req.role,
                                       hosts=[req.address], validity_s=state.cfg.cert_validity())
    async with state.change() as session:
        await _upsert(session, req, component_id, tls.serial_hex(cert_pem))
        await _record(session, cert_pem, component_id, await revocation.current_epoch(session))
        if req.role in upgrade.ROLES:
            await upgrade.refresh(session)
    proof = auth.server_proof(key, server_nonce=server_nonce, client_nonce=req.client_nonce, role=req.role,
                              host_id=req.host_id, ca_der=tls.der_of_pem(state.ca.cert_pem),
                              cert_der=tls.der_of_pem(cert_pem))
    log.info("registered", role=req.role, host_id=req.host_id, component_id=component_id, address=req.address,
             ports=req.ports, again=known is not None)
    return {"component_id": component_id, "cert_pem": cert_pem.decode(), "ca_pem": state.ca.cert_pem.decode(),
            "server_proof": base64.b64encode(proof).decode()}


async def _record(session: Any, cert_pem: bytes, component_id: str, epoch: int) -> None:
    expires_ns = int(tls.validity(cert_pem)[1] * 1e9)
    await revocation.record(session, serial=tls.serial_hex(cert_pem), component_id=component_id,
                            expires_ns=expires_ns, epoch=epoch)


def parse_renew(body: dict[str, Any]) -> bytes:
    return validate.string(body, "csr_pem", max_len=MAX_CSR_CHARS).encode()


def parse_renew_version(body: dict[str, Any]) -> str | None:
    """The optional ``version`` a renewing component reports (what it runs now)."""
    return None if body.get("version") is None else validate.string(body, "version", max_len=64)


async def renew(state: CSState, ident: tls.Identity, csr_pem: bytes, version: str | None = None) -> dict[str, Any]:
    """A new certificate for a registered component, same id, role and passphrase epoch; a
    ``version`` newer than this CS is refused (cs/upgrade.py), else it is recorded."""
    if version is not None:
        upgrade.check(ident.role, version)
    async with state.db.read() as session:
        comp = await session.get(Component, ident.component_id)
        epoch = await revocation.epoch_of(session, ident.serial)
    if comp is None or comp.role != ident.role:
        raise errors.Unauthorized(f"component {ident.component_id} is not registered here")
    cert_pem = await asyncio.to_thread(state.ca.issue, csr_pem, component_id=comp.component_id, role=comp.role,
                                       hosts=[comp.address], validity_s=state.cfg.cert_validity())
    serial = tls.serial_hex(cert_pem)
    async with state.db.write() as session:
        row = await session.get(Component, comp.component_id)
        if row is None:
            raise errors.Unauthorized(f"component {comp.component_id} is not registered here")
        row.cert_serial = serial
        await _record(session, cert_pem, comp.component_id, epoch)
        if version is not None and version != row.version:
            row.version = version
            if row.role in upgrade.ROLES:
                await upgrade.refresh(session)
    log.info("certificate_renewed", role=comp.role, component_id=comp.component_id, serial=serial)
    return {"component_id": comp.component_id, "cert_pem": cert_pem.decode(), "ca_pem": state.ca.cert_pem.decode()}


def derive_params(passphrase: auth.Passphrase) -> meta.AuthParams:
    """A fresh salt and the scrypt key of ``passphrase`` (CPU-heavy: run it in a thread)."""
    salt = os.urandom(16)
    kdf = {"n": auth.KDF_N, "r": auth.KDF_R, "p": auth.KDF_P}
    return meta.AuthParams(key=auth.derive_key(passphrase, salt, **kdf), salt=salt, kdf=kdf)


async def rotate_passphrase(db: Database, sealer: meta.Sealer) -> tuple[auth.Passphrase, int]:
    """A new passphrase and key; registrations with the old one stop working and components
    registered under it must re-register. ``sealer``: the account store's key, which seals the
    derived key at rest. Returns (passphrase, new epoch)."""
    passphrase = auth.new_passphrase()
    params = await asyncio.to_thread(derive_params, passphrase)
    async with db.write() as session:
        await meta.load_auth(session, sealer)  # refuses an uninitialised database
        epoch = await revocation.current_epoch(session) + 1
        await meta.store_auth(session, params, sealer)
        await meta.put(session, revocation.PASSPHRASE_EPOCH, str(epoch))
        await session.execute(delete(Challenge))  # challenges handed out under the old salt
        await meta.bump_version(session)
    log.info("passphrase_rotated", epoch=epoch)
    return passphrase, epoch


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
