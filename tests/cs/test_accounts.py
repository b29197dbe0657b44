"""The push-install account store: passwords sealed at rest (never in the database file, the audit
log or an answer), bound to their account, updated and deleted through the API."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
from cshelpers import raw
from sqlalchemy import MetaData, select

from common import errors
from cs import accounts
from cs.db.engine import Database

PASSWORD = "Tr0ub4dor&3-never-stored"


def test_sealed_passwords_open_only_for_their_account(tmp_path: Path) -> None:
    key = accounts.load_key(tmp_path)
    assert (tmp_path / accounts.KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert accounts.load_key(tmp_path).open("a", key.seal("a", "pw")) == "pw"  # the same key again
    sealed = key.seal("vmware-admins", PASSWORD)
    assert PASSWORD not in sealed and sealed != key.seal("vmware-admins", PASSWORD)  # fresh nonce
    assert key.open("vmware-admins", sealed) == PASSWORD
    with pytest.raises(errors.ConfigError):
        key.open("other", sealed)  # the name is the associated data
    with pytest.raises(errors.ConfigError):
        accounts.StoreKey(os.urandom(32)).open("vmware-admins", sealed)
    assert "hidden" in repr(key)


def test_bodies_are_checked() -> None:
    assert accounts.parse({"name": "a1", "username": "u", "password": "p"}, create=True)["name"] == "a1"
    for body in ({"name": "a1", "username": "u"}, {"name": "A!", "username": "u", "password": "p"},
                 {"name": "a1", "username": "", "password": "p"}, {"name": "a1", "username": "u", "password": 5},
                 {"name": "a1", "username": "u", "password": "p", "extra": 1}):
        with pytest.raises(errors.BadRequest):
            accounts.parse(body, create=True)
    with pytest.raises(errors.BadRequest):
        accounts.parse({}, create=False)


async def dump(url: str) -> str:
    """Every row of every table, as text."""
    db = Database(url)
    try:
        async with db.read() as session:
            md = MetaData()

            def reflect(conn: Any) -> None:
                with warnings.catch_warnings():  # an expression index SQLAlchemy does not reflect
                    warnings.simplefilter("ignore")
                    md.reflect(conn)

            await (await session.connection()).run_sync(reflect)
            out = []
            for table in md.sorted_tables:
                out.extend(repr(tuple(r)) for r in (await session.execute(select(table))).all())
            return "\n".join(out)
    finally:
        await db.close()


async def test_the_api_never_returns_or_stores_the_password(cs_env: Any) -> None:
    api = cs_env.admin._api
    created = await api.post("/v1/accounts", {"name": "vmware-admins", "username": "CORP\\svc", "password": PASSWORD})
    assert created == {"name": "vmware-admins", "username": "CORP\\svc", "created_ns": created["created_ns"],
                       "updated_ns": created["updated_ns"]}
    await api.request("PATCH", "/v1/accounts/vmware-admins", json_body={"password": PASSWORD + "-2"})
    listed = await api.get("/v1/accounts")
    assert [a["name"] for a in listed["items"]] == ["vmware-admins"] and "password" not in str(listed)
    one = await api.get("/v1/accounts/vmware-admins")
    assert set(one) == {"name", "username", "created_ns", "updated_ns"}
    audit = await api.get("/v1/audit", params={"entity": "accounts"})
    assert [r["changes"]["password_enc"] for r in audit["items"]] == [["<redacted>", "<redacted>"],
                                                                     [None, "<redacted>"]]

    key = accounts.load_key(cs_env.data_dir)
    async with cs_env.service.state.db.read() as session:
        assert await accounts.reveal(session, key, "vmware-admins") == ("CORP\\svc", PASSWORD + "-2")
    url = cs_env.cfg.database_url()
    if url.startswith("sqlite"):
        files = [p for p in cs_env.data_dir.iterdir() if p.name.startswith("cs.db")]
        assert files and all(PASSWORD.encode() not in p.read_bytes() for p in files)
    text = await dump(url)
    assert "CORP" in text and PASSWORD not in text  # the rows are there, the password is not

    status, body = await raw(cs_env.url, api._ssl, "POST", "/v1/accounts",
                             {"name": "vmware-admins", "username": "x", "password": "y"})
    assert (status, body["code"]) == (409, "conflict")
    status, body = await raw(cs_env.url, api._ssl, "POST", "/v1/accounts", {"name": "b", "password": PASSWORD})
    assert status == 400 and PASSWORD not in body["message"]
    await api.request("DELETE", "/v1/accounts/vmware-admins")
    assert (await api.get("/v1/accounts"))["items"] == []
