"""Applying staged batches to one disk's replica through its undo journal (blocking core).

:class:`DiskStore` owns one disk's replica, journal and staging area and shares the catalog.
Every method blocks (file I/O and fsync): the asyncio shell calls them in a worker thread.
``lock`` (a threading.RLock) is held for each batch applied, so a failover copy that takes it
sees the replica between batches.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import errors
from common import logging as dlog
from common.recent import Recent
from common.wire import batch as wbatch
from common.wire import journal as wj
from mt import seed
from mt.catalog import Catalog, Point, point_accuracy
from mt.journal import CommittedBatch, Extent, Journal, crash_point, restore_changed
from mt.replica import Replica
from mt.staging import DiskStaging, Kept, Key

log = dlog.get("drlab.mt.apply")

RECENT = 256


def merge_extents(records: list[wbatch.Record]) -> list[tuple[int, int]]:
    """The union of the regions a batch writes, as sorted, disjoint (offset, length) pairs,
    cut to at most MAX_UNDO_LEN bytes each."""
    spans = sorted((r.offset, r.offset + len(r.data)) for r in records)
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out = []
    for start, end in merged:
        for pos in range(start, end, wj.MAX_UNDO_LEN):
            out.append((pos, min(end, pos + wj.MAX_UNDO_LEN) - pos))
    return out


def next_key(staged: list[Key], applied: Key) -> tuple[Key | None, list[Key]]:
    """Which staged batch to apply next, and which staged batches to discard.

    Strictly in order: (applied gen, applied seq + 1) if staged; otherwise a newer generation
    starts at its seq 1 (the oldest such generation), and every staged batch of an older
    generation can no longer be applied in order. Batches at or below ``applied`` are done.
    """
    done = [k for k in staged if k <= applied]
    want = (applied[0], applied[1] + 1)
    if want in staged:
        return want, done
    newer = sorted(k for k in staged if k[0] > applied[0] and k[1] == 1)
    if not newer:
        return None, done
    start = newer[0]
    return start, done + [k for k in staged if applied < k and k[0] < start[0]]


@dataclass
class Applied:
    """What one apply did (for logs and metrics)."""

    point: Point
    data_bytes: int


class DiskStore:
    def __init__(self, disk_id: str, data_dir: Path, catalog: Catalog, size_bytes: int,
                 segment_max_bytes: int, recent: Recent[tuple[str, int, int], Kept] | None = None) -> None:
        self.disk_id = disk_id
        self.catalog = catalog
        self.lock = threading.RLock()
        self.closed = False
        self.replica = Replica(seed.replica_file(data_dir, disk_id), size_bytes)  # its own, or an adopted disk
        self.journal = Journal(data_dir / "journal" / disk_id, bytes.fromhex(disk_id), segment_max_bytes)
        self.staging = DiskStaging(data_dir / "staging" / disk_id, recent)  # recent: the MT's shared budget
        self.applied: Key = (0, 0)
        self.in_resync = False
        self.has_valid = False  # a valid point exists: batches applied now must keep their undo data
        self.broken: str | None = None  # why applying stopped until a restart (see _abandon)
        self.applied_bytes = 0
        self.lags_ns: deque[int] = deque(maxlen=RECENT)
        # called (segno, offset of the first undo record, [(replica offset, length)] of the records)
        # under ``lock`` once a batch's undo records are durable, before the replica is written:
        # failover views (mt/view.py) index them
        self.undo_listeners: list[Callable[[int, int, list[tuple[int, int]]], None]] = []
        self.log = log.bind(disk=disk_id)

    def __repr__(self) -> str:
        return f"DiskStore({self.disk_id}, applied={self.applied})"

    # -- open: recovery and reconciliation -----------------------------------------------------

    def open(self) -> None:
        """Recover the journal, reconcile the catalog with it and drop applied staging files."""
        with self.lock:
            self.staging.load()
            committed = self.journal.open(self.replica)
            self._reconcile(committed)
            self.has_valid = self.catalog.has_valid(self.disk_id)
            last = self.catalog.latest(self.disk_id)
            if last is not None:
                self.applied, self.in_resync = last.key, last.in_resync
            for p in reversed(self.catalog.recent(self.disk_id, RECENT)):
                self.lags_ns.append(p.received_ns - p.t_first_ns)
            for key in self.staging.keys():
                if key <= self.applied:
                    self.staging.delete(*key)
        self.log.info("disk_opened", applied_gen=self.applied[0], applied_seq=self.applied[1],
                      staged=len(self.staging.keys()))

    def _reconcile(self, committed: list[CommittedBatch]) -> None:
        rows = {p.key: p for p in self.catalog.all(self.disk_id)}
        journal_keys = {(c.info.gen, c.info.seq) for c in committed}
        boundary = self._boundary(rows)
        extra = [k for k in rows if k not in journal_keys and k != boundary]
        if extra:
            self.log.warning("catalog_rows_without_commit", count=len(extra))
            self.catalog.delete(self.disk_id, extra)
        in_resync = rows[boundary].in_resync if boundary is not None else False
        for c in committed:
            key = (c.info.gen, c.info.seq)
            row = rows.get(key)
            if row is None or (row.segno, row.undo_off, row.commit_off) != (c.segno, c.undo_off, c.commit_off):
                row = self._row_from_commit(c, in_resync, row)
                self.catalog.insert(row, self._staged_tags(key))  # tags: still in the staged batch
                self.log.info("catalog_row_restored", gen=key[0], seq=key[1])
            in_resync = row.in_resync

    def _boundary(self, rows: dict[Key, Point]) -> Key | None:
        """The retention boundary (mt/journal.py rule 5) if its row is still there: a valid point
        whose commit record was pruned with its segment."""
        key = self.journal.boundary
        row = rows.get(key) if key is not None else None
        return key if row is not None and row.segno < self.journal.floor else None

    def _staged_tags(self, key: Key) -> list[bytes]:
        """The tags of a batch still staged (a crash after its commit record, before the catalog)."""
        if key not in self.staging:
            return []
        try:
            data, _ = self.staging.read(*key)
            return wbatch.decode(data, disk_size=self.replica.size_bytes, max_bytes=max(len(data), 1)).tags
        except (OSError, errors.MalformedBatch):
            return []

    def _row_from_commit(self, c: CommittedBatch, in_resync: bool, old: Point | None) -> Point:
        info = c.info
        _, still = point_accuracy(in_resync, int(wbatch.Mode.DATA), info.accuracy, info.flags)
        checksum = old.checksum if old else self.staging.checksum((info.gen, info.seq))
        return Point(self.disk_id, info.gen, info.seq, info.wnum_first, info.wnum_hi, info.t_first_ns,
                     info.t_last_ns, info.received_ns, old.applied_ns if old else time.time_ns(), info.accuracy,
                     info.flags, still, c.segno, c.undo_off, c.commit_off, old.data_bytes if old else 0, checksum)

    # -- apply ---------------------------------------------------------------------------------

    def next_staged(self) -> Key | None:
        """The next batch to apply (discarding staged batches that can never apply)."""
        key, discard = next_key(self.staging.keys(), self.applied)
        for gen, seq in discard:
            self.log.warning("staged_batch_discarded", gen=gen, seq=seq, applied_gen=self.applied[0],
                             applied_seq=self.applied[1])
            self.staging.delete(gen, seq)
        return key

    def apply_next(self) -> Applied | None:
        """Apply the next staged batch, if any (None when nothing can be applied now)."""
        with self.lock:
            key = None if self.closed else self.next_staged()
            if key is None:
                return None
            batch, received_ns, checksum = self._staged(key)
            if (batch.disk_id.hex(), batch.generation, batch.seq) != (self.disk_id, *key):
                raise errors.MalformedBatch(f"staged batch {key} names another identity")
            done = self.apply_batch(batch, received_ns, checksum)
            self.staging.delete(*key)
            return done

    def _staged(self, key: Key) -> tuple[wbatch.ChangeBatch, int, bytes | None]:
        """A staged batch decoded, its received time and checksum: from memory when it was staged
        lately (mt/staging.py), else read and decoded from its file."""
        kept = self.staging.kept(*key)
        if kept is not None:
            return kept[0], kept[1], self.staging.checksum(key)
        data, received_ns = self.staging.read(*key)
        batch = wbatch.decode(data, disk_size=self.replica.size_bytes, max_bytes=max(len(data), 1))
        return batch, received_ns, wbatch.checksum(data)

    def apply_batch(self, batch: wbatch.ChangeBatch, received_ns: int, checksum: bytes | None) -> Applied:
        """Undo records -> fdatasync journal -> replica writes -> fdatasync replica -> commit
        -> fdatasync journal -> catalog (the staging file is the caller's to delete).

        Before the disk's first valid point (its initial replication) no failover can roll back
        to anything, so the batch's undo record carries no extents: the replica's old bytes are
        neither read nor journaled. A crash between the replica writes and the commit then leaves
        part of the batch in the replica, and the batch — still staged — is applied again in full.
        """
        with self.lock:
            if self.broken is not None:
                raise errors.Unavailable(f"applying is stopped until the MT restarts: {self.broken}")
            accuracy, in_resync = point_accuracy(self.in_resync, batch.mode, batch.accuracy, batch.flags)
            extents = self._old_bytes(batch) if self.has_valid else []
            start = self.journal.pos
            try:
                undo_off = self.journal.append_undo(batch.generation, batch.seq, extents)
                self.journal.sync()
            except OSError:
                self._abandon(start, start, [])  # no listener saw them: simply gone
                raise
            undo_end = self.journal.pos
            for listener in list(self.undo_listeners):
                listener(self.journal.segno, undo_off, [(off, len(old)) for off, old in extents])
            crash_point("after_journal_fsync")
            try:
                for rec in batch.records:
                    self.replica.write(rec.offset, rec.data)
                crash_point("after_replica_write")
                self.replica.sync()
                crash_point("before_commit")
                first, earlier = self.journal.abandoned or (undo_off, 0)
                info = wj.CommitInfo(batch.generation, batch.seq, batch.wnum_first, batch.wnum_hi, batch.t_first_ns,
                                     batch.t_last_ns, received_ns, int(accuracy), batch.flags, earlier + len(extents))
                commit_off = self.journal.append_commit(info)
                self.journal.sync()
                self.journal.abandoned = None  # counted by this commit
            except OSError:
                self._abandon(undo_off, undo_end, extents)
                raise
            nbytes = wbatch.total_data_bytes(batch)
            point = Point(self.disk_id, batch.generation, batch.seq, batch.wnum_first, batch.wnum_hi,
                          batch.t_first_ns, batch.t_last_ns, received_ns, time.time_ns(), int(accuracy),
                          batch.flags, in_resync, self.journal.segno, first, commit_off, nbytes, checksum)
            # applied from here on (the commit record is the authority): a failing catalog insert
            # loses no point, open() restores the row from the journal
            self.applied, self.in_resync = point.key, in_resync
            self.has_valid = self.has_valid or accuracy != wbatch.Accuracy.NONE
            self.applied_bytes += nbytes
            self.lags_ns.append(received_ns - batch.t_first_ns)
            self.journal.rotate_if_full()
            self.catalog.insert(point, batch.tags)
        return Applied(point, nbytes)

    def _abandon(self, undo_off: int, keep: int, extents: list[Extent]) -> None:
        """An apply failed (ENOSPC: a full volume) before its commit record was durable: the
        replica gets its old bytes back from ``extents``, the journal forgets what follows
        ``keep`` and counts the durable undo records into the next commit
        (:meth:`Journal.note_abandoned`); the batch stays staged and is applied again. If that
        fails too, applying stops until the MT restarts (open() recovers the same way)."""
        try:
            if extents:
                restore_changed(self.replica, extents)
                self.replica.sync()
            self.journal.discard_after(keep)
            if extents:
                self.journal.note_abandoned(undo_off, len(extents))
        except OSError as exc:
            self.broken = f"an apply that failed could not be rolled back ({exc})"
            self.log.critical("apply_rollback_failed", error=str(exc))
            return
        self.log.warning("apply_abandoned", undo_records=len(extents), journal_pos=keep)

    def _old_bytes(self, batch: wbatch.ChangeBatch) -> list[Extent]:
        return [(off, self.replica.read(off, length)) for off, length in merge_extents(batch.records)]

    # -- receipt -------------------------------------------------------------------------------

    def receive(self, gen: int, seq: int, data: bytes, batch: wbatch.ChangeBatch | None = None) -> bool:
        """Stage a verified batch durably: True if new, False for an identical re-send (``batch``:
        ``data`` decoded, kept in memory for the apply)."""
        digest = wbatch.checksum(data)
        staged = self.staging.checksum((gen, seq))
        if staged is None and (gen, seq) <= self.applied:
            row = self.catalog.get(self.disk_id, gen, seq)
            if row is not None and row.checksum is not None and row.checksum != digest:
                raise errors.ChecksumMismatch(f"batch {gen}/{seq} was applied with another checksum")
            return False
        return self.staging.store(gen, seq, data, batch)

    def progress(self, generation: int) -> tuple[int, int]:
        """(mt_received, mt_applied): highest contiguous seqs of ``generation`` here."""
        applied = self.applied[1] if self.applied[0] == generation else 0
        return self.staging.contiguous_from(generation, applied), applied

    def current_generation(self, settings_gen: int) -> int:
        staged = self.staging.keys()
        return max(settings_gen, self.applied[0], staged[-1][0] if staged else 0)

    def grow(self, size_bytes: int) -> None:
        with self.lock:
            self.replica.ensure_size(size_bytes)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.staging.forget()
            self.journal.close()
            self.replica.close()
