"""Workload generator: planning and pacing (pure), then real runs through the agent's block server."""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.blockclient import BlockClient, BlockIOError
from agent.workload import Planner, TokenBucket, WorkloadParams, parse_sizes, prefill, run_workload
from common import oracle
from common.errors import ConfigError, TransportError
from common.wire import writelog as wl

blockserver = pytest.importorskip("agent.blockserver")
replication = pytest.importorskip("agent.replication")
from agent.disk import DiskImage, TornWrite  # noqa: E402
from common.config import AgentConfig, DiskConfig  # noqa: E402

MiB = 1 << 20
SIZE = 8 * MiB


def test_parse_sizes() -> None:
    assert parse_sizes("4096:0.5,65536:0.4,1048576:0.1") == [(4096, 0.5), (65536, 0.4), (MiB, 0.1)]
    for bad in ("4000:1", "4096:-1", "x:1", "4096:0"):
        with pytest.raises(ConfigError):
            parse_sizes(bad)


def test_token_bucket_paces_to_the_rate() -> None:
    bucket = TokenBucket(1e6, burst_s=0.1)
    now = bucket._last
    assert bucket.take(100_000, now) == 0.0  # the burst
    assert bucket.take(500_000, now) == pytest.approx(0.5)
    assert bucket.take(100_000, now + 0.5) == pytest.approx(0.1)
    assert TokenBucket(0).take(10**9) == 0.0  # unpaced


def test_planner_aligns_offsets_and_overwrites_the_hot_region() -> None:
    sizes = {0: 64 * MiB, 3: 16 * MiB + 4096}
    planner = Planner(random.Random(1), sizes, [(4096, 0.5), (65536, 0.4), (MiB, 0.1)], 0.7, 4 * MiB)
    plans = [planner.next() for _ in range(5000)]
    assert all(p.offset % 4096 == 0 and p.offset + p.length <= sizes[p.disk] for p in plans)
    assert {p.disk for p in plans} == {0, 3}
    hot = sum(p.offset + p.length <= 4 * MiB for p in plans) / len(plans)
    assert 0.7 <= hot <= 0.85  # 70 % aimed at the hot region plus cold writes that land there
    again = Planner(random.Random(1), sizes, [(4096, 0.5), (65536, 0.4), (MiB, 0.1)], 0.7, 4 * MiB)
    assert [again.next() for _ in range(100)] == plans[:100]  # seeded: reproducible


@dataclass
class Agent:
    socket: Path
    images: list[Path]
    server: object


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    images = [tmp_path / "d0.img", tmp_path / "d1.img"]
    prefill(images[0], 0, SIZE, 0.5, tmp_path / "w.log", 77, chunk_bytes=MiB)  # before protection
    cfg = AgentConfig(data_dir=tmp_path, socket_path=tmp_path / "a.sock", backlog_max_bytes=512 * MiB,
                      disks=[DiskConfig("d0", images[0], SIZE), DiskConfig("d1", images[1], SIZE // 2)])
    disks = [DiskImage(d.path, d.size_bytes, d.name) for d in cfg.disks]
    rep = replication.Replicator(cfg, disks, ssl.create_default_context())
    server = blockserver.BlockServer(cfg.socket_path, disks, rep.write)
    await server.start()
    try:
        yield Agent(cfg.socket_path, images, server)
    finally:
        await server.stop()
        await rep.stop()
        for d in disks:
            d.close()


def _params(agent: Agent, log: Path, **kw: object) -> WorkloadParams:
    base: dict[str, object] = dict(socket_path=agent.socket, log_path=log, rate_mb_s=0, duration_s=20,
                                   hot_region_mib=1, timeout_s=10)
    base.update(kw)
    return WorkloadParams(**base)  # type: ignore[arg-type]


async def test_run_writes_are_logged_and_the_oracle_rebuilds_both_disks(agent: Agent, tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    stats = await run_workload(_params(agent, log, max_writes=300))
    assert stats.error is None and stats.writes == 300 and stats.seed == 77  # the log's seed
    recs = wl.read_records(log)
    assert [r.wnum for r in recs] == list(range(1, 4 + 301))  # 4 prefill chunks, then the run
    writes = [r for r in recs if r.kind == wl.KIND_WRITE]
    assert stats.first_wnum == 5 and stats.last_wnum == 304 and stats.bytes == sum(r.length for r in writes)
    assert {r.disk for r in writes} == {0, 1}
    assert all(a.ack_ns <= b.ack_ns for a, b in zip(writes, writes[1:], strict=False))
    for disk, size in ((0, SIZE), (1, SIZE // 2)):
        res = await asyncio.to_thread(oracle.verify, log, disk, size, stats.last_wnum, agent.images[disk])
        assert res.ok, res.detail
    earlier = await asyncio.to_thread(oracle.verify, log, 0, SIZE, 150, agent.images[0])
    assert not earlier.ok  # overwrites of the hot region make points differ


async def test_pacing_stop_and_continuation(agent: Agent, tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    stats = await run_workload(_params(agent, log, rate_mb_s=4, duration_s=1.5, write_sizes=[(65536, 1.0)]))
    assert 1.5 <= stats.duration_s < 2.5 and 0.6 * 6e6 <= stats.bytes <= 1.3 * 6e6, stats
    stop = asyncio.Event()
    task = asyncio.create_task(run_workload(_params(agent, log, rate_mb_s=2, duration_s=30), stop=stop),
                               name="workload-under-test")
    await asyncio.sleep(0.5)
    stop.set()
    second = await asyncio.wait_for(task, 5)
    assert second.duration_s < 2 and second.first_wnum == stats.last_wnum + 1
    assert wl.read_records(log)[-1].wnum == second.last_wnum


async def test_unacknowledged_write_is_never_logged(agent: Agent, tmp_path: Path) -> None:
    first = await run_workload(_params(agent, tmp_path / "w.log", max_writes=5))
    other = tmp_path / "other.log"  # a second writer whose numbers the agent has already seen
    stats = await run_workload(_params(agent, other, seed=5, max_writes=5))
    assert stats.writes == 0 and stats.error is not None and "not above" in stats.error
    assert wl.read_records(other) == []
    stats = await run_workload(_params(agent, other, seed=5, max_writes=2, start_wnum=first.last_wnum + 1))
    assert stats.error is None and [r.wnum for r in wl.read_records(other)] == [10, 11]


async def test_a_failed_disk_write_is_logged_in_doubt(agent: Agent, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent answers "I/O error" when its disk write failed (part of it may have landed): the
    workload logs that write as in doubt, not as a write, and stops."""
    real, calls = DiskImage.pwrite, []

    def torn(self: DiskImage, offset: int, data: bytes | bytearray | memoryview) -> None:
        calls.append(offset)
        if len(calls) == 3:
            real(self, offset, bytes(data)[: len(data) // 2])
            raise TornWrite(OSError(28, "No space left on device"), len(data) // 2)
        real(self, offset, data)

    monkeypatch.setattr(DiskImage, "pwrite", torn)
    log = tmp_path / "w.log"
    stats = await run_workload(_params(agent, log, max_writes=10))
    assert stats.writes == 2 and stats.error is not None and "I/O error" in stats.error
    run = [r for r in wl.read_records(log) if r.kind != wl.KIND_PREFILL]
    assert [r.kind for r in run] == [wl.KIND_WRITE, wl.KIND_WRITE, wl.KIND_DOUBT]
    assert run[2].wnum == stats.last_wnum + 1


async def test_unpaced_run_is_fast(agent: Agent, tmp_path: Path) -> None:
    stats = await run_workload(_params(agent, tmp_path / "w.log", duration_s=2, write_sizes=[(MiB, 1.0)]))
    assert stats.error is None and stats.mb_s >= 50, stats


async def test_block_client_errors(agent: Agent, tmp_path: Path) -> None:
    async with BlockClient(agent.socket, timeout_s=5) as client:
        assert [d["size_bytes"] for d in await client.info()] == [SIZE, SIZE // 2]
        with pytest.raises(BlockIOError, match="outside"):
            await client.read(1, SIZE // 2 - 1, 2)
        await client.flush(1)
        assert await client.read(0, 0, 4) == agent.images[0].read_bytes()[:4]  # still usable
    with pytest.raises(TransportError):
        await BlockClient(tmp_path / "nope.sock", timeout_s=1).connect()
    with pytest.raises(ConfigError, match="disks"):
        await run_workload(_params(agent, tmp_path / "w.log", disks=[0, 4]))


async def test_cli_run_without_subcommand_prints_json_stats(agent: Agent, tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.workload", "--socket", str(agent.socket), "--log", str(log),
        "--rate-mb-s", "5", "--duration-s", "1", "--disks", "1", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert stats["seed"] == 77 and b"seed 77" in err and stats["writes"] > 0
    assert {r.disk for r in wl.read_records(log) if r.kind == wl.KIND_WRITE} == {1}
    res = await asyncio.to_thread(oracle.verify, log, 1, SIZE // 2, stats["last_wnum"], agent.images[1])
    assert res.ok, res.detail


async def test_cli_prefill(tmp_path: Path) -> None:
    img, log = tmp_path / "p.img", tmp_path / "p.log"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.workload", "prefill", "--image", str(img), "--disk-index", "0",
        "--size-bytes", str(SIZE), "--fraction", "0.25", "--log", str(log), "--seed", "9",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == {"seed": 9, "last_wnum": 2}
    assert oracle.verify(log, 0, SIZE, 2, img).ok
