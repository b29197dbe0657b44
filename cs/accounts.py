"""The account store: credentials for push installation of agents, passwords encrypted at rest.

A password is sealed with AES-256-GCM under a key the CS keeps in its data directory
(``accounts.key``, 0600, made on first use; it travels with the CA in a backup, never in the
database), with a fresh 96-bit nonce and the account's name as associated data, so a sealed
password copied onto another account does not open. The database holds only
``b64(nonce | ciphertext+tag)``: a copy of the database file alone reveals no password. The API
returns names and usernames only; :func:`reveal` is for the CS's own push-install code.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import model
from cs.db.models_access import Account

log = dlog.get("drlab.cs.accounts")

KEY_FILE = "accounts.key"
KEY_BYTES = 32
NONCE_BYTES = 12
MAX_USERNAME = 255
MAX_PASSWORD = 1024


class StoreKey:
    """The store's AES-GCM key; its repr never shows it."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise errors.ConfigError(f"the account store key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "StoreKey(<hidden>)"

    def seal(self, name: str, password: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, password.encode(), name.encode())).decode()

    def open(self, name: str, sealed: str) -> str:
        raw = base64.b64decode(sealed)
        try:
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], name.encode()).decode()
        except InvalidTag as exc:
            raise errors.ConfigError(f"the password of account {name} does not open with this CS's key") from exc


def load_key(data_dir: Path) -> StoreKey:
    """The key in ``data_dir/accounts.key``, made (0600, exclusively) when missing."""
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return StoreKey(path.read_bytes())
    try:
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    log.info("account_key_created", path=str(path))
    return StoreKey(path.read_bytes())


def parse(body: dict[str, Any], *, create: bool) -> dict[str, Any]:
    """``{name, username, password}`` to create; ``{username?, password?}`` to update (pure)."""
    model.body_keys(body, allowed=("name", "username", "password") if create else ("username", "password"),
                    required=("name", "username", "password") if create else ())
    out: dict[str, Any] = {}
    if create:
        out["name"] = model.name(body["name"])
    for field, limit in (("username", MAX_USERNAME), ("password", MAX_PASSWORD)):
        if field in body:
            value = body[field]
            if not isinstance(value, str) or not 1 <= len(value) <= limit:
                raise errors.BadRequest(f"{field} must be a string of 1 to {limit} characters")
            out[field] = value
    if not out:
        raise errors.BadRequest("nothing to change: give username and/or password")
    return out


def view(account: Account) -> dict[str, Any]:
    """What the API shows of an account: never the password."""
    return {"name": account.name, "username": account.username, "created_ns": account.created_ns,
            "updated_ns": account.updated_ns}


async def create(session: AsyncSession, key: StoreKey, fields: dict[str, Any]) -> Account:
    now = time.time_ns()
    account = Account(name=fields["name"], username=fields["username"],
                      password_enc=key.seal(fields["name"], fields["password"]), created_ns=now, updated_ns=now)
    await model.create_new(session, account, account.name, "account")
    return account


async def update(session: AsyncSession, key: StoreKey, name: str, fields: dict[str, Any]) -> Account:
    account = await model.get_or_404(session, Account, name, "account", for_update=True)
    if "username" in fields:
        account.username = fields["username"]
    if "password" in fields:
        account.password_enc = key.seal(name, fields["password"])
    account.updated_ns = time.time_ns()
    return account


async def delete(session: AsyncSession, name: str) -> None:
    await session.delete(await model.get_or_404(session, Account, name, "account", for_update=True))


async def reveal(session: AsyncSession, key: StoreKey, name: str) -> tuple[str, str]:
    """(username, password) for push installation — never for an API answer or a log."""
    account = await model.get_or_404(session, Account, name, "account")
    return account.username, key.open(name, account.password_enc)
