"""Resync: bring the replica to the source while new writes keep being tracked (initial
replication, repair after a crash or a lost PS, a user's or a verify's request).

Two ways, chosen by :class:`ResyncJob`'s ``hashes``:

**Checksum** (``hashes`` given: the replica holds data). The pipeline's tracker already watches
the disk. The job first has seq 1 of the new generation cut at once (empty, RESYNC_START), then
waits until the PS reports that the MT applied it. From then on no batch of an older generation
can ever be applied (the MT discards them), so the replica changes only through this stream.
Then, range after range, it fetches the MT's block hashes (xxh3-128 per block, through the PS)
and, for each block, reads the local block, hashes it and records it (a RESYNC record) only if
the hashes differ — read, hash, compare and record with no ``await`` in between.

Why that is enough. Every write since the watch began is in the stream, in order, after the
records made before it. Take a block and the hash the MT gave for it (taken after seq 1 was
applied). Its bytes that no write touched since the watch began are unchanged on the source (since
the watch) and on the replica (since seq 1): the comparison of the whole block decides them — if
the hashes are equal they are already equal, if not the block is sent as read now, ordered after
every write so far. Its bytes that a write touched end right whatever we do: the stream carries
that write and every later one, and the block, if sent, is ordered by its read. The order of the
remote hash and the local read does not matter; only the read and its record must be atomic.

**Copy** (no ``hashes``: a first replication onto a zero-filled replica). The job reads every
region in ``chunk_bytes`` pieces and records them; with ``skip_zero`` holes and all-zero chunks
are skipped, as the replica already reads zeros there.

Both walk ``regions`` (the given extents, merged, or the whole disk); ``bytes_done`` is the
position through them (a clean stop resumes there), ``bytes_compared`` and ``bytes_sent`` what
was hashed and what travelled. If the hashes cannot be had (the PS or MT refuses the route for
good), the rest is copied. The job waits for back-pressure room before each block and yields
to the event loop between blocks; it stops when the tracker no longer watches the disk (a
newer generation fenced it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import xxhash

from agent.backlog import Backlog
from agent.disk import DiskImage
from agent.tracker import Tracker
from agent.uploader import DiskUploader
from common import errors
from common import logging as dlog
from common.http import backoff_s

log = dlog.get("drlab.agent.resync")

READY_POLL_S = 0.2
NON_RETRIABLE_ATTEMPTS = 3

# ---------------------------------------------------------------------------- pure helpers


def digest(data: bytes) -> bytes:
    """A block's hash: xxh3-128 of its bytes (the MT hashes its replica the same way)."""
    return xxhash.xxh3_128_digest(data)


def merge_regions(extents: list[tuple[int, int]] | None, size_bytes: int) -> list[tuple[int, int]]:
    """Sorted, disjoint regions inside the disk covering ``extents`` (None: the whole disk)."""
    if extents is None:
        return [(0, size_bytes)]
    spans = sorted((max(0, off), min(size_bytes, off + n)) for off, n in extents if n > 0)
    merged: list[list[int]] = []
    for start, end in spans:
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e - s) for s, e in merged]


def range_at(regions: list[tuple[int, int]], done: int, max_bytes: int) -> tuple[int, int]:
    """The next contiguous disk range from position ``done`` (bytes through ``regions``), at most
    ``max_bytes`` long and never across two regions; (offset, 0) at the end."""
    skip = done
    for off, n in regions:
        if skip < n:
            return off + skip, min(max_bytes, n - skip)
        skip -= n
    return regions[-1][0] + regions[-1][1] if regions else 0, 0


def pieces(offset: int, length: int, block: int) -> list[tuple[int, int]]:
    """How a range is cut in blocks: from ``offset`` on, the last one possibly short."""
    end = offset + length
    return [(pos, min(block, end - pos)) for pos in range(offset, end, block)]


@dataclass(frozen=True)
class Hashes:
    """The MT's answer for one range: the replica's block hashes as of (at least) ``applied``."""

    offset: int
    length: int
    block: int
    applied: tuple[int, int]
    digests: list[bytes]


def parse_hashes(body: Any, offset: int, length: int, block: int) -> Hashes:
    """Check a hashes answer (never trusted): the range it covers must start at ``offset`` and
    hold at most ``length`` bytes in whole blocks (the MT may cover less: one answer is capped)."""
    try:
        applied = (int(body["applied"][0]), int(body["applied"][1]))
        got_off, got_len, got_block = int(body["offset"]), int(body["length"]), int(body["block"])
        raw = list(body["hashes"])
        digests = [bytes.fromhex(h) for h in raw]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise errors.Unavailable(f"malformed hashes answer: {type(exc).__name__}") from exc
    if (got_off, got_block) != (offset, block) or not 0 < got_len <= length:
        raise errors.Unavailable("the hashes answer covers another range")
    if got_len != length and got_len % block:
        raise errors.Unavailable("the hashes answer ends inside a block")
    if len(digests) != len(pieces(offset, got_len, block)) or any(len(d) != 16 for d in digests):
        raise errors.Unavailable("the hashes answer has a wrong number of hashes")
    return Hashes(offset, got_len, block, applied, digests)


# ---------------------------------------------------------------------------- remote hashes


class RemoteHashes:
    """The MT's block hashes of one disk under one generation, asked through the disk's PS.

    :meth:`fetch` retries what is retriable (503 ``not_ready``, transport, with Retry-After) for
    as long as ``alive()``; it raises :class:`errors.StaleGeneration` (the generation is fenced)
    and returns None when the route refuses for good (the caller copies instead)."""

    def __init__(self, uploader: DiskUploader, *, block_bytes: int, request_bytes: int,
                 max_backoff_s: float = 5.0) -> None:
        self.uploader = uploader
        self.block_bytes = block_bytes
        self.request_bytes = max(block_bytes, request_bytes - request_bytes % block_bytes)
        self.max_backoff_s = max_backoff_s
        self.requests = 0

    @property
    def generation(self) -> int:
        return self.uploader.generation

    def alive(self) -> bool:
        return not self.uploader.stale

    async def wait_applied(self, seq: int, alive: Callable[[], bool], poll_s: float = READY_POLL_S) -> bool:
        """Wait until the PS reports that the MT applied ``seq`` of this generation; False if
        ``alive()`` turned false first."""
        while alive() and self.alive():
            if self.uploader.mt_applied >= seq:
                return True
            try:
                await self.uploader.refresh_status()
            except errors.DrlabError as exc:
                log.debug("status_poll_failed", disk=self.uploader.disk_id, error=exc.message)
            if self.uploader.mt_applied >= seq:
                return True
            await asyncio.sleep(poll_s)
        return False

    async def fetch(self, offset: int, length: int, alive: Callable[[], bool],
                    block: int | None = None) -> Hashes | None:
        block = block or self.block_bytes
        params = {"generation": self.generation, "offset": offset, "length": length, "block": block}
        path = f"/v1/disks/{self.uploader.disk_id}/hashes"
        attempt = refused = 0
        while alive() and self.alive():
            try:
                self.requests += 1
                body = await self.uploader.client.get(path, params=params, timeout_s=self.uploader.timeout_s)
                return parse_hashes(body, offset, length, block)
            except errors.StaleGeneration:
                raise
            except errors.DrlabError as exc:
                attempt += 1
                refused += 0 if exc.retriable else 1
                if refused >= NON_RETRIABLE_ATTEMPTS:
                    log.warning("hashes_refused", disk=self.uploader.disk_id, gen=self.generation, code=exc.code,
                                error=exc.message)
                    return None
                delay = exc.retry_after_s if exc.retry_after_s is not None else backoff_s(
                    attempt, max_s=self.max_backoff_s)
                log.info("hashes_retry", disk=self.uploader.disk_id, code=exc.code, delay_s=round(delay, 3))
                await asyncio.sleep(delay)
        raise errors.StaleGeneration("the pipeline stopped while waiting for hashes")


# ---------------------------------------------------------------------------- the job


class ResyncJob:
    def __init__(self, disk: DiskImage, index: int, tracker: Tracker, backlog: Backlog, *, chunk_bytes: int,
                 skip_zero: bool, on_chunk: Callable[[], None], extents: list[tuple[int, int]] | None = None,
                 reason: str = "initial", clock_ns: Callable[[], int] = time.time_ns,
                 hashes: RemoteHashes | None = None, cut_now: Callable[[], object] | None = None) -> None:
        self.disk = disk
        self.index = index
        self.tracker = tracker
        self.backlog = backlog
        self.chunk_bytes = max(4096, chunk_bytes)
        self.skip_zero = skip_zero
        self._on_chunk = on_chunk
        self._cut_now = cut_now
        self._clock_ns = clock_ns
        self._zero = bytes(self.chunk_bytes)
        self.reason = reason
        self.hashes = hashes
        # the regions to bring over, in offset order (None: the whole disk)
        self.extents = None if extents is None else merge_regions(extents, disk.size_bytes)
        self.regions = merge_regions(extents, disk.size_bytes)
        self.bytes_total = sum(n for _, n in self.regions)
        self.bytes_done = 0  # position through the regions
        self.bytes_compared = 0  # hashed and compared with the replica's hash
        self.bytes_sent = 0  # recorded into the stream
        self.blocks_differing = 0
        self.started_ns = 0
        self.ended_ns = 0
        self.done = False

    @property
    def mode(self) -> str:
        return "copy" if self.hashes is None else "checksum"

    @property
    def percent(self) -> float:
        return 100.0 * self.bytes_done / self.bytes_total if self.bytes_total else 100.0

    def _watching(self) -> bool:
        return self.tracker.watching(self.index)

    async def run(self) -> None:
        """Bring the regions over; returns once the last record (and the done marker) is recorded."""
        self.started_ns = self._clock_ns()
        log.info("resync_started", disk=self.disk.name, reason=self.reason, mode=self.mode,
                 bytes_total=self.bytes_total, bytes_done=self.bytes_done, skip_zero=self.skip_zero)
        try:
            if self.hashes is not None and self.bytes_total and not await self._ready():
                return self._abandon()
            while self.bytes_done < self.bytes_total:
                if self.hashes is not None:
                    if not await self._compare_range():
                        return self._abandon()
                elif not await self._copy_chunk():
                    return self._abandon()
        except errors.StaleGeneration:
            return self._abandon()
        self.tracker.mark_resync_done(self.index, self._clock_ns())
        self.done = True
        self.ended_ns = self._clock_ns()
        self._on_chunk()
        log.info("resync_copied", disk=self.disk.name, reason=self.reason, mode=self.mode,
                 bytes_total=self.bytes_total, bytes_compared=self.bytes_compared, bytes_sent=self.bytes_sent,
                 blocks_differing=self.blocks_differing, disk_bytes=self.disk.size_bytes,
                 seconds=round((self.ended_ns - self.started_ns) / 1e9, 3))

    def _abandon(self) -> None:
        log.info("resync_abandoned", disk=self.disk.name, reason=self.reason, bytes_done=self.bytes_done)

    async def _ready(self) -> bool:
        """Have seq 1 cut now (empty, RESYNC_START) and wait until the MT applied it."""
        assert self.hashes is not None
        if not self._watching():
            return False
        self.tracker.mark_resync_start(self.index, self._clock_ns())
        if self._cut_now is not None:
            self._cut_now()
        else:
            self._on_chunk()
        ok = await self.hashes.wait_applied(1, self._watching)
        if ok:
            log.info("resync_hashes_ready", disk=self.disk.name, gen=self.hashes.generation)
        return ok

    # -- checksum ------------------------------------------------------------------------------

    async def _compare_range(self) -> bool:
        """Fetch the MT's hashes of the next range, then compare (and send) it block by block."""
        assert self.hashes is not None
        offset, length = range_at(self.regions, self.bytes_done, self.hashes.request_bytes)
        remote = await self.hashes.fetch(offset, length, self._watching)
        if remote is None:
            log.warning("resync_falls_back_to_copy", disk=self.disk.name, bytes_done=self.bytes_done)
            self.hashes = None
            return True
        for (pos, n), theirs in zip(pieces(offset, remote.length, remote.block), remote.digests, strict=True):
            await self.backlog.wait_room()
            if not self._watching():
                return False
            self.compare_block(pos, n, theirs)
            self._on_chunk()
            await asyncio.sleep(0)
        return True

    def compare_block(self, offset: int, length: int, theirs: bytes) -> bool:
        """Read, hash, compare and (if different) record one block, atomically; True if sent."""
        data = self.disk.pread(offset, length)
        self.bytes_compared += length
        self.bytes_done += length
        if digest(data) == theirs:
            return False
        self.tracker.record_resync(self.index, offset, data, self._clock_ns())
        self.bytes_sent += length
        self.blocks_differing += 1
        return True

    # -- copy ----------------------------------------------------------------------------------

    async def _copy_chunk(self) -> bool:
        await self.backlog.wait_room()
        if not self._watching():
            return False
        self.step()
        self._on_chunk()
        await asyncio.sleep(0)
        return True

    def step(self) -> None:
        """Read and record the next chunk (synchronously: the read and the record are atomic)."""
        offset, rest = range_at(self.regions, self.bytes_done, 1 << 62)
        if rest == 0:
            self.bytes_done = self.bytes_total
            return
        if self.skip_zero:
            hole = self._hole(offset, rest)
            if hole:
                self.bytes_done += hole
                return
        length = min(self.chunk_bytes, rest)
        data = self.disk.pread(offset, length)
        if not (self.skip_zero and data == self._zero[:length]):
            self.tracker.record_resync(self.index, offset, data, self._clock_ns())
            self.bytes_sent += length
        self.bytes_done += length

    def _hole(self, offset: int, rest: int) -> int:
        """Bytes to skip at ``offset``: up to the chunk holding the next data (``rest``: none)."""
        nxt = self.disk.next_data(offset)
        if nxt <= offset:
            return 0
        if nxt >= offset + rest:
            return rest
        return (nxt - offset) - (nxt - offset) % self.chunk_bytes
