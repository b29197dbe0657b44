"""PS -> real MT end to end over real TLS (settings from a stand-in CS): batches reach the MT's
replica, cache files go, acks report mt_applied; a PS stopped without draining resumes."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from psbatches import make_batch
from psfakecs import FakeCS

from common import tls
from common.config import MTConfig, PSConfig
from mt.service import MTService
from ps.service import PSService

DISK = "ab" * 16
MACHINE = "a1" * 16
PS_ID = "22" * 16
MT_ID = "11" * 16
SIZE = 1 << 20
KEY = os.urandom(32)


@dataclass
class World:
    cs: FakeCS
    mt: MTService
    ps_cfg: PSConfig
    agent_ctx: Any
    image: bytearray

    def ps_document(self, port: int | None = None) -> dict[str, Any]:
        data = f"https://127.0.0.1:{port or self.mt.data_port}"
        return {"disks": [{"disk_id": DISK, "machine_id": MACHINE, "generation": 1, "size_bytes": SIZE,
                           "mt_url": data, "mt_control_url": f"https://127.0.0.1:{self.mt.control_port}",
                           "key_epoch": 1, "key_b64": base64.b64encode(KEY).decode()}]}

    async def send(self, ps: PSService, seqs: range, rng: random.Random) -> list[dict[str, int]]:
        acks = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.agent_ctx)) as session:
            for seq in seqs:
                offset, data = rng.randrange(0, SIZE - 8192), rng.randbytes(rng.randrange(1, 8192))
                self.image[offset:offset + len(data)] = data
                url = f"https://127.0.0.1:{ps.data_port}/v1/disks/{DISK}/batches/1/{seq}"
                async with session.put(url, data=make_batch(DISK, 1, seq, offset=offset, data=data)) as resp:
                    assert resp.status == 201, await resp.text()
                    acks.append(await resp.json())
        return acks

    def replica(self) -> bytes:
        return (self.mt.cfg.data_dir / "replicas" / f"{DISK}.img").read_bytes()

    def cached(self) -> list[Path]:
        d = self.ps_cfg.data_dir / "cache" / DISK
        return list(d.iterdir()) if d.exists() else []


async def wait_until(pred: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def issue(ca: tuple[bytes, bytes], directory: Path, cid: str, role: str, meta: dict[str, Any]) -> tls.IdentityFiles:
    files = tls.IdentityFiles(directory)
    tls.issue_local(*ca, files, component_id=cid, role=role, hosts=["127.0.0.1"], meta=meta)
    return files


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ca = tls.make_ca()
    cs = FakeCS()
    cs_url = await cs.start(issue(ca, tmp_path / "cs", "cc" * 16, "cs", {}))
    common_cfg = {"cs_url": cs_url, "heartbeat_interval_s": 0.5, "settings_wait_s": 1.0,
                  "retry_max_backoff_s": 0.3, "request_timeout_s": 5.0}
    mt_cfg = MTConfig(data_dir=tmp_path / "mt", data_port=0, control_port=0, **common_cfg)  # type: ignore[arg-type]
    issue(ca, mt_cfg.data_dir / "identity", MT_ID, "mt", {"component_id": MT_ID, "role": "mt", "cs_url": cs_url})
    cs.publish({"disks": [{"disk_id": DISK, "ps_id": PS_ID, "generation": 1, "size_bytes": SIZE, "key_epoch": 1,
                           "key_b64": base64.b64encode(KEY).decode()}], "jobs": []}, component_id=MT_ID)
    ps_cfg = PSConfig(data_dir=tmp_path / "ps", data_port=0, upload_window_batches=4, **common_cfg)  # type: ignore[arg-type]
    issue(ca, ps_cfg.data_dir / "identity", PS_ID, "ps", {"component_id": PS_ID, "role": "ps", "cs_url": cs_url})
    agent = issue(ca, tmp_path / "agent", MACHINE, "agent", {})
    mt = MTService(mt_cfg)
    await mt.start()
    try:
        await mt.wait_settings()
        yield World(cs, mt, ps_cfg, tls.client_context(agent), bytearray(SIZE))
    finally:
        await mt.stop()
        await cs.stop()


async def test_batches_reach_the_replica_and_leave_the_cache(world: World) -> None:
    rng = random.Random(7)
    world.cs.publish(world.ps_document(), component_id=PS_ID)
    ps = PSService(world.ps_cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        await world.send(ps, range(1, 21), rng)
        await wait_until(lambda: ps.registry.progress_of(DISK).mt_of(1) == (20, 20) and not world.cached())
        assert world.replica() == bytes(world.image)
        acks = await world.send(ps, range(21, 22), rng)
        assert acks[0]["ps_durable"] == 21 and acks[0]["mt_applied"] >= 20
        await wait_until(lambda: ps.registry.progress_of(DISK).mt_of(1) == (21, 21))
        assert world.replica() == bytes(world.image)
        assert ps.metrics()["disks"][DISK]["uploaded_batches"] == 21
    finally:
        await ps.stop()


async def test_ps_stopped_without_draining_resumes_with_nothing_lost(world: World) -> None:
    rng = random.Random(11)
    world.cs.publish(world.ps_document(port=9), component_id=PS_ID)  # MT unreachable: batches stay cached
    ps = PSService(world.ps_cfg, poll_interval_s=0.1)
    await ps.start()
    await ps.wait_settings()
    await world.send(ps, range(1, 11), rng)
    world.cs.publish(world.ps_document(), component_id=PS_ID)
    await ps.refresh_settings()
    await world.send(ps, range(11, 31), rng)  # now uploading while more arrive ...
    await ps.stop()  # ... and stopped mid-way, without draining
    assert world.cached(), "the stop should have left batches in the cache"

    again = PSService(world.ps_cfg, poll_interval_s=0.1)
    await again.start()
    try:
        await wait_until(lambda: again.registry.progress_of(DISK).mt_of(1) == (30, 30) and not world.cached())
        assert world.replica() == bytes(world.image)
    finally:
        await again.stop()
