"""Online verify: compare a protected disk with its replica, block hash by block hash, while
replication goes on, and report the blocks that really differ.

The CS lists verify requests in the agent's settings document (``verify``); the progress
reporter hands them to :class:`VerifyRunner`, which runs one :class:`VerifyJob` per request and
posts the result (``POST /v1/disks/{disk}/verify/{id}``).

A block can differ only because writes are in flight (on the source, not yet applied on the
replica). So a first difference is only a *suspect*, remembered with its local hash ``L1`` and the
seq ``s`` that holds every write made before that read (the last cut, or the next one if writes
are pending). A round then waits until the MT applied ``s``, fetches the replica's hash ``R``
(taken after ``s``), and reads the block again (``L2``), with no await between that read and
its verdict (:func:`judge`):
- ``R == L2``: the same; not a difference.
- ``L1 == L2 != R``: the block did not change on the source from before ``s`` until after the
  replica's hash was taken, and the replica reflects at least ``s``: a healthy replica would show
  ``L1``; it differs for real (reported in ``differing``).
- ``L1 != L2``: written meanwhile; a suspect again with ``L2`` and a newer ``s``.
After ``verify_rounds`` rounds, suspects still being written are reported as ``unsettled``, never as
differing. Blocks are cut from offset 0 in ``block_bytes`` pieces (the last one possibly short);
the result lists differing blocks by offset.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from agent.pipeline import Pipeline
from agent.replication import Replicator
from agent.resync import Hashes, RemoteHashes, digest, pieces, range_at
from common import errors
from common import logging as dlog
from common.http import ApiClient, retrying
from common.tasks import cancel_and_wait

log = dlog.get("drlab.agent.verify")

PIPELINE_POLL_S = 0.2
ROUND_WAIT_S = 30.0
MIN_BLOCK, MAX_BLOCK = 4096, 64 << 20


# ---------------------------------------------------------------------------- pure core


@dataclass(frozen=True)
class VerifyRequest:
    verify_id: str
    disk_id: str
    block_bytes: int


def parse_requests(document: Any) -> list[VerifyRequest]:
    """The verify requests of a settings document (malformed entries are logged and skipped)."""
    items = document.get("verify", []) if isinstance(document, dict) else []
    out = []
    for item in items if isinstance(items, list) else []:
        try:
            req = VerifyRequest(str(item["verify_id"]), str(item["disk_id"]), int(item["block_bytes"]))
            if req.block_bytes & (req.block_bytes - 1) or not MIN_BLOCK <= req.block_bytes <= MAX_BLOCK:
                raise ValueError("block_bytes")
        except (KeyError, TypeError, ValueError) as exc:
            log.error("verify_request_ignored", error=f"{type(exc).__name__}: {exc}")
            continue
        out.append(req)
    return out


class Verdict(Enum):
    SAME = "same"
    DIFFERS = "differs"
    BUSY = "busy"


def judge(first_local: bytes, remote: bytes, local_now: bytes) -> Verdict:
    """A suspect's verdict once the replica's hash was taken after the suspect's seq."""
    if remote == local_now:
        return Verdict.SAME
    if first_local == local_now:
        return Verdict.DIFFERS
    return Verdict.BUSY


@dataclass
class Suspect:
    offset: int
    length: int
    local: bytes  # the local hash at the last read
    target: int  # the seq holding every write made before that read


@dataclass
class Tally:
    """What a verify found so far."""

    blocks_compared: int = 0
    bytes_compared: int = 0
    suspects: dict[int, Suspect] = field(default_factory=dict)
    differing: set[int] = field(default_factory=set)
    rounds: int = 0

    def first_pass(self, offset: int, length: int, local: bytes, remote: bytes, target: int) -> None:
        self.blocks_compared += 1
        self.bytes_compared += length
        if local != remote:
            self.suspects[offset] = Suspect(offset, length, local, target)

    def settle(self, s: Suspect, remote: bytes, local_now: bytes, target_now: int) -> Verdict:
        verdict = judge(s.local, remote, local_now)
        if verdict is Verdict.SAME:
            del self.suspects[s.offset]
        elif verdict is Verdict.DIFFERS:
            del self.suspects[s.offset]
            self.differing.add(s.offset)
        else:
            s.local, s.target = local_now, target_now
        return verdict

    def groups(self, block: int, max_bytes: int) -> list[list[Suspect]]:
        """Suspects in runs of adjacent whole blocks (one hashes request each)."""
        out: list[list[Suspect]] = []
        for s in sorted(self.suspects.values(), key=lambda x: x.offset):
            last = out[-1][-1] if out else None
            if (last is not None and last.offset + last.length == s.offset and last.length == block
                    and sum(x.length for x in out[-1]) + s.length <= max_bytes):
                out[-1].append(s)
            else:
                out.append([s])
        return out


# ---------------------------------------------------------------------------- the job


class VerifyFailed(Exception):
    """The verify cannot go on (its pipeline went away, the hashes are refused)."""


class VerifyJob:
    def __init__(self, req: VerifyRequest, replicator: Replicator, *, rounds: int, request_bytes: int,
                 round_wait_s: float = ROUND_WAIT_S) -> None:
        self.req = req
        self.replicator = replicator
        self.rounds = max(1, rounds)
        self.request_bytes = max(req.block_bytes, request_bytes - request_bytes % req.block_bytes)
        self.round_wait_s = round_wait_s
        self.tally = Tally()
        self.pipe: Pipeline | None = None
        self.generation = 0

    async def wait_pipeline(self) -> Pipeline:
        """The disk's pipeline once it is protected (the replica is complete)."""
        while True:
            pipe = next((p for p in self.replicator.pipelines.values() if p.disk_id == self.req.disk_id), None)
            if pipe is not None and pipe.protected and not pipe.uploader.stale:
                self.pipe, self.generation = pipe, pipe.generation
                return pipe
            await asyncio.sleep(PIPELINE_POLL_S)

    def _alive(self) -> bool:
        pipe = self.pipe
        return pipe is not None and self.replicator.pipelines.get(pipe.index) is pipe and not pipe.uploader.stale

    def _target(self) -> int:
        """The seq that holds every write made so far on this disk."""
        assert self.pipe is not None
        pending = self.replicator.tracker.has_pending(self.pipe.index)
        return self.pipe.stream.next_seq - 1 + (1 if pending else 0)

    def _read_hash(self, offset: int, length: int) -> bytes:
        assert self.pipe is not None
        return digest(self.replicator.disks[self.pipe.index].pread(offset, length))

    async def run(self) -> dict[str, Any]:
        """Compare the whole disk, then settle the suspects; the result for the CS."""
        started = time.monotonic()
        pipe = self.pipe or await self.wait_pipeline()
        hashes = RemoteHashes(pipe.uploader, block_bytes=self.req.block_bytes, request_bytes=self.request_bytes)
        size = self.replicator.disks[pipe.index].size_bytes
        regions = [(0, size)]
        while self.tally.bytes_compared < size:
            offset, length = range_at(regions, self.tally.bytes_compared, self.request_bytes)
            remote = await self._fetch(hashes, offset, length)
            for (pos, n), theirs in zip(pieces(offset, remote.length, remote.block), remote.digests, strict=True):
                self.tally.first_pass(pos, n, self._read_hash(pos, n), theirs, self._target())
                await asyncio.sleep(0)
        while self.tally.suspects and self.tally.rounds < self.rounds:
            self.tally.rounds += 1
            await self._round(hashes)
        t = self.tally
        log.info("verify_done", verify_id=self.req.verify_id, disk=self.req.disk_id, gen=self.generation,
                 blocks=t.blocks_compared, differing=len(t.differing), unsettled=len(t.suspects), rounds=t.rounds)
        return {"state": "succeeded", "generation": self.generation, "block_bytes": self.req.block_bytes,
                "blocks_compared": t.blocks_compared, "bytes_compared": t.bytes_compared,
                "differing": sorted(t.differing), "unsettled": sorted(t.suspects), "rounds": t.rounds,
                "seconds": round(time.monotonic() - started, 3)}

    async def _fetch(self, hashes: RemoteHashes, offset: int, length: int) -> Hashes:
        try:
            remote = await hashes.fetch(offset, length, self._alive, block=self.req.block_bytes)
        except errors.StaleGeneration as exc:
            raise VerifyFailed(f"the disk's generation {self.generation} ended during the verify") from exc
        if remote is None:
            raise VerifyFailed("the replica's block hashes are not available")
        return remote

    async def _round(self, hashes: RemoteHashes) -> None:
        """Wait until the MT applied every suspect's seq, then judge each against a fresh hash."""
        assert self.pipe is not None
        target = max(s.target for s in self.tally.suspects.values())
        try:
            async with asyncio.timeout(self.round_wait_s):
                reached = await hashes.wait_applied(target, self._alive)
        except TimeoutError:
            reached = False
        if not self._alive():
            raise VerifyFailed(f"the disk's generation {self.generation} ended during the verify")
        if not reached:
            log.info("verify_round_wait_timeout", verify_id=self.req.verify_id, target=target)
            return
        block = self.req.block_bytes
        for group in self.tally.groups(block, self.request_bytes):
            remote = await self._fetch(hashes, group[0].offset, sum(s.length for s in group))
            covered = dict(zip((p[0] for p in pieces(remote.offset, remote.length, remote.block)), remote.digests,
                               strict=True))
            for s in group:
                theirs = covered.get(s.offset)
                if theirs is not None:  # else beyond what this answer covered: next round
                    self._judge(s, theirs, remote.applied)
                    await asyncio.sleep(0)

    def _judge(self, s: Suspect, theirs: bytes, applied: tuple[int, int]) -> None:
        """Re-read a suspect and judge it (the read, the seq it implies and the verdict are atomic)."""
        assert self.pipe is not None
        local_now, target_now = self._read_hash(s.offset, s.length), self._target()
        if self.pipe.stream.incomplete or applied < (self.generation, s.target):
            s.local, s.target = local_now, target_now  # no valid comparison now: next round
            return
        self.tally.settle(s, theirs, local_now, target_now)


class VerifyRunner:
    """Runs the verifies the settings ask for, one task each, and posts their results."""

    def __init__(self, cs: ApiClient, replicator: Replicator, *, timeout_s: float,
                 job_factory: Callable[[VerifyRequest], VerifyJob] | None = None) -> None:
        self.cs = cs
        self.replicator = replicator
        self.timeout_s = timeout_s
        cfg = replicator.cfg
        self._factory = job_factory or (lambda req: VerifyJob(req, replicator, rounds=cfg.verify_rounds,
                                                              request_bytes=cfg.hash_request_bytes))
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.finished: dict[str, dict[str, Any]] = {}  # verify id -> what was posted

    def sync(self, requests: list[VerifyRequest]) -> None:
        """Start the requests not running or finished yet (each waits for its disk's protected pipeline)."""
        for req in requests:
            if req.verify_id in self.tasks or req.verify_id in self.finished:
                continue
            self.tasks[req.verify_id] = asyncio.create_task(self._run(req), name=f"verify-{req.verify_id[:8]}")

    async def stop(self) -> None:
        await cancel_and_wait(list(self.tasks.values()))
        self.tasks.clear()

    async def _run(self, req: VerifyRequest) -> None:
        log.info("verify_started", verify_id=req.verify_id, disk=req.disk_id, block_bytes=req.block_bytes)
        job = self._factory(req)
        result: dict[str, Any]
        try:
            pipe = await job.wait_pipeline()
            await self._post(req, {"state": "running", "generation": pipe.generation})
            result = await job.run()
        except (VerifyFailed, OSError) as exc:
            log.warning("verify_failed", verify_id=req.verify_id, disk=req.disk_id, error=str(exc))
            result = {"state": "failed", "error": str(exc) or type(exc).__name__,
                      **({"generation": job.generation} if job.generation else {})}
        except errors.DrlabError as exc:  # the CS refused the start (finished or unknown verify)
            log.error("verify_start_refused", verify_id=req.verify_id, code=exc.code, error=exc.message)
            self._finish(req, {"state": "refused", "error": exc.message})
            return
        try:
            await self._post(req, result)
        except errors.DrlabError as exc:
            log.error("verify_result_refused", verify_id=req.verify_id, code=exc.code, error=exc.message)
        self._finish(req, result)

    def _finish(self, req: VerifyRequest, result: dict[str, Any]) -> None:
        self.finished[req.verify_id] = result
        self.tasks.pop(req.verify_id, None)

    async def _post(self, req: VerifyRequest, body: dict[str, Any]) -> None:
        path = f"/v1/disks/{req.disk_id}/verify/{req.verify_id}"
        await retrying(lambda: self.cs.post(path, body, timeout_s=self.timeout_s), what="verify-result")
