"""Agent enrollment tokens on the CS: issue one for a host, consume it at registration.

A token (common/enroll.py) lets exactly one agent with exactly one host id register once,
without the passphrase: its key replaces the passphrase-derived key in the registration proofs
(cs/registration.py). Rules:

- the key is stored sealed with the account store's key (cs/accounts.py, associated data = the
  token id), never in clear; the secret itself is never stored;
- a token is single-use: :func:`consume` marks it used whatever happens next (a wrong proof
  burns it, like a challenge);
- it is refused (401) when unknown, already used, expired, or bound to another host id or role;
  only role ``agent`` enrolls by token.
"""

from __future__ import annotations

import base64
import time

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from common import enroll, errors
from common import logging as dlog
from cs.accounts import StoreKey
from cs.db.models_access import EnrollmentToken

log = dlog.get("drlab.cs.enrollment")

ROLE = "agent"
KEEP_EXPIRED_NS = 86400 * 10**9  # rows expired longer than this are dropped when a new token is issued


def _seal(store_key: StoreKey, token: enroll.EnrollToken) -> str:
    return store_key.seal(token.token_id, base64.b64encode(token.key).decode())


async def issue(session: AsyncSession, store_key: StoreKey, *, host_id: str, ttl_s: float,
                job_id: str | None) -> enroll.EnrollToken:
    """A new token for ``host_id``, valid ``ttl_s`` seconds; added to ``session`` (the caller commits)."""
    if ttl_s <= 0:
        raise errors.BadRequest("enrollment token lifetime must be > 0 seconds")
    token = enroll.new()
    now = time.time_ns()
    await session.execute(delete(EnrollmentToken).where(EnrollmentToken.expires_at < now - KEEP_EXPIRED_NS))
    session.add(EnrollmentToken(token_id=token.token_id, host_id=host_id, role=ROLE, key_enc=_seal(store_key, token),
                                expires_at=now + int(ttl_s * 1e9), used=False, job_id=job_id, created_ns=now))
    log.info("enroll_token_issued", token_id=token.token_id, host_id=host_id, job_id=job_id, ttl_s=ttl_s)
    return token


async def consume(session: AsyncSession, store_key: StoreKey, token_id: str, *, role: str, host_id: str) -> bytes:
    """The key of token ``token_id`` for this registration; marks it used first (the caller commits,
    also when this raises). Unauthorized when it may not be used."""
    row = await session.get(EnrollmentToken, token_id)
    if row is None:
        log.warning("enroll_token_refused", token_id=token_id, host_id=host_id, reason="unknown")
        raise errors.Unauthorized("unknown, used or expired enrollment token")
    reason = ("used" if row.used else "expired" if row.expires_at <= time.time_ns()
              else "other_host" if row.host_id != host_id else "other_role" if row.role != role or role != ROLE
              else "")
    row.used = True
    if reason:
        log.warning("enroll_token_refused", token_id=token_id, host_id=host_id, reason=reason)
        raise errors.Unauthorized("unknown, used or expired enrollment token" if reason in ("used", "expired")
                                  else f"enrollment token is not for {role} {host_id}")
    try:
        key = base64.b64decode(store_key.open(row.token_id, row.key_enc))
    except errors.ConfigError as exc:  # sealed under another CS key: nothing an agent can fix
        log.error("enroll_token_unreadable", token_id=token_id)
        raise errors.Unauthorized("enrollment token cannot be read by this configuration server") from exc
    log.info("enroll_token_consumed", token_id=token_id, host_id=host_id, job_id=row.job_id)
    return key
