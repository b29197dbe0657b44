"""Batcher: turns tracker cuts into numbered change batches.

Pure core (:class:`Batcher`) plus a small clock (:class:`BatchClock`) that cuts every
``batch_max_ms``. Rules:
- all watched disks are cut at the same boundary (same ``wnum_hi``), in write order;
- a disk with nothing new yields no batch (except to carry a resync flag);
- seq starts at the stream's ``next_seq`` and has no gaps per (disk, generation);
- while a stream resyncs its batches are RESYNC / accuracy NONE; the first one carries
  RESYNC_START, the one carrying the last resync record (possibly otherwise empty) carries
  RESYNC_DONE; after that batches are DATA / EXACT.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.tasks import cancel_and_wait
from agent.tracker import Cut, Tracker
from common import logging as dlog
from common.wire.batch import Accuracy, ChangeBatch, Flags, Mode

log = dlog.get("drlab.agent.batcher")


@dataclass
class DiskStream:
    """Numbering state of one disk's pipeline under one generation."""

    index: int
    disk_id: bytes
    generation: int
    next_seq: int = 1
    resyncing: bool = False
    resync_started: bool = False
    resync_done_seq: int = 0


class Batcher:
    def __init__(self, tracker: Tracker, batch_max_bytes: int) -> None:
        self.tracker = tracker
        self.batch_max_bytes = batch_max_bytes
        self.streams: dict[int, DiskStream] = {}

    def open(self, stream: DiskStream) -> None:
        """Start a pipeline: the tracker watches the disk from now on."""
        self.streams[stream.index] = stream
        self.tracker.watch(stream.index)

    def close(self, index: int) -> DiskStream | None:
        self.tracker.unwatch(index)
        return self.streams.pop(index, None)

    def size_due(self) -> bool:
        return self.tracker.max_pending_bytes() >= self.batch_max_bytes

    def cut_all(self, now_ns: int) -> list[ChangeBatch]:
        """One batch per disk that changed, all at the same boundary."""
        batches = []
        for index in sorted(self.streams):
            batch = self.cut_disk(index, now_ns)
            if batch is not None:
                batches.append(batch)
        return batches

    def cut_disk(self, index: int, now_ns: int) -> ChangeBatch | None:
        stream = self.streams[index]
        cut = self.tracker.cut(index, now_ns)
        if cut is None:
            return None
        return self._stamp(stream, cut)

    def _stamp(self, stream: DiskStream, cut: Cut) -> ChangeBatch:
        seq = stream.next_seq
        stream.next_seq += 1
        mode, accuracy, flags = Mode.DATA, Accuracy.EXACT, 0
        if stream.resyncing:
            mode, accuracy = Mode.RESYNC, Accuracy.NONE
            if not stream.resync_started:
                flags |= Flags.RESYNC_START
                stream.resync_started = True
            if cut.resync_done:
                flags |= Flags.RESYNC_DONE
                stream.resyncing = False
                stream.resync_done_seq = seq
        return ChangeBatch(disk_id=stream.disk_id, generation=stream.generation, seq=seq,
                           wnum_first=cut.wnum_first, wnum_hi=cut.wnum_hi, t_first_ns=cut.t_first_ns,
                           t_last_ns=cut.t_last_ns, mode=mode, accuracy=accuracy, flags=int(flags),
                           records=cut.records)


Emit = Callable[[list[ChangeBatch]], None]


class BatchClock:
    """Cuts every ``interval_s`` (and on demand when a disk reaches the size bound)."""

    def __init__(self, batcher: Batcher, interval_s: float, emit: Emit,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.batcher = batcher
        self.interval_s = interval_s
        self._emit = emit
        self._clock_ns = clock_ns
        self._task: asyncio.Task[None] | None = None

    def cut_now(self) -> int:
        batches = self.batcher.cut_all(self._clock_ns())
        if batches:
            self._emit(batches)
        return len(batches)

    def cut_if_full(self) -> None:
        if self.batcher.size_due():
            self.cut_now()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batch-clock")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.cut_now()
