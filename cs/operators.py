"""Operators: dashboard logins with scrypt-hashed passwords, their sessions, and the brake on guessing.

- An operator has a name, a role (``admin`` may do everything, ``reader`` may only read) and a
  password kept as scrypt(password, salt) with its own random salt and the scrypt parameters
  stored beside it (so the defaults can grow without invalidating old hashes).
- ``login`` answers a random token; only its SHA-256 is stored, with an expiry. The token
  authenticates as a bearer token or a cookie (common/http.py). Changing an operator's password,
  role or disabled flag, or removing it, ends its sessions.
- A failed login says the same whether the name exists or not (and costs the same scrypt), and
  :class:`FailureLimiter` refuses an address that failed too often (429) until it cools down.
  The limiter is per process: several CS processes each hold their own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from common import errors
from common import logging as dlog
from common.tls import Identity
from cs.db.models_access import Operator, OperatorSession
from cs.state import CSState

log = dlog.get("drlab.cs.operators")

ROLES = ("admin", "reader")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
KDF: dict[str, Any] = {"alg": "scrypt", "n": 2**15, "r": 8, "p": 1, "dklen": 32}
SALT_BYTES = 16
MAX_KDF_N = 2**20
LOGIN_FAILED = "unknown operator or wrong password"


class TooManyAttempts(errors.DrlabError):
    code, status, retriable = "too_many_attempts", 429, True


# ------------------------------------------------------------------ passwords (pure)


@dataclass(frozen=True)
class PasswordHash:
    hash_b64: str
    salt_b64: str
    kdf: dict[str, Any]

    def __repr__(self) -> str:
        return f"PasswordHash({self.kdf.get('alg')})"


def _scrypt(password: str, salt: bytes, kdf: dict[str, Any]) -> bytes:
    n, r, p, dklen = int(kdf["n"]), int(kdf["r"]), int(kdf["p"]), int(kdf["dklen"])
    if kdf.get("alg") != "scrypt" or not 2 <= n <= MAX_KDF_N or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise errors.ConfigError("unsupported password hash parameters")
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=256 * 1024 * 1024)


def hash_password(password: str, kdf: dict[str, Any] | None = None) -> PasswordHash:
    params = dict(kdf or KDF)
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, params)
    return PasswordHash(base64.b64encode(digest).decode(), base64.b64encode(salt).decode(), params)


def check_password(password: str, stored: PasswordHash) -> bool:
    digest = _scrypt(password, base64.b64decode(stored.salt_b64), stored.kdf)
    return hmac.compare_digest(digest, base64.b64decode(stored.hash_b64))


_DUMMY = PasswordHash(base64.b64encode(bytes(32)).decode(), base64.b64encode(bytes(SALT_BYTES)).decode(), KDF)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ------------------------------------------------------------------ the brake (pure)


class FailureLimiter:
    """Per client address, a leaky bucket of failed logins: ``burst`` failures, then one more per
    ``interval_s``. ``retry_after(addr)`` is 0 while the address may try, else seconds to wait.
    At most ``max_addresses`` are tracked (the longest-idle are forgotten first)."""

    def __init__(self, burst: int, interval_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = 10_000) -> None:
        self.burst, self.interval_s, self._clock, self._max = burst, interval_s, clock, max_addresses
        self._level: OrderedDict[str, tuple[float, float]] = OrderedDict()  # addr -> (level, at)

    def _now_level(self, addr: str) -> float:
        level, at = self._level.get(addr, (0.0, self._clock()))
        return max(0.0, level - (self._clock() - at) / self.interval_s) if self.interval_s > 0 else 0.0

    def retry_after(self, addr: str) -> float:
        over = self._now_level(addr) + 1 - self.burst
        return over * self.interval_s if over > 0 else 0.0

    def failed(self, addr: str) -> None:
        self._level[addr] = (self._now_level(addr) + 1, self._clock())
        self._level.move_to_end(addr)
        while len(self._level) > self._max:
            self._level.popitem(last=False)

    def succeeded(self, addr: str) -> None:
        self._level.pop(addr, None)


# ------------------------------------------------------------------ validation


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise errors.BadRequest("an operator name is 1-64 characters of [A-Za-z0-9_.@-], starting alphanumeric")
    return name


def check_role(role: Any) -> str:
    if role not in ROLES:
        raise errors.BadRequest(f"role must be one of {', '.join(ROLES)}")
    return str(role)


def check_password_text(password: Any) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise errors.BadRequest(f"a password is a string of {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def view(op: Operator) -> dict[str, Any]:
    return {"name": op.name, "role": op.role, "disabled": op.disabled, "created_ns": op.created_ns,
            "updated_ns": op.updated_ns, "kdf": op.pw_kdf}


# ------------------------------------------------------------------ the store


async def add(state: CSState, name: str, role: str, stored: PasswordHash) -> dict[str, Any]:
    now = time.time_ns()
    async with state.db.write() as session:
        if await session.get(Operator, name) is not None:
            raise errors.Conflict(f"operator {name} exists")
        op = Operator(name=name, role=role, pw_hash_b64=stored.hash_b64, pw_salt_b64=stored.salt_b64,
                      pw_kdf=stored.kdf, created_ns=now, updated_ns=now, disabled=False)
        session.add(op)
    log.info("operator_added", name=name, role=role)
    return view(op)


async def update(state: CSState, name: str, *, role: str | None = None, disabled: bool | None = None,
                 stored: PasswordHash | None = None) -> dict[str, Any]:
    """Change role, disabled flag or password; ends the operator's sessions."""
    async with state.db.write() as session:
        op = await session.get(Operator, name, with_for_update=True)
        if op is None:
            raise errors.NotFound(f"no operator {name}")
        if role is not None:
            op.role = role
        if disabled is not None:
            op.disabled = disabled
        if stored is not None:
            op.pw_hash_b64, op.pw_salt_b64, op.pw_kdf = stored.hash_b64, stored.salt_b64, stored.kdf
        op.updated_ns = time.time_ns()
        await session.execute(delete(OperatorSession).where(OperatorSession.operator == name))
    log.info("operator_changed", name=name, role=op.role, disabled=op.disabled, password=stored is not None)
    return view(op)


async def remove(state: CSState, name: str) -> None:
    async with state.db.write() as session:
        op = await session.get(Operator, name, with_for_update=True)
        if op is None:
            raise errors.NotFound(f"no operator {name}")
        await session.delete(op)
        await session.execute(delete(OperatorSession).where(OperatorSession.operator == name))
    log.info("operator_removed", name=name)


async def stored_hash(state: CSState, name: str) -> tuple[Operator | None, PasswordHash]:
    """The operator (None if unknown or disabled) and the hash to check against (a dummy if None)."""
    async with state.db.read() as session:
        op = await session.get(Operator, name)
    if op is None or op.disabled:
        return None, _DUMMY
    return op, PasswordHash(op.pw_hash_b64, op.pw_salt_b64, dict(op.pw_kdf))


async def open_session(state: CSState, op: Operator) -> tuple[str, int]:
    """A new session for ``op``: (token, expires_ns). Expired sessions are swept on the way."""
    token = secrets.token_urlsafe(32)
    now = time.time_ns()
    expires = now + int(state.cfg.session_ttl_s * 1e9)
    async with state.db.write() as session:
        await session.execute(delete(OperatorSession).where(OperatorSession.expires_ns <= now))
        session.add(OperatorSession(token_sha256=token_hash(token), operator=op.name, created_ns=now,
                                    expires_ns=expires))
    log.info("operator_login", name=op.name, role=op.role)
    return token, expires


async def close_session(state: CSState, token: str) -> bool:
    async with state.db.write() as session:
        result = await session.execute(delete(OperatorSession).where(OperatorSession.token_sha256 == token_hash(token)))
    return bool(getattr(result, "rowcount", 0))


async def session_identity(state: CSState, token: str) -> Identity | None:
    """The operator a token logs in, if the session is live and the operator enabled."""
    if len(token) > 256:
        return None
    stmt = (select(OperatorSession, Operator).join(Operator, Operator.name == OperatorSession.operator)
            .where(OperatorSession.token_sha256 == token_hash(token)))
    async with state.db.read() as session:
        row = (await session.execute(stmt)).first()
    if row is None:
        return None
    sess, op = row
    if sess.expires_ns <= time.time_ns() or op.disabled or op.role not in ROLES:
        return None
    return Identity(component_id=op.name, role=op.role, serial=0)
