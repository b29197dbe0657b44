"""The undo journal of one disk: ``journal/{disk_id}/{segno:08d}.seg`` (codec: common.wire.journal).

Crash points for fault-injection tests (common/crashpoints.py): ``DRLAB_MT_CRASH_AT=name[:n]`` or
``DRLAB_CRASH_AT=mt.name[:n]`` makes the process ``os._exit(137)`` the n-th time (default 1st) it
reaches point ``name``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from common import crashpoints, errors, tls
from common import logging as dlog
from common.wire import journal as wj
from mt.replica import Replica, fsync_dir, write_all
from mt.statefile import FLOOR_REMEDY, StateFile

log = dlog.get("drlab.mt.journal")

CRASH_POINTS = crashpoints.POINTS["mt"]  # the last two: mt/view.py commit


def crash_point(name: str) -> None:
    """Die like ``kill -9`` here when the configured MT crash point is ``name`` (tests only)."""
    crashpoints.hit("mt", name)


@dataclass(frozen=True)
class CommittedBatch:
    """Where a committed batch lives: undo records in ``[undo_off, commit_off)`` of ``segno``."""

    segno: int
    undo_off: int
    commit_off: int
    info: wj.CommitInfo


Extent = tuple[int, bytes]  # (replica offset, bytes)


def segment_name(segno: int) -> str:
    return f"{segno:08d}.seg"


FLOOR = "floor.json"  # retention (mt/retention.py): segments below "floor" are pruned
FLOOR_FORMAT = 1  # its "format" field (common/formats.py: none is 1)


class Journal:
    """Append-only undo journal of one disk. The rules:

    1. Undo before overwrite: a batch's undo records (the replica's bytes before the batch, for
       every region it writes) are appended and fdatasynced before the replica is touched.
    2. The commit record is appended (and fdatasynced) only after the replica writes are
       fdatasynced; commit records are the authority on which batches are applied.
    3. A batch's records never span segments: a new segment is started only between batches,
       once the current one has passed ``segment_max_bytes``. Segments are removed whole.
    4. Recovery on open: undo records after the last commit of the newest segment belong to a
       batch interrupted mid-apply. They are written back to the replica in reverse order, the
       replica is fsynced, and only then is the tail (with any torn or garbage bytes) truncated.
       Rolling back is idempotent (every undo record holds pre-batch bytes), so a crash during
       recovery is recovered the same way. Truncating without rolling back would corrupt every
       older recovery point.
    5. Pruning (mt/retention.py) first records the new floor durably (``floor.json``: segments
       below it are gone, and the key of the newest pruned point, the *boundary*, which stays a
       valid point without its commit record), then the catalog drops the pruned points, then the
       segments are unlinked. Open removes segments below the floor (a crash's leftovers) first.
    6. A failed append (ENOSPC on a full volume) never leaves a torn record before a good one: the
       apply rolls the replica back and cuts the journal back (:meth:`discard_after`); undo records
       already durable (failover views may have indexed them) stay and the next commit counts them
       (:meth:`note_abandoned`). Rolling back writes only the pages that differ, so it needs no space.
    """

    def __init__(self, directory: Path, disk_id: bytes, segment_max_bytes: int) -> None:
        self.directory = directory
        self.disk_id = disk_id
        self.segment_max_bytes = segment_max_bytes
        self.segno = 0
        self.pos = 0
        self._fd = -1
        self.pins: dict[str, int] = {}  # owner (e.g. a failover view) -> oldest segment it needs
        self.floor = 0  # segments below it are pruned (rule 5)
        self.boundary: tuple[int, int] | None = None  # the newest pruned point (still valid)
        self.abandoned: tuple[int, int] | None = None  # (offset, count): see note_abandoned
        self.log = log.bind(disk=disk_id.hex())

    def __repr__(self) -> str:
        return f"Journal({self.directory}, segno={self.segno}, pos={self.pos})"

    # -- open and recovery ---------------------------------------------------------------------

    def segments(self) -> list[int]:
        nums = []
        for p in self.directory.glob("*.seg"):
            if p.stem.isdigit():
                nums.append(int(p.stem))
        return sorted(nums)

    def path(self, segno: int) -> Path:
        return self.directory / segment_name(segno)

    def open(self, replica: Replica) -> list[CommittedBatch]:
        """Recover (rule 4) and return every committed batch, oldest first."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._load_floor()
        self.remove_pruned()
        segnos = self.segments()
        if not segnos:
            self._create(max(1, self.floor))
            return []
        committed: list[CommittedBatch] = []
        for segno in segnos[:-1]:
            batches, tail = self._scan(segno)
            committed += batches
            if tail:
                raise errors.MalformedBatch(f"segment {segno} has uncommitted records before the newest",
                                            code="journal_corrupt")
        last = segnos[-1]
        if os.path.getsize(self.path(last)) < wj.SEGMENT_HEADER_SIZE:
            self._create(last)
            return committed
        batches, tail = self._scan(last)
        committed += batches
        keep = batches[-1].commit_off + wj.COMMIT_SIZE if batches else wj.SEGMENT_HEADER_SIZE
        self._rollback_tail(last, tail, replica)
        self._truncate(last, keep)
        self._open_for_append(last, keep)
        return committed

    def _scan(self, segno: int) -> tuple[list[CommittedBatch], list[wj.UndoRecord]]:
        result = wj.scan_segment(self.path(segno))
        if result.header is None or result.header.disk_id != self.disk_id or result.header.segment_no != segno:
            raise errors.MalformedBatch(f"segment {segno} header is not this disk's", code="journal_corrupt")
        if result.tail is not None:
            self.log.warning("journal_torn_tail", segno=segno, valid_end=result.valid_end,
                             file_size=result.file_size, why=result.tail)
        batches: list[CommittedBatch] = []
        pending: list[wj.UndoRecord] = []
        start = wj.SEGMENT_HEADER_SIZE
        for offset, rec in result.records:
            if isinstance(rec, wj.UndoRecord):
                pending.append(rec)
                continue
            if rec.nundo != len(pending):
                self.log.error("journal_commit_count_mismatch", gen=rec.gen, seq=rec.seq, nundo=rec.nundo,
                               found=len(pending))
            batches.append(CommittedBatch(segno, start, offset, rec))
            pending = []
            start = offset + wj.COMMIT_SIZE
        return batches, pending

    def _rollback_tail(self, segno: int, tail: list[wj.UndoRecord], replica: Replica) -> None:
        if not tail:
            return
        gen, seq = tail[0].gen, tail[0].seq
        self.log.warning("journal_rollback", segno=segno, gen=gen, seq=seq, undo_records=len(tail))
        with open(self.path(segno), "rb") as f:
            extents = [(rec.offset, wj.read_undo_data(f, rec)) for rec in tail]
        half = len(extents) // 2
        for i, (offset, old) in enumerate(reversed(extents)):
            if i == half:
                crash_point("mid_rollback")
            restore_changed(replica, [(offset, old)])  # what is already so is not rewritten: a hole
        replica.sync()                                 # the batch never reached needs no space on a full volume

    def _truncate(self, segno: int, keep: int) -> None:
        path = self.path(segno)
        if os.path.getsize(path) == keep:
            return
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, keep)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.log.info("journal_truncated", segno=segno, size=keep)

    def _create(self, segno: int) -> None:
        path = self.path(segno)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, wj.encode_segment_header(self.disk_id, segno), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.directory)
        self._open_for_append(segno, wj.SEGMENT_HEADER_SIZE)

    def _open_for_append(self, segno: int, pos: int) -> None:
        self.close()
        self._fd = os.open(self.path(segno), os.O_WRONLY)
        self.segno, self.pos, self.abandoned = segno, pos, None

    # -- retention (rule 5) ----------------------------------------------------------------------

    def _load_floor(self) -> None:
        path = self.directory / FLOOR
        if not path.exists():
            return
        state = StateFile(path, "retention floor", FLOOR_REMEDY)  # damaged: StateError, the file kept
        doc = state.read(FLOOR_FORMAT)
        self.floor, self.boundary = state.integer(doc, "floor"), state.key(doc, "boundary")

    def mark_pruned(self, floor: int, boundary: tuple[int, int] | None) -> None:
        """Durably record that segments below ``floor`` are pruned, ``boundary`` the newest point
        in them (the caller deletes the catalog rows next, then calls :meth:`remove_pruned`)."""
        if floor > self.segno:
            raise ValueError(f"segment {self.segno} is being appended: cannot prune below {floor}")
        doc = {"format": FLOOR_FORMAT, "floor": floor, "boundary": list(boundary) if boundary else None}
        tls.durable_write(self.directory / FLOOR, json.dumps(doc).encode(), 0o600)
        self.floor, self.boundary = floor, boundary

    def remove_pruned(self) -> int:
        """Unlink the segments below the floor (oldest first); returns how many."""
        gone = [s for s in self.segments() if s < self.floor]
        for segno in gone:
            self.path(segno).unlink()
        if gone:
            fsync_dir(self.directory)
            self.log.info("journal_pruned", floor=self.floor, segments=len(gone))
        return len(gone)

    def size_of(self, segno: int) -> int:
        if segno == self.segno:
            return self.pos
        try:
            return os.path.getsize(self.path(segno))
        except FileNotFoundError:
            return 0

    # -- pins ----------------------------------------------------------------------------------

    def pin(self, owner: str, segno: int) -> None:
        """``owner`` needs segments ``segno`` and newer: pruning must keep them (in memory only:
        a view re-pins when it is reopened)."""
        self.pins[owner] = segno

    def unpin(self, owner: str) -> None:
        self.pins.pop(owner, None)

    def pinned_from(self) -> int | None:
        """The oldest segment some owner pins (None: nothing is pinned)."""
        return min(self.pins.values(), default=None)

    def prunable(self, segno: int) -> bool:
        """May segment ``segno`` be removed as far as pins go? (Never the current one.)"""
        pinned = self.pinned_from()
        return segno < self.segno and (pinned is None or segno < pinned)

    # -- commit of a failover view (mt/view.py) ---------------------------------------------------

    def truncate_after(self, segno: int, keep: int) -> None:
        """Forget every record after ``keep`` in segment ``segno``: later segments are removed
        (newest first) and appending continues there. The caller has made the replica the state
        at that point first: dropping undo records of batches still in the replica corrupts it.
        A pruned ``segno`` (the point is the retention boundary): nothing after it is kept."""
        if segno < self.floor:
            self.reset()
            return
        for later in reversed([s for s in self.segments() if s > segno]):
            self.path(later).unlink()
        fsync_dir(self.directory)
        self._truncate(segno, keep)
        self._open_for_append(segno, keep)
        self.log.info("journal_truncated_after", segno=segno, size=keep)

    def reset(self) -> None:
        """Forget every record: a fresh segment (numbering continues), then the older ones go,
        newest first (what a crash leaves is still a prefix of the journal)."""
        old = self.segments()
        self._create(max(max(old, default=0) + 1, self.floor))
        for segno in reversed(old):
            self.path(segno).unlink()
        fsync_dir(self.directory)
        self.log.info("journal_reset", segno=self.segno, removed=len(old))

    # -- append --------------------------------------------------------------------------------

    def append_undo(self, gen: int, seq: int, extents: Iterable[Extent]) -> int:
        """Append the undo records of one batch (not synced); returns the offset of the first."""
        start = self.pos
        for offset, old in extents:
            head, trailer = wj.encode_undo_parts(gen, seq, offset, old)
            self._write([head, old, trailer])
        return start

    def append_commit(self, info: wj.CommitInfo) -> int:
        offset = self.pos
        self._write([wj.encode_commit(info)])
        return offset

    def _write(self, parts: list[bytes]) -> None:
        total = sum(len(p) for p in parts)
        written = os.pwritev(self._fd, parts, self.pos)
        if written != total:
            write_all(self._fd, b"".join(parts)[written:], self.pos + written)
        self.pos += total

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def discard_after(self, keep: int) -> None:
        """Forget what a failed append (ENOSPC, EIO) left after ``keep`` in the current segment:
        appending continues at ``keep``, so a torn record never sits before a good one."""
        self._truncate(self.segno, keep)
        self.pos = keep

    def note_abandoned(self, undo_off: int, count: int) -> None:
        """``count`` durable undo records at ``undo_off`` belong to an apply that failed and was
        rolled back: the next commit record counts them (they hold the bytes of that moment, so
        rolling back through them is exact) and its batch's undo range starts there."""
        if self.abandoned is None:
            self.abandoned = (undo_off, count)
        else:
            self.abandoned = (self.abandoned[0], self.abandoned[1] + count)

    def rotate_if_full(self) -> None:
        """Between batches only (rule 3). A new segment that cannot be created (ENOSPC) is
        removed again and appending continues in the current one (tried again after the next batch)."""
        if self.pos >= self.segment_max_bytes:
            try:
                self._create(self.segno + 1)
            except OSError as exc:
                self.path(self.segno + 1).unlink(missing_ok=True)
                self.log.warning("journal_rotate_failed", segno=self.segno + 1, error=str(exc))
                return
            self.log.info("journal_rotated", segno=self.segno)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_undo_range(path: Path, start: int, end: int) -> list[Extent]:
    """The undo records of one committed batch: those in ``[start, end)`` of a segment."""
    extents: list[Extent] = []
    if start >= end:
        return extents
    with open(path, "rb") as f:
        for offset, rec in wj.scan(f, start):
            if offset >= end:
                break
            if not isinstance(rec, wj.UndoRecord):
                raise errors.MalformedBatch(f"commit record inside an undo range at {offset}", code="journal_corrupt")
            extents.append((rec.offset, wj.read_undo_data(f, rec)))
    return extents


def restore_changed(replica: Replica, extents: list[Extent], page: int = 4096) -> int:
    """Write back, newest extent first, only the ``page``-aligned pieces of ``extents`` that differ
    in the replica; returns the bytes written. After a failed apply (ENOSPC) the pieces the batch
    never reached stay as they are (a hole stays a hole), so a full volume can still be rolled back."""
    written = 0
    for offset, old in reversed(extents):
        pos, end = offset, offset + len(old)
        while pos < end:
            stop = min(end, (pos // page + 1) * page)
            want = old[pos - offset:stop - offset]
            if replica.read(pos, len(want)) != want:
                replica.write(pos, want)
                written += len(want)
            pos = stop
    return written


def roll_back(fd: int, extents: list[Extent]) -> None:
    """Write a batch's undo records to ``fd`` in reverse order (no sync)."""
    for offset, old in reversed(extents):
        write_all(fd, old, offset)
