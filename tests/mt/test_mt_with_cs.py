"""The MT against the real CS: it registers, a registered PS sends sealed batches over real TLS,
and a failover job runs end to end through the CS."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mtbatches import BatchMaker

from common import auth, component, tls
from common.config import MTConfig
from common.http import ApiClient
from common.wire.seal import Sealer
from mt.service import MTService

DISK_SIZE = 1 << 20


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def registered(cs_env: Any, tmp: Path, role: str, host_id: str, ports: dict[str, int]) -> tuple[str, ApiClient]:
    files = tls.IdentityFiles(tmp / f"{host_id}-id")
    meta = await component.register(cs_env.url, auth.read_passphrase_file(str(cs_env.passphrase_file)), role=role,
                                    host_id=host_id, address="127.0.0.1", ports=ports, files=files)
    return str(meta["component_id"]), ApiClient(cs_env.url, tls.client_context(files))


async def put(ctx: Any, url: str, data: bytes) -> tuple[int, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.put(url, data=data) as resp:
            return resp.status, await resp.json()


@pytest.fixture
def real_cs(request: pytest.FixtureRequest) -> Any:
    """The real CS (tests/conftest.py, written with cs/); skipped until it exists."""
    try:
        return request.getfixturevalue("cs_env")
    except pytest.FixtureLookupError:
        pytest.skip("the cs_env fixture (real CS) is not available yet")


@pytest.mark.timeout(90)
async def test_mt_with_real_cs_ingests_and_fails_over(real_cs: Any, tmp_path: Path) -> None:
    cs_env = real_cs
    cfg = MTConfig(data_dir=tmp_path / "mt", cs_url=cs_env.url, passphrase_file=cs_env.passphrase_file,
                   host_id="mt-it", data_port=0, control_port=0, heartbeat_interval_s=0.5, settings_wait_s=1.0,
                   retry_max_backoff_s=0.5)
    mt = MTService(cfg)
    await mt.start()
    ps_id, ps_cs = await registered(cs_env, tmp_path, "ps", "ps-it", {"data": 1})
    machine_id, agent_cs = await registered(cs_env, tmp_path, "agent", "m-it", {})
    try:
        reply = await agent_cs.put("/v1/machines/self/disks", {"disks": [{"name": "disk0", "size_bytes": DISK_SIZE}]})
        disk_id = reply["disks"][0]["disk_id"]
        await cs_env.admin.protect(machine_id)

        async def ps_disk() -> dict[str, Any] | None:
            doc = (await ps_cs.get("/v1/settings", params={"version": -1, "wait_s": 0}))["document"]
            return next((d for d in doc.get("disks", []) if d["disk_id"] == disk_id), None)

        disk = await eventually(ps_disk)

        async def mt_has_disk() -> bool:
            await mt.refresh_settings()
            return disk_id in mt.registry.disks and mt.registry.disks[disk_id].ps_id == ps_id

        await eventually(mt_has_disk)
        gen = int(disk["generation"])
        key = base64.b64decode(disk["key_b64"])
        sealer = Sealer(key, int(disk["key_epoch"]), bytes.fromhex(disk_id), gen, bytes.fromhex(ps_id))
        maker = BatchMaker(bytes.fromhex(disk_id), size=DISK_SIZE, seed=21, gen=gen)
        ps_ctx = tls.client_context(tls.IdentityFiles(tmp_path / "ps-it-id"))
        base = f"https://127.0.0.1:{mt.data_port}/v1/disks/{disk_id}/batches"
        staging = cfg.data_dir / "staging" / disk_id

        first = maker.make()
        sealed = sealer.seal(1, first)
        ca_pem = (tmp_path / "ps-it-id" / "ca.pem").read_bytes()
        status, _ = await put(tls.client_context(None, ca_pem), f"{base}/{gen}/1", sealed)
        assert status == 401
        tampered = bytearray(sealed)
        tampered[100] ^= 0x40
        status, body = await put(ps_ctx, f"{base}/{gen}/1", bytes(tampered))
        assert status == 400 and body["code"] == "tampered_seal"
        assert not staging.exists() or not any(staging.iterdir())

        status, body = await put(ps_ctx, f"{base}/{gen}/1", sealed)
        assert status == 201 and body["mt_received"] == 1
        for seq in range(2, 6):
            status, body = await put(ps_ctx, f"{base}/{gen}/{seq}", sealer.seal(seq, maker.make()))
            assert status == 201, body
        store = mt.workers[disk_id].store
        await eventually(lambda: asyncio.sleep(0, result=store.applied == (gen, 5)))

        point = store.catalog.get(disk_id, gen, 3)
        assert point is not None
        job_id = await cs_env.admin.failover(disk_id, {"time_ns": point.t_last_ns}, image=True)

        async def job_done() -> dict[str, Any] | None:
            job = await cs_env.admin.job(job_id)
            return job if job["state"] in ("succeeded", "failed") else None

        job = await eventually(job_done, 30)
        assert job["state"] == "succeeded", job
        result = job["result"]
        assert (result["point"]["gen"], result["point"]["seq"]) == (gen, 3)
        image = await asyncio.to_thread(Path(result["image_path"]).read_bytes)
        assert image == maker.images[(gen, 3)]
    finally:
        await ps_cs.close()
        await agent_cs.close()
        await mt.stop()
