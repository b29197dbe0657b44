"""PSService in-process with stand-in CS and MT over real TLS: serve, upload, restart."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from psbatches import make_batch
from psfakecs import FakeCS
from psfakemt import FakeMT

from common import tls
from common.config import PSConfig
from ps.service import PSService

DISK = "ab" * 16
MACHINE = "a1" * 16
PS_ID = "22" * 16
KEY = os.urandom(32)


@dataclass
class World:
    cs: FakeCS
    mt: FakeMT
    mt_url: str
    cfg: PSConfig
    agent_ctx: Any

    def document(self, mt_url: str, gen: int = 1) -> dict[str, Any]:
        return {"disks": [{"disk_id": DISK, "machine_id": MACHINE, "generation": gen, "size_bytes": 1 << 20,
                           "mt_url": mt_url, "mt_control_url": mt_url, "key_epoch": 1,
                           "key_b64": base64.b64encode(KEY).decode()}]}

    async def put(self, port: int, gen: int, seq: int, data: bytes, disk: str = DISK) -> tuple[int, Any]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.agent_ctx)) as session:
            url = f"https://127.0.0.1:{port}/v1/disks/{disk}/batches/{gen}/{seq}"
            async with session.put(url, data=data) as resp:
                return resp.status, await resp.json()


async def wait_until(pred: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def issue(ca: tuple[bytes, bytes], directory: Path, cid: str, role: str, meta: dict[str, Any]) -> tls.IdentityFiles:
    files = tls.IdentityFiles(directory)
    tls.issue_local(*ca, files, component_id=cid, role=role, hosts=["127.0.0.1"], meta=meta)
    return files


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ca = tls.make_ca()
    cs, mt = FakeCS(), FakeMT(KEY)
    cs_url = await cs.start(issue(ca, tmp_path / "cs", "cc" * 16, "cs", {}))
    mt_url = await mt.start(issue(ca, tmp_path / "mt", "11" * 16, "mt", {}))
    cfg = PSConfig(data_dir=tmp_path / "ps", cs_url=cs_url, data_port=0, heartbeat_interval_s=0.2,
                   settings_wait_s=1.0, retry_max_backoff_s=0.2, upload_window_batches=2, request_timeout_s=5.0,
                   cache_max_bytes=1 << 20)
    issue(ca, cfg.data_dir / "identity", PS_ID, "ps", {"component_id": PS_ID, "role": "ps", "cs_url": cs_url})
    agent = issue(ca, tmp_path / "agent", MACHINE, "agent", {})
    try:
        yield World(cs, mt, mt_url, cfg, tls.client_context(agent))
    finally:
        await mt.stop()
        await cs.stop()


async def test_cached_batches_survive_a_restart_and_reach_the_mt(world: World) -> None:
    world.cs.publish(world.document("https://127.0.0.1:9"))  # the MT is unreachable at first
    ps = PSService(world.cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        sent = {seq: make_batch(DISK, 1, seq, data=os.urandom(4096)) for seq in range(1, 6)}
        for seq, data in sent.items():
            status, body = await world.put(ps.data_port, 1, seq, data)
            assert (status, body) == (201, {"ps_durable": seq, "mt_received": 0, "mt_applied": 0})
        await wait_until(lambda: bool(world.cs.heartbeats) and world.cs.heartbeats[-1]["cache_used_bytes"] > 0)
        beat = world.cs.heartbeats[-1]
        assert beat["disks"][DISK]["backlog_batches"] == 5 and beat["cache_free_pct"] < 100.0
    finally:
        await ps.stop()
    cache_dir = world.cfg.data_dir / "cache" / DISK
    assert len(list(cache_dir.iterdir())) == 5

    world.cs.publish(world.document(world.mt_url))
    again = PSService(world.cfg, poll_interval_s=0.1)
    await again.start()
    try:
        await wait_until(lambda: len(world.mt.received) == 5 and not list(cache_dir.iterdir()))
        assert {s: world.mt.received[(1, s)] for s in sent} == sent
        await wait_until(lambda: again.registry.progress_of(DISK).mt_of(1) == (5, 5))
        status, body = await world.put(again.data_port, 1, 6, make_batch(DISK, 1, 6))
        assert status == 201 and body["ps_durable"] == 6 and body["mt_applied"] >= 5
        await wait_until(lambda: (1, 6) in world.mt.received)
    finally:
        await again.stop()


async def test_settings_change_of_generation_reaches_ingest(world: World) -> None:
    world.cs.publish(world.document(world.mt_url))
    ps = PSService(world.cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        assert (await world.put(ps.data_port, 1, 1, make_batch(DISK, 1, 1)))[0] == 201
        world.cs.publish(world.document(world.mt_url, gen=2))
        await wait_until(lambda: ps.registry.generation(DISK) == 2)
        status, body = await world.put(ps.data_port, 1, 2, make_batch(DISK, 1, 2))
        assert status == 409 and body["code"] == "stale_generation"
        assert (await world.put(ps.data_port, 2, 1, make_batch(DISK, 2, 1)))[0] == 201
        await wait_until(lambda: (2, 1) in world.mt.received)
    finally:
        await ps.stop()


async def test_disk_assigned_before_the_long_poll_returns(world: World) -> None:
    world.cfg.settings_wait_s = 8.0
    ps = PSService(world.cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        await asyncio.sleep(0.2)  # the PS is now in a long-poll
        world.cs.publish(world.document(world.mt_url), wake=False)
        started = time.monotonic()
        status, body = await world.put(ps.data_port, 1, 1, make_batch(DISK, 1, 1))
        assert status == 201, body
        assert time.monotonic() - started < 4.0
        status, body = await world.put(ps.data_port, 1, 1, make_batch(DISK, 1, 1), disk="cd" * 16)
        assert status == 404 and body["code"] == "not_found"  # still unknown after a refresh
    finally:
        await ps.stop()
