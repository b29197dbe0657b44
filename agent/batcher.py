"""Batcher: turns tracker cuts into numbered change batches.

Pure core (:class:`Batcher`) plus a small clock (:class:`BatchClock`) that cuts every
``batch_max_ms``. Rules:
- all watched disks are cut at the same boundary (same ``wnum_hi``), in write order; while any
  disk of the machine changes, an idle disk still gets an (empty) batch at least every
  ``idle_mark_ns``, so every disk's latest boundary stays close to the machine's;
- a disk with nothing new yields no batch otherwise (except to carry a resync flag);
- seq starts at the stream's ``next_seq`` and has no gaps per (disk, generation);
- a stream is *incomplete* while a copy (resync job) runs or its dirty bitmap is not drained:
  its batches are RESYNC (copy) or BITMAP mode with accuracy NONE; the first one carries
  RESYNC_START, the one that completes both carries RESYNC_DONE;
- otherwise a batch is METADATA / APPROXIMATE when any of its changes were tracked in metadata
  mode, else DATA / EXACT.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from agent.tracker import Cut, Read, Tracker, TrackMode
from common import logging as dlog
from common.tasks import cancel_and_wait
from common.wire.batch import Accuracy, ChangeBatch, Flags, Mode

log = dlog.get("drlab.agent.batcher")

IDLE_MARK_NS = 250_000_000


@dataclass
class DiskStream:
    """Numbering state of one disk's pipeline under one generation."""

    index: int
    disk_id: bytes
    generation: int
    next_seq: int = 1
    resyncing: bool = False  # a copy (resync job) is running
    resync_started: bool = False  # RESYNC_START went out for the current incomplete stretch
    resync_done_seq: int = 0
    bitmap: bool = False  # a dirty bitmap is being drained
    last_cut_ns: int = 0

    @property
    def incomplete(self) -> bool:
        return self.resyncing or self.bitmap


@dataclass
class Stamped:
    """A batch and the extents its records touch (for the activity log)."""

    batch: ChangeBatch
    extents: list[tuple[int, int]]
    folded: bool = False  # the cut moved the disk to bitmap mode (regions too large for a batch)


class Batcher:
    def __init__(self, tracker: Tracker, batch_max_bytes: int, reader: Callable[[int], Read] | None = None,
                 idle_mark_ns: int = IDLE_MARK_NS) -> None:
        self.tracker = tracker
        self.batch_max_bytes = batch_max_bytes
        self.idle_mark_ns = idle_mark_ns
        self._reader = reader
        self.streams: dict[int, DiskStream] = {}

    def open(self, stream: DiskStream, size_bytes: int = 1 << 62) -> None:
        """Start a pipeline: the tracker watches the disk from now on."""
        self.streams[stream.index] = stream
        self.tracker.watch(stream.index, size_bytes)

    def close(self, index: int) -> DiskStream | None:
        self.tracker.unwatch(index)
        return self.streams.pop(index, None)

    def size_due(self) -> bool:
        return self.tracker.max_pending_bytes() >= self.batch_max_bytes

    def cut_all(self, now_ns: int) -> list[ChangeBatch]:
        return [s.batch for s in self.cut_all_stamped(now_ns)]

    def cut_all_stamped(self, now_ns: int) -> list[Stamped]:
        """One batch per disk that changed (or idle too long), all at the same boundary."""
        changed = [i for i in sorted(self.streams) if self.tracker.has_pending(i)]
        if not changed:
            return []
        for index, stream in self.streams.items():
            if index not in changed and now_ns - stream.last_cut_ns >= self.idle_mark_ns:
                self.tracker.force(index, now_ns)
        out = []
        for index in sorted(self.streams):
            stamped = self.cut_disk(index, now_ns)
            if stamped is not None:
                out.append(stamped)
        return out

    def cut_disk(self, index: int, now_ns: int) -> Stamped | None:
        stream = self.streams[index]
        read = self._reader(index) if self._reader else None
        cut = self.tracker.cut(index, now_ns, read, drain_bytes=self.batch_max_bytes)
        if cut is None:
            return None
        stream.last_cut_ns = now_ns
        extents = [(r.offset, len(r.data)) for r in cut.records]
        return Stamped(self._stamp(stream, cut), extents, cut.folded)

    def _stamp(self, stream: DiskStream, cut: Cut) -> ChangeBatch:
        seq = stream.next_seq
        stream.next_seq += 1
        if cut.bitmap_started:
            stream.bitmap = True
        copying = stream.resyncing
        incomplete = stream.incomplete
        flags = 0
        if incomplete and not stream.resync_started:
            flags |= Flags.RESYNC_START
            stream.resync_started = True
        if cut.resync_done:
            stream.resyncing = False
        if cut.bitmap_drained:
            stream.bitmap = False
        if incomplete and not stream.incomplete:
            flags |= Flags.RESYNC_DONE
            stream.resync_started = False
            stream.resync_done_seq = seq
        mode, accuracy = _mode_of(incomplete, copying, cut.mode)
        return ChangeBatch(disk_id=stream.disk_id, generation=stream.generation, seq=seq,
                           wnum_first=cut.wnum_first, wnum_hi=cut.wnum_hi, t_first_ns=cut.t_first_ns,
                           t_last_ns=cut.t_last_ns, mode=mode, accuracy=accuracy, flags=int(flags),
                           tags=cut.tags, records=cut.records)


def _mode_of(incomplete: bool, copying: bool, tracked: TrackMode) -> tuple[Mode, Accuracy]:
    if incomplete:
        return (Mode.RESYNC if copying else Mode.BITMAP), Accuracy.NONE
    if tracked is TrackMode.DATA:
        return Mode.DATA, Accuracy.EXACT
    return Mode.METADATA, Accuracy.APPROXIMATE


class BatchClock:
    """Calls ``tick`` every ``interval_s`` (the replicator decides whether to cut)."""

    def __init__(self, interval_s: float, tick: Callable[[], object]) -> None:
        self.interval_s = interval_s
        self._tick = tick
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batch-clock")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self._tick()
            except Exception as exc:  # a failed tick must not stop the clock; log and go on
                log.error("batch_tick_failed", error=f"{type(exc).__name__}: {exc}")
