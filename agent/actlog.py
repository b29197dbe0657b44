"""Activity log: hot extents are persisted before they are written, so that a crash of the
agent (or of its machine) needs a resync of the hot extents only, never of the whole disk.

Rules:
- a write first marks the extents it touches; if one was cold, the write waits until the log
  holding it is durable (:meth:`ActivityLog.ensure`; concurrent writers share one flush);
- every cut batch notes its seq on the extents its records touch; an extent carried over from
  before (a restart, a new generation) is *pinned* until the stream's next RESYNC_DONE batch
  (or, on a clean restart in the same generation, its last seq before the restart);
- an extent cools when its last seq is applied at the MT, nothing pending in the tracker
  touches it, and it has not been written for ``linger_s``; cooling is persisted lazily (a log
  that says "hot" for a cold extent only costs a little resync, never correctness);
- the log is per machine: :mod:`common.wire.actlog` slots in ``data_dir/actlog.bin``, both
  allocated when it is opened (a full disk then cannot fail a flush); a flush that fails anyway
  fails the write waiting for it (the workload sees an I/O error, nothing is tracked unlogged)
  and is retried in the same slot, so the other one keeps the last durable state.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

from agent.regions import Bitmap
from common import logging as dlog
from common.wire import actlog as wal

log = dlog.get("drlab.agent.actlog")

FILE_NAME = "actlog.bin"
PINNED = 1 << 62  # "last seq" of an extent that waits for the stream's next RESYNC_DONE batch


class ActivityLog:
    def __init__(self, path: Path, disks: list[tuple[int, int]], extent_bytes: int, linger_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.extent_bytes = extent_bytes
        self.linger_s = linger_s
        self._clock = clock
        self.sizes = dict(disks)
        self.hot = {index: Bitmap(size, extent_bytes) for index, size in disks}
        self.last_seq: dict[int, dict[int, int]] = {index: {} for index, _ in disks}
        self.touched: dict[int, dict[int, float]] = {index: {} for index, _ in disks}
        self._slot = wal.slot_size(disks, extent_bytes)
        self._counter = 0
        self._version = 0  # bumped by every change of the hot sets
        self._durable = 0  # version last made durable
        self._marked: dict[tuple[int, int], int] = {}  # (disk, extent) -> version that set it
        self._lock = asyncio.Lock()
        self._fd = -1
        self.flushes = 0

    # ------------------------------------------------------------ file

    def open(self) -> dict[int, list[tuple[int, int]]] | None:
        """Open (creating) the file; the hot extents it held per disk, or None when the file
        existed but held no valid slot (then nothing is known: resync whole disks)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        # both slots' space is taken now: a full disk later cannot fail (or tear) a flush
        os.posix_fallocate(self._fd, 0, 2 * self._slot)
        raw = [os.pread(self._fd, self._slot_of(i)[1], self._slot_of(i)[0]) for i in (0, 1)]
        if not any(any(r) for r in raw):
            return {}  # never flushed: no write was let through yet
        snap = wal.pick(raw)
        if snap is None:
            log.warning("activity_log_unreadable", path=str(self.path))
            return None
        self._counter = snap.counter
        return {d.index: self._extents_of(snap, d) for d in snap.disks}

    def _extents_of(self, snap: wal.Snapshot, disk: wal.DiskBits) -> list[tuple[int, int]]:
        if disk.index not in self.sizes or disk.size_bytes != self.sizes[disk.index] \
                or snap.extent_bytes != self.extent_bytes:
            return [(0, self.sizes.get(disk.index, disk.size_bytes))]  # shape changed: all of it
        return Bitmap.from_bytes(disk.size_bytes, snap.extent_bytes, disk.bits).extents()

    def _slot_of(self, i: int) -> tuple[int, int]:
        return i * self._slot, self._slot

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # ------------------------------------------------------------ marking

    def restore(self, index: int, extents: list[tuple[int, int]], seq: int = PINNED) -> None:
        """Mark extents hot from a previous run (pinned, or up to ``seq``)."""
        now = self._clock()
        for off, length in extents:
            for e in self.hot[index].set_range(off, length):
                self._marked[(index, e)] = self._version
            for e in self.hot[index].blocks_of(off, length):
                self.last_seq[index][e] = seq
                self.touched[index][e] = now
        self._version += 1

    def pin_all(self, index: int) -> None:
        """A new stream starts: every hot extent of the disk waits for its RESYNC_DONE batch."""
        for e in self.hot[index].blocks():
            self.last_seq[index][e] = PINNED

    def mark(self, index: int, offset: int, length: int) -> bool:
        """Note a write about to happen; True when the caller must :meth:`ensure` durability."""
        bm, now = self.hot[index], self._clock()
        wait = False
        for e in bm.blocks_of(offset, length):
            self.touched[index][e] = now
            if bm.set_block(e):
                self._version += 1
                self._marked[(index, e)] = self._version
                wait = True
            elif self._marked.get((index, e), 0) > self._durable:
                wait = True
        return wait

    async def ensure(self) -> None:
        """Return once every extent marked so far is durable in the file."""
        target = self._version
        while self._durable < target:
            await self.flush()

    def note_cut(self, index: int, seq: int, extents: list[tuple[int, int]], done: bool) -> None:
        """A batch with ``seq`` touching ``extents`` was cut; ``done``: it carries RESYNC_DONE."""
        seqs = self.last_seq[index]
        bm = self.hot[index]
        for off, length in extents:
            for e in bm.blocks_of(off, length):
                if bm.test(e) and seqs.get(e, 0) != PINNED:
                    seqs[e] = seq
        if done:
            for e, s in seqs.items():
                if s == PINNED:
                    seqs[e] = seq

    def cool(self, index: int, applied_seq: int, busy: Callable[[int, int], bool]) -> int:
        """Cool the extents of disk ``index`` whose writes are applied up to ``applied_seq``;
        ``busy(offset, length)`` says whether the tracker still holds changes there."""
        bm, seqs, touched = self.hot[index], self.last_seq[index], self.touched[index]
        now, cooled = self._clock(), 0
        for e in list(bm.blocks()):
            seq = seqs.get(e)
            if seq is None or seq > applied_seq or now - touched.get(e, 0.0) < self.linger_s:
                continue
            if busy(e * self.extent_bytes, self.extent_bytes):
                continue
            bm.clear_block(e)
            seqs.pop(e, None)
            touched.pop(e, None)
            self._marked.pop((index, e), None)
            cooled += 1
        if cooled:
            self._version += 1
        return cooled

    def forget(self, index: int) -> None:
        """The disk is no longer protected: nothing of it is hot."""
        if self.hot[index]:
            self.hot[index] = Bitmap(self.sizes[index], self.extent_bytes)
            self.last_seq[index].clear()
            self.touched[index].clear()
            self._version += 1

    def extents(self, index: int) -> list[tuple[int, int]]:
        return self.hot[index].extents()

    def hot_bytes(self, index: int) -> int:
        return sum(length for _, length in self.extents(index))

    @property
    def dirty(self) -> bool:
        return self._version > self._durable

    # ------------------------------------------------------------ flushing

    async def flush(self) -> None:
        """Write the current hot sets to the next slot and fdatasync (one at a time)."""
        async with self._lock:
            version = self._version
            if self._durable >= version:
                return
            counter = self._counter + 1  # advanced once written: a failed flush is retried in the same
            data = wal.encode(self._snapshot(counter))  # slot, never in the one holding the last good state
            offset = self._slot_of(counter % 2)[0]
            await asyncio.to_thread(self._write, offset, data.ljust(self._slot, b"\0"))
            self._counter, self._durable = counter, version
            self.flushes += 1

    def flush_sync(self) -> None:
        """The same, blocking (for a clean stop)."""
        if self._fd < 0 or self._durable >= self._version:
            return
        counter, version = self._counter + 1, self._version
        self._write(self._slot_of(counter % 2)[0], wal.encode(self._snapshot(counter)).ljust(self._slot, b"\0"))
        self._counter, self._durable = counter, version

    def _snapshot(self, counter: int) -> wal.Snapshot:
        disks = tuple(wal.DiskBits(i, self.sizes[i], bm.nbits, bm.to_bytes()) for i, bm in sorted(self.hot.items()))
        return wal.Snapshot(counter, self.extent_bytes, disks)

    def _write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a short write is continued: a torn slot must never be reported durable
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n
        os.fdatasync(self._fd)
