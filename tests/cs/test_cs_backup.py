"""``drlab cs backup`` / ``restore``: the encrypted archive refuses tampering and wrong passwords;
a fleet keeps using a CS restored into a fresh data dir (and database) on the same address."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import pytest
from fleet import call, start_fleet, wait_until

from common import component, errors, tls
from cs import accounts, backup, backup_archive
from cs.service import CSService
from deploy.cli import main as drlab
from tests.conftest import cs_config, start_cs, stop_cs

PASSWORD = backup_archive.Password(b"correct horse battery staple")
FAST_KDF = {"n": 2**10, "r": 8, "p": 1}


def sealed(plain: bytes, password: backup_archive.Password = PASSWORD) -> bytes:
    out = io.BytesIO()
    backup_archive.seal(plain, password, out, kdf=FAST_KDF)
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, backup_archive.CHUNK_BYTES, 2 * backup_archive.CHUNK_BYTES + 7])
def test_archive_round_trip(size: int, seed: int) -> None:
    plain = bytes((seed + i) % 251 for i in range(size))
    assert backup_archive.open_sealed(io.BytesIO(sealed(plain)), PASSWORD) == plain


def test_wrong_password_and_tampering_are_refused(seed: int) -> None:
    plain = b"secret CA key" * 200_000  # three chunks
    good = sealed(plain)
    with pytest.raises(errors.Unauthorized) as wrong:
        backup_archive.open_sealed(io.BytesIO(good), backup_archive.Password(b"not the password"))
    assert wrong.value.code == "backup_refused" and "password" in wrong.value.message
    header_end = len(backup_archive.MAGIC) + 4 + int.from_bytes(good[8:12], "big")
    for pos in (header_end - 3, header_end + 10, len(good) // 2, len(good) - 1):  # header, chunks, last tag
        bad = bytearray(good)
        bad[pos] ^= 0x01
        with pytest.raises(errors.DrlabError):
            backup_archive.open_sealed(io.BytesIO(bytes(bad)), PASSWORD)
    first_len = int.from_bytes(good[header_end:header_end + 4], "big")
    cut = header_end + 4 + first_len
    with pytest.raises(errors.BadRequest, match="truncated"):  # a whole trailing chunk dropped
        backup_archive.open_sealed(io.BytesIO(good[:cut]), PASSWORD)
    with pytest.raises(errors.BadRequest):  # a chunk appended after the last one
        backup_archive.open_sealed(io.BytesIO(good + good[header_end:cut]), PASSWORD)
    with pytest.raises(errors.BadRequest, match="not a drlab"):
        backup_archive.open_sealed(io.BytesIO(b"PK\x03\x04" + good[4:]), PASSWORD)


def test_password_rules() -> None:
    with pytest.raises(errors.ConfigError):
        backup_archive.Password.from_text("short\n")
    assert "horse" not in repr(PASSWORD)


async def cli(*argv: str) -> int:
    return int(await asyncio.to_thread(drlab, list(argv)))


async def test_restored_cs_serves_the_same_fleet(tmp_path: Path, new_db_url: Any,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    env = await start_cs(tmp_path / "cs", db_url=await new_db_url())
    fleet = await start_fleet(env, tmp_path)
    restored: CSService | None = None
    cs_stopped = False
    try:
        port = env.service.port
        before = {c["component_id"]: c["role"] for c in await env.admin.components()}
        status, _ = await call(env.url, tls.client_context(env.admin_files), "POST", "/v1/accounts",
                               body={"name": "vcenter", "username": "svc-install", "password": "pw-in-the-store"})
        assert status == 201
        pw = tmp_path / "backup-password"
        tls.write_private(pw, b"a separate backup password\n")
        archive = tmp_path / "cs.backup"
        db_args = ["--db-url", env.cfg.db_url] if env.cfg.db_url else []
        started = time.monotonic()
        assert await cli("cs", "backup", "--data-dir", str(env.data_dir), *db_args, "--out", str(archive),
                         "--password-file", str(pw)) == 0  # online: the fleet is running
        figure = f"backup: {archive.stat().st_size} bytes in {time.monotonic() - started:.2f} s"
        assert archive.stat().st_mode & 0o777 == 0o600
        assert b"BEGIN" not in archive.read_bytes() and b"PRIVATE" not in archive.read_bytes()
        await stop_cs(env)
        cs_stopped = True
        # a wrong password changes nothing in the target dir
        wrong = tmp_path / "wrong-password"
        wrong.write_text("definitely wrong\n")
        target = tmp_path / "cs-restored"
        target_url = await new_db_url()
        target_args = ["--db-url", target_url] if target_url else []
        assert await cli("cs", "restore", "--from", str(archive), "--data-dir", str(target), *target_args,
                         "--password-file", str(wrong)) == 2
        assert "wrong password" in capsys.readouterr().err and not target.exists()
        assert await cli("cs", "restore", "--from", str(archive), "--data-dir", str(target), *target_args,
                         "--password-file", str(pw)) == 0
        assert (target / "ca" / "key.pem").stat().st_mode & 0o777 == 0o600
        # a restore never overwrites a CS
        assert await cli("cs", "restore", "--from", str(archive), "--data-dir", str(target), *target_args,
                         "--password-file", str(pw)) == 2
        # the restored CS on the same address and port: the fleet carries on with its certificates
        restored = CSService(cs_config(target, port=port, db_url=target_url), recheck_s=0.5)
        await restored.start()
        admin_files = tls.IdentityFiles(target / "admin")
        status, listing = await call(restored.url, tls.client_context(admin_files), "GET", "/v1/components")
        assert status == 200 and {c["component_id"]: c["role"] for c in listing["items"]} == before
        async with restored.state.db.read() as session:  # the account store's key came back too
            assert await accounts.reveal(session, accounts.load_key(target), "vcenter") == (
                "svc-install", "pw-in-the-store")
        first = {c["component_id"]: c["last_heartbeat"] for c in listing["items"]}
        deadline = time.monotonic() + 10  # heartbeats reconnect (backoff after the outage is at most 0.3 s)
        while True:
            _, listing = await call(restored.url, tls.client_context(admin_files), "GET", "/v1/components")
            now = {c["component_id"]: c["last_heartbeat"] for c in listing["items"]}
            if all(now[c.component_id] > (first[c.component_id] or 0) for c in (fleet.ps, fleet.mt)):
                break
            assert time.monotonic() < deadline, f"no new heartbeat of the PS and the MT: {first} -> {now}"
            await asyncio.sleep(0.1)
        # a change made at the restored CS reaches the components: revoking the agent reaches the PS
        agent_serial = int(tls.serial_hex(fleet.agent.cert.read_bytes()), 16)
        status, _ = await call(restored.url, tls.client_context(admin_files), "POST",
                               f"/v1/components/{fleet.machine_id}/revoke")
        assert status == 200
        await wait_until(lambda: fleet.ps.registry.is_revoked(agent_serial) and fleet.mt.registry.is_revoked(
            agent_serial), what="PS and MT learn the change made at the restored CS")
        status, body = await call(restored.url, tls.client_context(fleet.agent), "POST", "/v1/heartbeat",
                                  body={"metrics": {}})
        assert (status, body["code"]) == (401, "certificate_revoked")
        # the passphrase's key came back too: the machine registers again with the passphrase
        meta = await component.register(restored.url, env.passphrase, role="agent", host_id="m1",
                                        address="127.0.0.1", ports={}, files=tls.IdentityFiles(tmp_path / "m1-again"))
        assert meta["component_id"] == fleet.machine_id
        with capsys.disabled():
            print(figure)
    finally:
        await fleet.stop()
        if restored is not None:
            await restored.stop()
        if not cs_stopped:
            await stop_cs(env)


async def test_backup_of_an_uninitialised_dir_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    pw = tmp_path / "pw"
    pw.write_text("long enough password\n")
    rc = await cli("cs", "backup", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "x.backup"),
                   "--password-file", str(pw))
    assert rc == 2 and not (tmp_path / "x.backup").exists()
    assert "no database" in capsys.readouterr().err


async def test_sqlite_backup_restores_into_the_engine_of_the_target(tmp_path: Path, new_db_url: Any) -> None:
    """A SQLite archive restores into SQLite by file, into PostgreSQL through a logical import."""
    env = await start_cs(tmp_path / "cs-sqlite")
    try:
        agent = tls.IdentityFiles(tmp_path / "agent")
        meta = await component.register(env.url, env.passphrase, role="agent", host_id="m9", address="127.0.0.1",
                                        ports={}, files=agent)
        status, _ = await call(env.url, tls.client_context(agent), "PUT", "/v1/machines/self/disks",
                               body={"disks": [{"name": "d0", "size_bytes": 4096}, {"name": "d1", "size_bytes": 8192}]})
        assert status == 200
        archive = tmp_path / "a.backup"
        await backup.backup(env.cfg, archive, PASSWORD)
        disks_before = sorted((d["disk_id"], d["name"]) for d in await env.admin.disks())
    finally:
        await stop_cs(env)
    target_url = await new_db_url()
    manifest = await backup.restore(archive, cs_config(tmp_path / "cs-target", db_url=target_url), PASSWORD)
    assert manifest["engine"] == "sqlite" and manifest["rows"]["disks"] == 2
    restored = CSService(cs_config(tmp_path / "cs-target", db_url=target_url))
    await restored.start()
    try:
        admin = tls.client_context(tls.IdentityFiles(tmp_path / "cs-target" / "admin"))
        status, listing = await call(restored.url, admin, "GET", "/v1/disks")
        assert status == 200 and sorted((d["disk_id"], d["name"]) for d in listing["items"]) == disks_before
        again = await component.register(restored.url, env.passphrase, role="agent", host_id="m9",
                                         address="127.0.0.1", ports={}, files=tls.IdentityFiles(tmp_path / "again"))
        assert again["component_id"] == meta["component_id"]
    finally:
        await restored.stop()
