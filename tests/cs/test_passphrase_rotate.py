"""``drlab cs passphrase rotate``: the old passphrase stops working at once, components registered
under it are told to re-register (401 ``reregister_required``) and do so from their passphrase
file, keeping their ids and data, while replication (certificates only) keeps running."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from fleet import call, serial_of, start_fleet, wait_until

from common import auth, component, errors, tls
from deploy.cli import main as drlab


async def rotate(env: Any, capsys: pytest.CaptureFixture[str]) -> auth.Passphrase:
    argv = ["cs", "passphrase", "rotate", "--data-dir", str(env.data_dir)]
    if env.cfg.db_url:
        argv += ["--db-url", env.cfg.db_url]
    assert await asyncio.to_thread(drlab, argv) == 0
    out = capsys.readouterr().out
    new = auth.read_passphrase_file(str(env.passphrase_file))
    assert new.value in out and "epoch 1" in out
    assert env.passphrase_file.stat().st_mode & 0o777 == 0o600
    return new


async def status_code(env: Any, files: tls.IdentityFiles) -> tuple[int, str]:
    status, body = await call(env.url, tls.client_context(files), "POST", "/v1/heartbeat", body={"metrics": {}})
    return status, body.get("code", "")


async def test_rotation_makes_components_reregister_and_replication_continues(
        cs_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = await start_fleet(cs_env, tmp_path)
    try:
        old = cs_env.passphrase
        ids = {c["component_id"]: c["role"] for c in await cs_env.admin.components()}
        ps_serial, mt_serial = serial_of(fleet.ps_files), serial_of(fleet.mt_files)
        new = await rotate(cs_env, capsys)
        assert new.value != old.value
        # the old passphrase no longer registers anything
        with pytest.raises(errors.Unauthorized):
            await component.register(cs_env.url, old, role="agent", host_id="m-late", address="127.0.0.1",
                                     ports={}, files=tls.IdentityFiles(tmp_path / "late"))
        # components registered under it are told to re-register (within the cache refresh)
        deadline = time.monotonic() + 10
        while await status_code(cs_env, fleet.agent) != (401, "reregister_required"):
            assert time.monotonic() < deadline, "the agent was never told to re-register"
            await asyncio.sleep(0.1)
        states = {c["component_id"]: c["state"] for c in await cs_env.admin.components()}
        assert set(states.values()) == {"reregister_required"}
        # ... while replication keeps going: the PS still takes the agent's batches (old epoch certificate)
        assert (await fleet.put_batch(fleet.agent, 1))[0] in (200, 201)
        await wait_until(lambda: fleet.ps.registry.progress_of(fleet.disk_id).mt_received >= 1,
                         what="the batch reached the MT")
        # PS and MT still hold the old passphrase: they cannot re-register yet, and keep serving
        await asyncio.sleep(1.0)
        assert (serial_of(fleet.ps_files), serial_of(fleet.mt_files)) == (ps_serial, mt_serial)
        # the operator gives them the new passphrase: they re-register by themselves, same ids
        phrase_file = Path(fleet.ps.cfg.passphrase_file or "")
        tls.write_private(phrase_file, (new.value + "\n").encode())
        await wait_until(lambda: serial_of(fleet.ps_files) != ps_serial and serial_of(fleet.mt_files) != mt_serial,
                         what="PS and MT re-registered")
        assert fleet.ps_files.read_meta()["component_id"] == fleet.ps.component_id
        assert fleet.mt_files.read_meta()["component_id"] == fleet.mt.component_id
        assert await status_code(cs_env, fleet.ps_files) == (200, "")
        # the agent re-registers with the new passphrase: same id, its disk, no duplicate rows
        again = tls.IdentityFiles(tmp_path / "agent-again")
        meta = await component.register(cs_env.url, new, role="agent", host_id="m1", address="127.0.0.1",
                                        ports={}, files=again)
        assert meta["component_id"] == fleet.machine_id
        assert await status_code(cs_env, again) == (200, "")
        assert (await fleet.put_batch(again, 2))[0] in (200, 201)
        after = {c["component_id"]: c["role"] for c in await cs_env.admin.components()}
        assert after == ids
        assert {c["state"] for c in await cs_env.admin.components()} == {"registered"}
        # heartbeats of the re-registered PS and MT reach the CS again
        seen = {c["component_id"]: c["last_heartbeat"] for c in await cs_env.admin.components()}
        deadline = time.monotonic() + 10  # heartbeats every 0.3 s (tests/cs/fleet.py)
        while True:
            now = {c["component_id"]: c["last_heartbeat"] for c in await cs_env.admin.components()}
            if all(now[c.component_id] > seen[c.component_id] for c in (fleet.ps, fleet.mt)):
                break
            assert time.monotonic() < deadline, f"no new heartbeat of the PS and the MT: {seen} -> {now}"
            await asyncio.sleep(0.1)
    finally:
        await fleet.stop()


async def test_rotation_refuses_an_uninitialised_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = await asyncio.to_thread(drlab, ["cs", "passphrase", "rotate", "--data-dir", str(tmp_path / "none")])
    assert rc == 2 and "not an initialised CS" in capsys.readouterr().err
