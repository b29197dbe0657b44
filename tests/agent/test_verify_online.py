"""Online verify on the agent (agent/verify.py): the verdict rules, the tally across rounds, and
the job against a stand-in uploader whose replica lags the source by batches in flight."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.disk import DiskImage
from agent.resync import digest, pieces
from agent.verify import (
    Suspect,
    Tally,
    Verdict,
    VerifyFailed,
    VerifyJob,
    VerifyRequest,
    VerifyRunner,
    judge,
    parse_requests,
)
from common import errors

BLOCK = 8192
SIZE = 32 * BLOCK + 1000
A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


def test_judge() -> None:
    assert judge(A, A, A) is Verdict.SAME  # healthy
    assert judge(A, B, B) is Verdict.SAME  # written meanwhile, the replica caught up
    assert judge(A, B, A) is Verdict.DIFFERS  # unchanged on the source, the replica differs
    assert judge(A, B, C) is Verdict.BUSY  # written meanwhile, not caught up yet


def test_tally_rounds_and_groups() -> None:
    t = Tally()
    for off in (0, BLOCK, 2 * BLOCK, 5 * BLOCK, 6 * BLOCK):
        t.first_pass(off, BLOCK, A, A if off == 2 * BLOCK else B, target=3)
    assert t.blocks_compared == 5 and t.bytes_compared == 5 * BLOCK
    assert sorted(t.suspects) == [0, BLOCK, 5 * BLOCK, 6 * BLOCK]
    assert [[s.offset for s in g] for g in t.groups(BLOCK, 8 * BLOCK)] == [[0, BLOCK], [5 * BLOCK, 6 * BLOCK]]
    assert [[s.offset for s in g] for g in t.groups(BLOCK, BLOCK)] == [[0], [BLOCK], [5 * BLOCK], [6 * BLOCK]]
    assert t.settle(t.suspects[0], B, A, 9) is Verdict.DIFFERS
    assert t.settle(t.suspects[BLOCK], B, B, 9) is Verdict.SAME
    busy = t.suspects[5 * BLOCK]
    assert t.settle(busy, B, C, 9) is Verdict.BUSY and (busy.local, busy.target) == (C, 9)
    assert t.differing == {0} and sorted(t.suspects) == [5 * BLOCK, 6 * BLOCK]
    assert isinstance(busy, Suspect)


def test_parse_requests_skips_malformed_entries() -> None:
    doc = {"disks": [], "verify": [{"verify_id": "v1", "disk_id": "d1", "block_bytes": 65536},
                                   {"verify_id": "v2", "disk_id": "d1", "block_bytes": 1000},
                                   {"verify_id": "v3"}, "junk"]}
    assert parse_requests(doc) == [VerifyRequest("v1", "d1", 65536)]
    assert parse_requests({"disks": []}) == [] and parse_requests(None) == []


# ---------------------------------------------------------------------------- the job


@dataclass
class LaggingUploader:
    """The MT has applied ``mt_applied``; ``in_flight`` batches reach the replica one per status poll."""

    replica: bytearray
    mt_applied: int
    in_flight: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    disk_id: str = "ab" * 16
    generation: int = 3
    timeout_s: float = 1.0
    stale: bool = False
    fetches: int = 0

    @property
    def client(self) -> LaggingUploader:
        return self

    async def refresh_status(self) -> None:
        nxt = self.mt_applied + 1
        if nxt in self.in_flight:
            off, data = self.in_flight.pop(nxt)
            self.replica[off:off + len(data)] = data
            self.mt_applied = nxt

    async def get(self, path: str, params: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self.fetches += 1
        off, length, block = params["offset"], params["length"], params["block"]
        return {"generation": params["generation"], "applied": [self.generation, self.mt_applied], "offset": off,
                "length": length, "block": block,
                "hashes": [digest(bytes(self.replica[o:o + n])).hex() for o, n in pieces(off, length, block)]}


def make_job(tmp_path: Path, source: bytes, uploader: LaggingUploader, next_seq: int,
             rounds: int = 4) -> tuple[VerifyJob, Any]:
    (tmp_path / "disk.img").write_bytes(source)
    disk = DiskImage(tmp_path / "disk.img", SIZE, "disk0")
    pipe = SimpleNamespace(index=0, disk_id=uploader.disk_id, protected=True, generation=uploader.generation,
                           uploader=uploader, stream=SimpleNamespace(next_seq=next_seq, incomplete=False))
    replicator = SimpleNamespace(pipelines={0: pipe}, disks=[disk],
                                 tracker=SimpleNamespace(has_pending=lambda index: False))
    req = VerifyRequest("ef" * 16, uploader.disk_id, BLOCK)
    return VerifyJob(req, replicator, rounds=rounds, request_bytes=4 * BLOCK, round_wait_s=2.0), pipe  # type: ignore[arg-type]


@pytest.mark.timeout(20)
async def test_writes_in_flight_are_not_differences_corruption_is(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    source = bytearray(rng.randbytes(SIZE))
    replica = bytearray(source)
    replica[3 * BLOCK + 10] ^= 0xFF  # corrupt behind the MT's back
    replica[SIZE - 5] ^= 0xFF  # in the short last block
    in_flight = {}
    for seq, blk in ((8, 7), (9, 20), (10, 7)):  # applied after the scan; block 7 twice
        data = rng.randbytes(100)
        source[blk * BLOCK:blk * BLOCK + 100] = data
        in_flight[seq] = (blk * BLOCK, data)
    up = LaggingUploader(replica, mt_applied=7, in_flight=in_flight)
    job, _ = make_job(tmp_path, bytes(source), up, next_seq=11)
    result = await job.run()
    assert result["differing"] == [3 * BLOCK, 32 * BLOCK] and result["unsettled"] == []
    assert result["blocks_compared"] == 33 and result["bytes_compared"] == SIZE
    assert result["generation"] == 3 and result["rounds"] == 1 and up.mt_applied == 10


@pytest.mark.timeout(20)
async def test_a_healthy_replica_reports_nothing(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    source = rng.randbytes(SIZE)
    up = LaggingUploader(bytearray(source), mt_applied=4)
    job, _ = make_job(tmp_path, source, up, next_seq=5)
    result = await job.run()
    assert (result["differing"], result["unsettled"], result["rounds"]) == ([], [], 0)
    assert up.fetches == -(-SIZE // (4 * BLOCK))


@pytest.mark.timeout(20)
async def test_a_block_still_being_written_stays_unsettled(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    source = rng.randbytes(SIZE)
    replica = bytearray(source)
    replica[BLOCK] ^= 1
    up = LaggingUploader(replica, mt_applied=4)
    job, pipe = make_job(tmp_path, source, up, next_seq=5, rounds=3)
    disk = job.replicator.disks[0]
    real = job._read_hash

    def moving(offset: int, length: int) -> bytes:  # the block changes on the source at every read
        if offset == BLOCK:
            disk.pwrite(BLOCK, rng.randbytes(16))
        return real(offset, length)

    job._read_hash = moving  # type: ignore[method-assign]
    result = await job.run()
    assert result["differing"] == [] and result["unsettled"] == [BLOCK] and result["rounds"] == 3


@pytest.mark.timeout(20)
async def test_a_fenced_pipeline_fails_the_verify(tmp_path: Path, seed: int) -> None:
    source = random.Random(seed).randbytes(SIZE)
    up = LaggingUploader(bytearray(SIZE), mt_applied=4)
    job, pipe = make_job(tmp_path, source, up, next_seq=5)
    assert await job.wait_pipeline() is pipe
    up.stale = True  # a newer generation fenced it after the verify began
    with pytest.raises(VerifyFailed):
        await job.run()
    assert up.fetches == 0


# ---------------------------------------------------------------------------- the runner


@dataclass
class FakeCS:
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refuse_start: bool = False

    async def post(self, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self.refuse_start and body["state"] == "running":
            raise errors.Conflict("verify already finished")
        self.posts.append((path, body))
        return {"ok": True}


@dataclass
class StubJob:
    fail: bool = False
    generation: int = 0
    runs: int = 0

    async def wait_pipeline(self) -> Any:
        self.generation = 4
        return SimpleNamespace(generation=4)

    async def run(self) -> dict[str, Any]:
        self.runs += 1
        if self.fail:
            raise VerifyFailed("the disk's generation 4 ended during the verify")
        return {"state": "succeeded", "generation": 4, "differing": []}


@pytest.mark.timeout(10)
async def test_runner_runs_each_request_once_and_posts_start_and_result() -> None:
    cs = FakeCS()
    jobs: dict[str, StubJob] = {"v-ok": StubJob(), "v-bad": StubJob(fail=True)}
    replicator = SimpleNamespace(cfg=SimpleNamespace(verify_rounds=2, hash_request_bytes=1 << 20))
    runner = VerifyRunner(cs, replicator, timeout_s=1.0, job_factory=lambda req: jobs[req.verify_id])  # type: ignore[arg-type]
    reqs = [VerifyRequest("v-ok", "d1", BLOCK), VerifyRequest("v-bad", "d1", BLOCK)]
    runner.sync(reqs)
    runner.sync(reqs)  # the next settings document lists them again
    assert len(runner.tasks) == 2
    await asyncio.gather(*runner.tasks.values())
    runner.sync(reqs)
    assert not runner.tasks and all(j.runs == 1 for j in jobs.values())
    by_id = {vid: [b for p, b in cs.posts if p == f"/v1/disks/d1/verify/{vid}"] for vid in jobs}
    assert by_id == {"v-ok": [{"state": "running", "generation": 4},
                              {"state": "succeeded", "generation": 4, "differing": []}],
                     "v-bad": [{"state": "running", "generation": 4},
                               {"state": "failed", "generation": 4,
                                "error": "the disk's generation 4 ended during the verify"}]}
    refused = FakeCS(refuse_start=True)
    again = StubJob()
    runner = VerifyRunner(refused, replicator, timeout_s=1.0, job_factory=lambda req: again)  # type: ignore[arg-type]
    runner.sync([VerifyRequest("v-done", "d1", BLOCK)])
    await asyncio.gather(*runner.tasks.values())
    assert again.runs == 0 and refused.posts == [] and runner.finished["v-done"]["state"] == "refused"
    await runner.stop()
