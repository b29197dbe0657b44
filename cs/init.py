"""``drlab cs init``: database, CA, passphrase and the CS's own identities, once."""

from __future__ import annotations

import asyncio
import os

from common import auth, errors, tls
from common import logging as dlog
from common.config import CSConfig
from cs import accounts
from cs.ca import CA, Layout
from cs.db import meta
from cs.db.engine import Database

log = dlog.get("drlab.cs.init")


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def init_cs(cfg: CSConfig, *, hosts: list[str]) -> auth.Passphrase:
    """Initialise a new CS in ``cfg.data_dir``; refuses (ConfigError) an initialised one."""
    if not hosts:
        raise errors.ConfigError("init_cs needs at least one host name or address for the CS certificate")
    layout = Layout(cfg.data_dir)
    if layout.any_exists():
        raise errors.ConfigError(f"{cfg.data_dir} is already initialised")
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(cfg.database_url())
    try:
        await db.upgrade()  # the schema, through the alembic migrations
        async with db.read() as session:
            if await meta.is_initialised(session):
                raise errors.ConfigError(f"the database {db!r} is already initialised")
        passphrase = auth.new_passphrase()
        params = await asyncio.to_thread(_auth_params, passphrase)
        async with db.write() as session:
            await meta.store_auth(session, params, accounts.load_key(cfg.data_dir))
            await meta.put(session, meta.SETTINGS_VERSION, "0")
    finally:
        await db.close()
    await asyncio.to_thread(_write_files, layout, cfg, hosts, passphrase)
    log.info("cs_initialised", data_dir=str(cfg.data_dir), hosts=hosts)
    return passphrase


def _auth_params(passphrase: auth.Passphrase) -> meta.AuthParams:
    salt = os.urandom(16)
    kdf = {"n": auth.KDF_N, "r": auth.KDF_R, "p": auth.KDF_P}
    return meta.AuthParams(key=auth.derive_key(passphrase, salt, **kdf), salt=salt, kdf=kdf)


def _write_files(layout: Layout, cfg: CSConfig, hosts: list[str], passphrase: auth.Passphrase) -> None:
    ca = CA.create(layout)
    cs_url = f"https://{url_host(hosts[0])}:{cfg.port}"
    ca.issue_local(layout.identity, role="cs", hosts=hosts, cs_url=cs_url, validity_s=cfg.cert_validity())
    ca.issue_local(layout.admin, role="admin", hosts=[], cs_url=cs_url, validity_s=cfg.cert_validity())
    tls.write_private(layout.passphrase_file, (passphrase.value + "\n").encode())
