"""AgentService in-process with a stand-in CS and PS over real TLS and a real block socket."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agentfakes import BlockClient, FakeCS, FakePS, issue, replay, wait_until

from agent.service import AgentService
from common.config import AgentConfig, DiskConfig
from common.wire import batch as wb
from common.wire import blockio as bio

SIZE = 4 << 20
MACHINE = "a1" * 16


@dataclass
class World:
    cs: FakeCS
    ps: FakePS
    ps_url: str
    cfg: AgentConfig
    rng: random.Random

    def protect(self) -> None:
        self.cs.protect(self.ps_url, {"disk0": SIZE})

    @property
    def disk_id(self) -> str:
        return self.cs.disks["disk0"]

    def source(self) -> bytes:
        return self.cfg.disks[0].path.read_bytes()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    cs, ps = FakeCS(), FakePS()
    cs_url = await cs.start(issue(tmp_path / "cs", "c5" * 16, "cs"))
    ps_url = await ps.start(issue(tmp_path / "ps", "50" * 16, "ps"))
    issue(tmp_path / "agent" / "identity", MACHINE, "agent")
    cfg = AgentConfig(data_dir=tmp_path / "agent", cs_url=cs_url, socket_path=tmp_path / "agent" / "agent.sock",
                      disks=[DiskConfig("disk0", tmp_path / "disk0.img", SIZE)], batch_max_ms=20,
                      batch_max_bytes=256 << 10, heartbeat_interval_s=0.5, settings_wait_s=0.5,
                      request_timeout_s=5, retry_max_backoff_s=0.2, resync_chunk_bytes=64 << 10)
    rng = random.Random(7)
    prefill(cfg.disks[0].path, rng)
    try:
        yield World(cs, ps, ps_url, cfg, rng)
    finally:
        await cs.stop()
        await ps.stop()


def prefill(path: Path, rng: random.Random) -> None:
    """Data the machine had before protection."""
    image = bytearray(SIZE)
    for _ in range(20):
        off = rng.randrange(SIZE - 8192)
        image[off:off + 8192] = rng.randbytes(8192)
    path.write_bytes(bytes(image))


async def write_some(w: World, client: BlockClient, first_wnum: int, count: int) -> int:
    for wnum in range(first_wnum, first_wnum + count):
        off = w.rng.randrange(SIZE - 5000)
        resp, _ = await client.write(0, wnum, off, w.rng.randbytes(w.rng.randrange(1, 5000)))
        assert resp.status == bio.Status.OK
    return first_wnum + count


async def protected(agent: AgentService, w: World, gen: int) -> None:
    await wait_until(lambda: agent.disk_status("disk0")["state"] == "protected"
                     and agent.disk_status("disk0")["generation"] == gen, 20, f"protected under gen {gen}")


async def test_protect_replicate_and_write_in_order(world: World) -> None:
    w = world
    agent = AgentService(w.cfg)
    await agent.start()
    try:
        assert agent.machine_id == MACHINE
        assert agent.disk_status("disk0")["state"] == "unprotected"
        client = await BlockClient.connect(w.cfg.socket_path)
        wnum = await write_some(w, client, 1, 30)  # before protection: copied by the initial replication
        w.protect()
        wnum = await write_some(w, client, wnum, 200)  # during the copy
        await protected(agent, w, 1)
        wnum = await write_some(w, client, wnum, 50)  # after
        await wait_until(lambda: agent.disk_status("disk0")["acked_seq"] == agent.disk_status("disk0")["next_seq"] - 1
                         and agent.replicator is not None and agent.replicator.backlog.bytes == 0, 10, "all acked")
        await client.close()
        batches = w.ps.received(w.disk_id, 1)
        assert [b.seq for b in batches] == list(range(1, len(batches) + 1))
        assert replay(batches, SIZE) == w.source()
        assert batches[0].flags & wb.Flags.RESYNC_START
        done = [b.seq for b in batches if b.flags & wb.Flags.RESYNC_DONE]
        assert len(done) == 1 and all(b.mode == wb.Mode.DATA for b in batches[done[0]:])
        his = [b.wnum_hi for b in batches]
        assert his == sorted(his) and his[-1] == wnum - 1
        states = w.cs.states(w.disk_id)
        assert states[0] == "initial-replication" and states[-1] == "protected"
        assert [p["percent"] for d, p in w.cs.progress if d == w.disk_id][-1] == 100.0
        assert w.cs.heartbeats >= 1
    finally:
        await agent.stop()
    assert agent.store.load().clean_shutdown


async def test_unclean_restart_resyncs_under_a_new_generation(world: World) -> None:
    w = world
    agent = AgentService(w.cfg)
    await agent.start()
    w.protect()
    await protected(agent, w, 1)
    crashed = agent.store.path.read_bytes()  # what a kill -9 leaves behind: clean_shutdown false
    await agent.stop()
    agent.store.path.write_bytes(crashed)
    again = AgentService(w.cfg)
    await again.start()
    try:
        assert w.cs.resyncs == [(w.disk_id, "unclean-shutdown")]
        await protected(again, w, 2)
        client = await BlockClient.connect(w.cfg.socket_path)
        await write_some(w, client, 10_000, 20)
        await client.close()
        await wait_until(lambda: again.replicator is not None and again.replicator.backlog.bytes == 0, 10, "drained")
        batches = w.ps.received(w.disk_id, 2)
        assert batches[0].seq == 1 and batches[0].flags & wb.Flags.RESYNC_START
        copied = sum(len(r.data) for b in batches if b.mode == wb.Mode.RESYNC for r in b.records)
        assert copied >= SIZE  # over an existing replica the resync copies zeros too
        assert replay(batches, SIZE) == w.source()
    finally:
        await again.stop()


async def test_clean_restart_continues_the_sequence(world: World) -> None:
    w = world
    agent = AgentService(w.cfg)
    await agent.start()
    w.protect()
    await protected(agent, w, 1)
    await agent.stop()
    next_seq = agent.store.load().disks["disk0"].next_seq
    again = AgentService(w.cfg)
    await again.start()
    try:
        await protected(again, w, 1)
        client = await BlockClient.connect(w.cfg.socket_path)
        await write_some(w, client, 500, 10)
        await client.close()
        await wait_until(lambda: w.ps.contiguous(w.disk_id, 1) >= next_seq, 10, "a batch after the restart")
        # the ten writes may span several batches: wait for all of them before comparing
        await wait_until(lambda: replay(w.ps.received(w.disk_id, 1), SIZE) == w.source(), 10, "every write")
        assert w.cs.resyncs == []
        batches = w.ps.received(w.disk_id, 1)
        assert [b.seq for b in batches] == list(range(1, len(batches) + 1))
        assert batches[next_seq - 1].mode == wb.Mode.DATA
        assert replay(batches, SIZE) == w.source()
    finally:
        await again.stop()


async def test_new_generation_from_the_settings_restarts_the_pipeline(world: World) -> None:
    w = world
    agent = AgentService(w.cfg)
    await agent.start()
    try:
        w.protect()
        await protected(agent, w, 1)
        w.ps.generation[w.disk_id] = 2  # the PS already fences generation 1 ...
        client = await BlockClient.connect(w.cfg.socket_path)
        await write_some(w, client, 1, 3)
        await wait_until(lambda: agent.disk_status("disk0")["state"] == "stale", 10, "stale")
        w.cs.generations[w.disk_id] = 2  # ... and the CS publishes generation 2
        w.protect()
        await protected(agent, w, 2)
        await write_some(w, client, 4, 3)
        await client.close()
        await wait_until(lambda: agent.replicator is not None and agent.replicator.backlog.bytes == 0, 10, "drained")
        assert replay(w.ps.received(w.disk_id, 2), SIZE) == w.source()
    finally:
        await agent.stop()


async def test_clean_stop_in_the_middle_of_a_copy_resumes_it(world: World) -> None:
    w = world
    w.cfg.backlog_max_bytes = 256 << 10  # slow the copy down so that the stop catches it midway
    w.ps.delays = [0.2] * 8
    agent = AgentService(w.cfg)
    await agent.start()
    w.protect()
    await wait_until(lambda: 0 < agent.disk_status("disk0").get("bytes_done", 0), 10, "copy started")
    await agent.stop()
    st = agent.store.load()
    assert st.clean_shutdown and 0 < st.disks["disk0"].resync_offset < SIZE
    again = AgentService(w.cfg)
    await again.start()
    try:
        await protected(again, w, 1)
        assert w.cs.resyncs == []
        assert replay(w.ps.received(w.disk_id, 1), SIZE) == w.source()
    finally:
        await again.stop()



async def test_protected_only_once_the_mt_applied_the_resync(world: World) -> None:
    w = world
    w.ps.apply = False
    agent = AgentService(w.cfg)
    await agent.start()
    try:
        w.protect()
        await wait_until(lambda: 0 < agent.disk_status("disk0")["resync_done_seq"]
                         <= agent.disk_status("disk0")["acked_seq"], 20, "resync durable at the PS")
        await asyncio.sleep(0.7)  # more than a progress interval
        status = agent.disk_status("disk0")
        assert status["state"] == "initial-replication" and status["percent"] == 99.0
        w.ps.apply = True  # no new batch: the agent learns it by asking the PS
        await protected(agent, w, 1)
    finally:
        await agent.stop()


async def test_ps_down_degrades_tracking_without_stalling_writes_and_none_is_lost(world: World) -> None:
    w = world
    w.cfg.backlog_max_bytes = 64 << 10
    w.cfg.metadata_max_bytes = 96 << 10
    agent = AgentService(w.cfg)
    await agent.start()
    try:
        w.protect()
        await protected(agent, w, 1)
        assert agent.disk_status("disk0")["mode"] == "data"
        w.ps.unavailable = True
        client = await BlockClient.connect(w.cfg.socket_path)
        wnum = await asyncio.wait_for(write_some(w, client, 1, 120), 20)  # ~300 KiB: writes never wait
        await wait_until(lambda: agent.disk_status("disk0")["mode"] == "bitmap", 10, "bitmap mode")
        w.ps.unavailable = False
        await write_some(w, client, wnum, 20)
        await wait_until(lambda: agent.disk_status("disk0")["mode"] == "data"
                         and agent.replicator is not None and agent.replicator.backlog.bytes == 0
                         and not agent.replicator.tracker.has_pending(0), 20, "back to data mode, drained")
        await client.close()
        status = agent.disk_status("disk0")
        assert status["mode_changes"] >= 4  # data -> metadata -> bitmap -> metadata -> data
        assert status["batches_by_mode"].get("BITMAP", 0) >= 1
        batches = w.ps.received(w.disk_id, 1)
        assert any(b.mode == wb.Mode.BITMAP and b.accuracy == wb.Accuracy.NONE for b in batches)
        assert any(b.flags & wb.Flags.RESYNC_DONE and b.mode == wb.Mode.BITMAP for b in batches)
        assert replay(batches, SIZE) == w.source()
    finally:
        await agent.stop()
