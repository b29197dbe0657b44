"""Checksum resync on the agent (agent/resync.py): the pure helpers, the job against a stand-in
MT that applies a random prefix of the stream before each hashes answer while a writer keeps
writing, the copy fallback, regions, resume and fencing, and RemoteHashes' retry rules."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.backlog import Backlog
from agent.disk import DiskImage
from agent.resync import Hashes, RemoteHashes, ResyncJob, digest, merge_regions, parse_hashes, pieces, range_at
from agent.tracker import Tracker
from common import errors
from common.config import AgentConfig
from common.errors import ConfigError
from common.wire.batch import Record

BLOCK = 16 << 10
SIZE = 64 * BLOCK + 5000  # the last block is short


# ---------------------------------------------------------------------------- pure


def test_merge_regions_sorts_merges_and_clips() -> None:
    assert merge_regions(None, 100) == [(0, 100)]
    assert merge_regions([(50, 10), (0, 10), (5, 10), (95, 20), (200, 5), (30, 0)], 100) == [
        (0, 15), (50, 10), (95, 5)]
    assert merge_regions([], 100) == []


def test_range_at_walks_regions_without_crossing_them() -> None:
    regions = [(0, 10), (50, 30)]
    assert range_at(regions, 0, 8) == (0, 8)
    assert range_at(regions, 8, 8) == (8, 2)
    assert range_at(regions, 10, 8) == (50, 8)
    assert range_at(regions, 35, 100) == (75, 5)
    assert range_at(regions, 40, 8)[1] == 0


def test_pieces_from_the_range_start() -> None:
    assert pieces(100, 250, 100) == [(100, 100), (200, 100), (300, 50)]


def answer(offset: int, length: int, block: int, n: int | None = None, **over: Any) -> dict[str, Any]:
    count = len(pieces(offset, length, block)) if n is None else n
    return {"generation": 2, "applied": [2, 1], "offset": offset, "length": length, "block": block,
            "hashes": ["ab" * 16] * count, **over}


def test_parse_hashes_accepts_a_capped_answer_and_refuses_others() -> None:
    h = parse_hashes(answer(4096, 2 * 4096, 4096), 4096, 10 * 4096, 4096)
    assert (h.offset, h.length, h.applied, len(h.digests)) == (4096, 8192, (2, 1), 2)
    assert parse_hashes(answer(0, 5000, 4096), 0, 5000, 4096).length == 5000
    bad = [answer(0, 5000, 4096), answer(4096, 4096, 4096), answer(0, 4096, 8192), answer(0, 8192, 4096, n=3),
           answer(0, 4096, 4096, hashes=["zz" * 16]), answer(0, 4096, 4096, hashes=["ab"]), {"offset": 0}, [],
           answer(0, 4096 * 20, 4096)]
    for body in bad:
        with pytest.raises(errors.Unavailable):
            parse_hashes(body, 0, 10 * 4096, 4096)


def test_hash_block_size_is_checked_in_the_config() -> None:
    assert AgentConfig().hash_block_bytes == 64 << 10
    for bad in ({"hash_block_bytes": 5000}, {"hash_block_bytes": 2048}, {"hash_block_bytes": 128 << 20},
                {"hash_block_bytes": 1 << 20, "hash_request_bytes": 4096}, {"hot_hash_block_bytes": 5000},
                {"hot_hash_block_bytes": 1 << 20, "hash_request_bytes": 512 << 10}):
        with pytest.raises(ConfigError):
            AgentConfig(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the job


@dataclass
class FakeMT:
    """The replica and the stream cut so far; applies a random prefix before each answer."""

    replica: bytearray
    rng: random.Random
    pending: list[list[Record]] = field(default_factory=list)
    fetches: int = 0

    def apply(self, count: int | None = None) -> None:
        k = len(self.pending) if count is None else count
        for records in self.pending[:k]:
            for r in records:
                self.replica[r.offset:r.offset + len(r.data)] = r.data
        del self.pending[:k]


@dataclass
class FakeHashes:
    """Stands for RemoteHashes: answers from the FakeMT's replica, awaiting around it."""

    mt: FakeMT
    block_bytes: int = BLOCK
    request_bytes: int = 4 * BLOCK
    generation: int = 2
    refuse_after: int | None = None  # None: always answer; n: the n-th fetch on returns None
    stale_after: int | None = None

    async def wait_applied(self, seq: int, alive: Any) -> bool:
        await asyncio.sleep(0)
        self.mt.apply()
        return True

    async def fetch(self, offset: int, length: int, alive: Any, block: int | None = None) -> Hashes | None:
        self.mt.fetches += 1
        if self.stale_after is not None and self.mt.fetches > self.stale_after:
            raise errors.StaleGeneration("fenced")
        if self.refuse_after is not None and self.mt.fetches > self.refuse_after:
            return None
        await asyncio.sleep(0)
        self.mt.apply(self.mt.rng.randrange(len(self.mt.pending) + 1))
        length = min(length, self.request_bytes)
        got = [digest(bytes(self.mt.replica[o:o + n])) for o, n in pieces(offset, length, self.block_bytes)]
        await asyncio.sleep(0)
        return Hashes(offset, length, self.block_bytes, (self.generation, 1), got)


@dataclass
class Rig:
    disk: DiskImage
    tracker: Tracker
    mt: FakeMT
    job: ResyncJob
    wnum: int = 0
    sent: int = 0

    def cut(self) -> None:
        c = self.tracker.cut(0, 1)
        if c is not None:
            self.mt.pending.append(c.records)

    async def writer(self, rng: random.Random, count: int) -> None:
        for _ in range(count):
            off = rng.randrange(SIZE - 3000)
            data = rng.randbytes(rng.randrange(1, 3000))
            self.wnum += 1
            self.disk.pwrite(off, data)
            self.tracker.record_write(0, self.wnum, off, data, 1)
            if rng.random() < 0.3:
                self.cut()
            await asyncio.sleep(0)


def make_rig(tmp_path: Path, source: bytes, replica: bytes, rng: random.Random, **job: Any) -> Rig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "disk.img").write_bytes(source)
    disk = DiskImage(tmp_path / "disk.img", SIZE, "disk0")
    tracker = Tracker()
    tracker.watch(0, SIZE)
    mt = FakeMT(bytearray(replica), rng)
    hashes = job.pop("hashes", FakeHashes(mt))
    rig = Rig(disk, tracker, mt, None)  # type: ignore[arg-type]
    rig.job = ResyncJob(disk, 0, tracker, Backlog(1 << 30, lambda: 0), chunk_bytes=BLOCK, skip_zero=False,
                        on_chunk=rig.cut, hashes=hashes, cut_now=rig.cut, **job)
    return rig


def corrupt(image: bytes, blocks: list[int], rng: random.Random) -> bytes:
    out = bytearray(image)
    for b in blocks:
        out[b * BLOCK + 7:b * BLOCK + 700] = rng.randbytes(693)
    return bytes(out)


async def test_only_differing_blocks_travel_when_nothing_is_written(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    source = rng.randbytes(SIZE)
    rig = make_rig(tmp_path, source, corrupt(source, [0, 17, 64], rng), rng)
    await rig.job.run()
    rig.cut()
    rig.mt.apply()
    assert rig.job.done and bytes(rig.mt.replica) == source
    assert rig.job.bytes_compared == SIZE and rig.job.bytes_done == SIZE
    assert rig.job.blocks_differing == 3
    assert rig.job.bytes_sent == 2 * BLOCK + (SIZE - 64 * BLOCK)  # block 64 is the short last one


@pytest.mark.parametrize("run", range(4))
async def test_the_replica_ends_equal_to_the_source_under_concurrent_writes(tmp_path: Path, seed: int,
                                                                            run: int) -> None:
    rng = random.Random(seed + run)
    source = rng.randbytes(SIZE)
    replica = corrupt(source, rng.sample(range(65), 6), rng)
    rig = make_rig(tmp_path / str(run), source, replica, rng)
    writer = asyncio.create_task(rig.writer(random.Random(seed ^ run), 300))
    await rig.job.run()
    await writer
    rig.cut()
    rig.mt.apply()
    assert bytes(rig.mt.replica) == rig.disk.pread(0, SIZE)
    assert rig.job.blocks_differing <= 65


async def test_refused_hashes_fall_back_to_copying_the_rest(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    source = rng.randbytes(SIZE)
    rig = make_rig(tmp_path, source, source, rng)
    rig.job.hashes.refuse_after = 2  # type: ignore[union-attr]
    await rig.job.run()
    rig.cut()
    rig.mt.apply()
    assert bytes(rig.mt.replica) == source
    assert rig.job.bytes_compared == 8 * BLOCK and rig.job.bytes_sent == SIZE - 8 * BLOCK
    assert rig.job.hashes is None and rig.job.mode == "copy"


async def test_regions_only_and_resume_from_the_middle(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    source = rng.randbytes(SIZE)
    replica = corrupt(source, [2, 10, 30, 40], rng)
    rig = make_rig(tmp_path, source, replica, rng, extents=[(9 * BLOCK, 3 * BLOCK), (30 * BLOCK + 100, BLOCK),
                                                             (10 * BLOCK, BLOCK)], reason="unclean-shutdown")
    assert rig.job.regions == [(9 * BLOCK, 3 * BLOCK), (30 * BLOCK + 100, BLOCK)]
    assert rig.job.bytes_total == 4 * BLOCK
    rig.job.bytes_done = 3 * BLOCK  # a clean stop after the first region
    await rig.job.run()
    rig.cut()
    rig.mt.apply()
    assert rig.job.bytes_compared == BLOCK and rig.job.bytes_sent == BLOCK  # block 30 (as cut from +100)
    expect = bytearray(replica)
    expect[30 * BLOCK + 100:31 * BLOCK + 100] = source[30 * BLOCK + 100:31 * BLOCK + 100]
    assert bytes(rig.mt.replica) == bytes(expect)  # blocks 2, 10 and 40 were not asked for


async def test_a_fenced_generation_abandons_without_the_done_marker(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    source = rng.randbytes(SIZE)
    rig = make_rig(tmp_path, source, bytes(SIZE), rng)
    rig.job.hashes.stale_after = 1  # type: ignore[union-attr]
    await rig.job.run()
    assert not rig.job.done and rig.job.bytes_done == 4 * BLOCK
    c = rig.tracker.cut(0, 1)
    assert c is None or not c.resync_done


async def test_copy_with_skip_zero_sends_only_data(tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    disk = DiskImage(path, SIZE, "disk0")
    disk.pwrite(20 * BLOCK + 5, b"x" * 10)
    tracker = Tracker()
    tracker.watch(0, SIZE)
    job = ResyncJob(disk, 0, tracker, Backlog(1 << 30, lambda: 0), chunk_bytes=BLOCK, skip_zero=True,
                    on_chunk=lambda: None)
    await job.run()
    c = tracker.cut(0, 1)
    assert c is not None and c.resync_done and job.mode == "copy"
    assert [(r.offset, len(r.data)) for r in c.records] == [(20 * BLOCK, BLOCK)]
    assert job.bytes_sent == BLOCK and job.bytes_done == SIZE


# ---------------------------------------------------------------------------- RemoteHashes


@dataclass
class FakeClient:
    replies: list[Any]
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def get(self, path: str, params: dict[str, Any], timeout_s: float) -> Any:
        self.calls.append(params)
        reply = self.replies.pop(0)
        if isinstance(reply, errors.DrlabError):
            raise reply
        return reply


@dataclass
class FakeUploader:
    client: FakeClient
    disk_id: str = "ab" * 16
    generation: int = 2
    timeout_s: float = 1.0
    stale: bool = False
    mt_applied: int = 0
    polls: int = 0

    async def refresh_status(self) -> None:
        self.polls += 1
        if self.polls >= 3:
            self.mt_applied = 1


@pytest.mark.timeout(10)
async def test_remote_hashes_retry_fall_back_and_fence() -> None:
    ok = answer(0, 4096, 4096)
    client = FakeClient([errors.Unavailable("not yet", code="not_ready", retry_after_s=0.01),
                         errors.TransportError("cut"), ok,
                         errors.NotFound("x"), errors.BadRequest("y"), errors.NotFound("z"),
                         errors.StaleGeneration("old")])
    up = FakeUploader(client)
    rh = RemoteHashes(up, block_bytes=4096, request_bytes=10_000, max_backoff_s=0.01)  # type: ignore[arg-type]
    assert rh.request_bytes == 8192
    assert await rh.wait_applied(1, lambda: True, poll_s=0.01) and up.polls == 3
    got = await rh.fetch(0, 4096, lambda: True)
    assert got is not None and got.length == 4096 and len(client.calls) == 3
    assert client.calls[0] == {"generation": 2, "offset": 0, "length": 4096, "block": 4096}
    assert await rh.fetch(0, 4096, lambda: True) is None  # refused three times: copy instead
    with pytest.raises(errors.StaleGeneration):
        await rh.fetch(0, 4096, lambda: True)
    up.stale = True
    with pytest.raises(errors.StaleGeneration):
        await rh.fetch(0, 4096, lambda: True)
    assert not await rh.wait_applied(5, lambda: True)
