"""The ``meta`` key/value table: installation secrets and the global settings version."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from cs.db.models import Meta

SETTINGS_VERSION = "settings_version"
AUTH_KEY = "auth_key_b64"
AUTH_SALT = "auth_salt_b64"
AUTH_KDF = "auth_kdf"
SEALED = "sealed:"  # prefix of a value sealed with the account store's key
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


class Sealer(Protocol):
    """The account store's key (cs/accounts.py StoreKey): AES-GCM bound to a name."""

    def seal(self, name: str, password: str) -> str: ...

    def open(self, name: str, sealed: str) -> str: ...


def _seal_key(sealer: Sealer, key: bytes) -> str:
    return SEALED + sealer.seal(AUTH_KEY, base64.b64encode(key).decode())


async def store_auth(session: AsyncSession, params: AuthParams, sealer: Sealer) -> None:
    """The derived key is kept sealed with ``sealer`` (the account store's key, in the CS's data
    directory): a copy of the database alone does not let anyone register a component."""
    await put(session, AUTH_KEY, _seal_key(sealer, params.key))
    await put(session, AUTH_SALT, base64.b64encode(params.salt).decode())
    await put(session, AUTH_KDF, json.dumps(params.kdf))


async def load_auth(session: AsyncSession, sealer: Sealer) -> AuthParams:
    """The passphrase's parameters; a key stored in clear (before sealing existed) is still read
    (:func:`seal_auth_key` seals it at the CS's start)."""
    rows = {r.key: r.value for r in (await session.scalars(
        select(Meta).where(Meta.key.in_([AUTH_KEY, AUTH_SALT, AUTH_KDF])))).all()}
    if len(rows) != 3:
        raise errors.ConfigError("the CS database is not initialised (run `drlab cs init`)")
    stored = rows[AUTH_KEY]
    key_b64 = sealer.open(AUTH_KEY, stored.removeprefix(SEALED)) if stored.startswith(SEALED) else stored
    return AuthParams(key=base64.b64decode(key_b64), salt=base64.b64decode(rows[AUTH_SALT]),
                      kdf={k: int(v) for k, v in json.loads(rows[AUTH_KDF]).items()})


async def seal_auth_key(session: AsyncSession, sealer: Sealer) -> bool:
    """Seal a derived key an older CS stored in clear (True if it did); refuses an uninitialised
    database."""
    params = await load_auth(session, sealer)
    if (await get(session, AUTH_KEY) or "").startswith(SEALED):
        return False
    await put(session, AUTH_KEY, _seal_key(sealer, params.key))
    return True


async def is_initialised(session: AsyncSession) -> bool:
    return await get(session, AUTH_KEY) is not None
