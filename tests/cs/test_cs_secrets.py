"""Secrets never show: not in reprs, not in log output, not in the database."""

from __future__ import annotations

import base64
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import structlog
from cshelpers import Site, settings
from sqlalchemy import select

from common import auth
from common.config import CSConfig
from cs import accounts, diskkeys
from cs.ca import CA
from cs.db import meta
from cs.db.meta import AuthParams
from cs.db.models import Disk
from cs.init import init_cs
from cs.registration import RegisterRequest
from cs.service import CSService
from tests import secretscan
from tests.conftest import stored_bytes


def test_reprs_hide_secrets(tmp_path: Path) -> None:
    phrase = auth.new_passphrase()
    assert phrase.value not in repr(phrase) and phrase.value not in str(phrase) and phrase.value not in f"{phrase}"
    params = AuthParams(key=b"K" * 32, salt=b"S" * 16, kdf={"n": 2})
    assert "KKKK" not in repr(params) and base64.b64encode(b"K" * 32).decode() not in repr(params)
    ca = CA(key_pem=b"-----BEGIN PRIVATE KEY-----secret", cert_pem=b"cert")
    assert "secret" not in repr(ca)
    disk = Disk(disk_id="ab" * 16, name="d", generation=1, state="enabling", key_b64="c2VjcmV0LWtleQ==")
    assert "c2VjcmV0" not in repr(disk)
    req = RegisterRequest("ab" * 16, "ps", "h", "127.0.0.1", {}, "v", b"csr", b"n", proof=b"PROOFBYTES")
    assert "PROOFBYTES" not in repr(req)


async def _full_flow(site: Site) -> list[str]:
    """Register, heartbeat, report, protect, read settings, fail over; the secrets involved."""
    ps, mt = await site.ps(), await site.mt()
    agent, names = await site.agent()
    await ps.api.post("/v1/heartbeat", {"metrics": {}})
    await site.env.admin.protect(agent.component_id)
    key_b64 = (await settings(ps))["document"]["disks"][0]["key_b64"]
    job_id = await site.env.admin.failover(names["disk0"], "latest")
    await mt.api.post(f"/v1/jobs/{job_id}/result", {"state": "succeeded", "result": {}})
    return [site.env.passphrase.value, key_b64]


async def test_no_secret_in_rendered_logs(cs_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    site = Site(cs_env, tmp_path)
    try:
        secrets = await _full_flow(site)
    finally:
        await site.close()
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert "registered" in text and "protected" in text  # the flow did log
    for secret in secrets:
        assert secret not in text


async def test_no_secret_in_raw_log_events(cs_env: Any, tmp_path: Path) -> None:
    site = Site(cs_env, tmp_path)
    try:
        with structlog.testing.capture_logs() as events:
            secrets = await _full_flow(site)
    finally:
        await site.close()
    assert any(e["event"] == "registered" for e in events)
    dump = repr(events)
    for secret in secrets:
        assert secret not in dump


async def test_database_keeps_no_passphrase(cs_env: Any) -> None:
    blob = await stored_bytes(cs_env)
    assert len(blob) > 100 and cs_env.passphrase.value.encode() not in blob


@pytest.mark.timeout(60)
async def test_a_derived_key_stored_in_clear_is_sealed_at_start(tmp_path: Path) -> None:
    """A database from before sealing (the derived key in clear) still works, and the CS seals
    the key when it starts; once vacuumed, the database files no longer hold the key in any form."""
    cfg = CSConfig(data_dir=tmp_path / "cs", port=0)
    await init_cs(cfg, hosts=["127.0.0.1"])
    db_file = cfg.data_dir / "cs.db"
    with sqlite3.connect(db_file) as db:
        sealed = db.execute("SELECT value FROM meta WHERE key = 'auth_key_b64'").fetchone()[0]
        key_b64 = accounts.load_key(cfg.data_dir).open("auth_key_b64", sealed.removeprefix("sealed:"))
        db.execute("UPDATE meta SET value = ? WHERE key = 'auth_key_b64'", (key_b64,))  # as an older CS kept it
    secret = secretscan.of_key("derived key", base64.b64decode(key_b64))
    db_files = [db_file, db_file.with_name("cs.db-wal")]
    assert secretscan.scan_files(db_files, [secret])  # in clear: the scan sees it
    svc = CSService(cfg)
    try:
        await svc.start()
    finally:
        await svc.stop()
    with sqlite3.connect(db_file) as db:
        db.execute("VACUUM")  # the old row's bytes stay in free pages and the WAL until vacuumed
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stored = db.execute("SELECT value FROM meta WHERE key = 'auth_key_b64'").fetchone()[0]
    assert stored.startswith("sealed:")
    assert not secretscan.scan_files(db_files, [secret])


@pytest.mark.timeout(60)
async def test_database_keeps_no_key_in_clear(cs_env: Any, tmp_path: Path) -> None:
    """After registrations, protection and a failover, the database (SQLite files or PostgreSQL
    rows) holds neither the passphrase-derived key nor a disk key in any form: both are sealed,
    and the PS's settings document still carries the disk key in clear."""
    site = Site(cs_env, tmp_path)
    try:
        _, key_b64 = await _full_flow(site)
    finally:
        await site.close()
    store = accounts.load_key(cs_env.data_dir)
    async with cs_env.service.state.db.read() as session:
        derived = (await meta.load_auth(session, store)).key
        [disk] = (await session.scalars(select(Disk))).all()
    assert disk.key_b64 and disk.key_b64.startswith(meta.SEALED)
    assert diskkeys.reveal(store, disk.disk_id, disk.key_b64) == key_b64  # what the PS was given
    assert diskkeys.reveal(store, "x", "bGVnYWN5") == "bGVnYWN5"  # a key an older CS stored in clear
    secrets = [secretscan.of_key("derived key", derived), secretscan.of_key("disk key", base64.b64decode(key_b64))]
    assert not secretscan.scan_bytes(await stored_bytes(cs_env), "the database", secrets)
