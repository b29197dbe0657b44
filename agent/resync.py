"""Initial replication (and full resync): copy the whole disk into the change stream.

The job reads the disk in ``chunk_bytes`` pieces and records each as a RESYNC record in the
tracker, in the event loop between client writes: a read and its recording happen with no
``await`` in between, so a chunk read after write N contains write N, and any write after it
is tracked after it. Replaying the stream in order therefore rebuilds the disk exactly.

When the replica is known to start zero-filled (a first replication) all-zero chunks and holes
are skipped; otherwise (a resync over an existing replica) every chunk travels. The job waits for
back-pressure room before each chunk and yields to the event loop between chunks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from agent.backlog import Backlog
from agent.disk import DiskImage
from agent.tracker import Tracker
from common import logging as dlog

log = dlog.get("drlab.agent.resync")


class ResyncJob:
    def __init__(self, disk: DiskImage, index: int, tracker: Tracker, backlog: Backlog, *, chunk_bytes: int,
                 skip_zero: bool, on_chunk: Callable[[], None], extents: list[tuple[int, int]] | None = None,
                 reason: str = "initial", clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.disk = disk
        self.index = index
        self.tracker = tracker
        self.backlog = backlog
        self.chunk_bytes = max(4096, chunk_bytes)
        self.skip_zero = skip_zero
        self._on_chunk = on_chunk
        self._clock_ns = clock_ns
        self._zero = bytes(self.chunk_bytes)
        self.reason = reason
        # the regions to copy, in offset order (None: the whole disk); progress counts their bytes
        self.extents = None if extents is None else sorted(extents)
        self.bytes_total = disk.size_bytes if extents is None else sum(n for _, n in extents)
        self.bytes_done = 0
        self.bytes_sent = 0
        self.done = False

    @property
    def percent(self) -> float:
        return 100.0 * self.bytes_done / self.bytes_total if self.bytes_total else 100.0

    async def run(self) -> None:
        """Copy the disk; returns once the last chunk (and the done marker) is recorded."""
        log.info("resync_started", disk=self.disk.name, bytes_total=self.bytes_total, skip_zero=self.skip_zero)
        while self.bytes_done < self.bytes_total:
            await self.backlog.wait_room()
            if not self.tracker.watching(self.index):
                log.info("resync_abandoned", disk=self.disk.name, bytes_done=self.bytes_done)
                return
            self.step()
            self._on_chunk()
            await asyncio.sleep(0)
        self.tracker.mark_resync_done(self.index, self._clock_ns())
        self.done = True
        self._on_chunk()
        log.info("resync_copied", disk=self.disk.name, bytes_sent=self.bytes_sent)

    def step(self) -> None:
        """Read and record the next chunk (synchronously: the read and the record are atomic)."""
        if self.extents is not None:
            self._step_extents()
            return
        offset = self.bytes_done
        if self.skip_zero:
            offset = self._skip_hole(offset)
            if offset >= self.bytes_total:
                self.bytes_done = self.bytes_total
                return
        length = min(self.chunk_bytes, self.bytes_total - offset)
        data = self.disk.pread(offset, length)
        if not (self.skip_zero and data == self._zero[:length]):
            self.tracker.record_resync(self.index, offset, data, self._clock_ns())
            self.bytes_sent += length
        self.bytes_done = offset + length

    def _step_extents(self) -> None:
        """The next chunk of the listed regions (``bytes_done`` counts bytes of the regions)."""
        assert self.extents is not None
        skip = self.bytes_done
        for off, length in self.extents:
            if skip >= length:
                skip -= length
                continue
            n = min(self.chunk_bytes, length - skip)
            data = self.disk.pread(off + skip, n)
            self.tracker.record_resync(self.index, off + skip, data, self._clock_ns())
            self.bytes_sent += n
            self.bytes_done += n
            return
        self.bytes_done = self.bytes_total

    def _skip_hole(self, offset: int) -> int:
        nxt = self.disk.next_data(offset)
        if nxt <= offset:
            return offset
        return max(offset, nxt - nxt % self.chunk_bytes)
