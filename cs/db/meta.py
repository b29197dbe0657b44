"""The ``meta`` key/value table: installation secrets and the global settings version."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from cs.db.models import Meta

SETTINGS_VERSION = "settings_version"
AUTH_KEY = "auth_key_b64"
AUTH_SALT = "auth_salt_b64"
AUTH_KDF = "auth_kdf"
SETTINGS_CHANNEL = "drlab_settings"  # PostgreSQL NOTIFY channel of settings_version (cs/db/engine.py Listener)


@dataclass(frozen=True)
class AuthParams:
    """What the CS keeps of the passphrase: the derived key, its salt and the scrypt parameters."""

    key: bytes
    salt: bytes
    kdf: dict[str, int]

    def __repr__(self) -> str:
        return f"AuthParams(kdf={self.kdf})"


async def get(session: AsyncSession, key: str) -> str | None:
    row = await session.get(Meta, key)
    return row.value if row is not None else None


async def put(session: AsyncSession, key: str, value: str) -> None:
    row = await session.get(Meta, key)
    if row is None:
        session.add(Meta(key=key, value=value))
    else:
        row.value = value
    await session.flush()


async def settings_version(session: AsyncSession) -> int:
    return int(await get(session, SETTINGS_VERSION) or 0)


async def bump_version(session: AsyncSession) -> int:
    """Every change a settings document could show calls this inside its write transaction."""
    version = await settings_version(session) + 1
    await put(session, SETTINGS_VERSION, str(version))
    if session.get_bind().dialect.name == "postgresql":  # delivered at commit, to every CS process's listener
        await session.execute(text("SELECT pg_notify(:channel, :version)"),
                              {"channel": SETTINGS_CHANNEL, "version": str(version)})
    return version


async def store_auth(session: AsyncSession, params: AuthParams) -> None:
    await put(session, AUTH_KEY, base64.b64encode(params.key).decode())
    await put(session, AUTH_SALT, base64.b64encode(params.salt).decode())
    await put(session, AUTH_KDF, json.dumps(params.kdf))


async def load_auth(session: AsyncSession) -> AuthParams:
    rows = {r.key: r.value for r in (await session.scalars(
        select(Meta).where(Meta.key.in_([AUTH_KEY, AUTH_SALT, AUTH_KDF])))).all()}
    if len(rows) != 3:
        raise errors.ConfigError("the CS database is not initialised (run `drlab cs init`)")
    return AuthParams(key=base64.b64decode(rows[AUTH_KEY]), salt=base64.b64decode(rows[AUTH_SALT]),
                      kdf={k: int(v) for k, v in json.loads(rows[AUTH_KDF]).items()})


async def is_initialised(session: AsyncSession) -> bool:
    return await get(session, AUTH_KEY) is not None
