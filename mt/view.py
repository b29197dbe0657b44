"""Failover views: a disk at a recovery point as a copy-on-write view (ARCHITECTURE.md §6).

A read of byte b returns, in this order: the overlay's byte if the failed-over machine wrote b;
else the oldest undo record for b of a batch newer than the point (the replica's byte before that
newer write); else the replica's byte. The undo index is an :class:`ExtentMap` from disk ranges to
(journal segment, offset in it), built from the undo records of the batches after the point — its
size depends on the writes after the point, never on the disk's size.

:class:`ViewIndex` is the pure core (no I/O: reads go through callables). :class:`DiskView` is the
blocking shell over one :class:`~mt.apply.DiskStore`: it registers with the store so every batch
applied under it adds its undo records to the index before the replica is overwritten (the
store's lock orders the two), pins the journal segments it needs, and keeps its overlay in a
sparse file plus an append-only extent log (``overlay.img`` / ``overlay.log`` / ``meta.json`` in
its directory), so :meth:`DiskView.open` rebuilds it after an MT restart (the undo index comes
back from the catalog and the journal). Blocking: call from a worker thread.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import errors, tls
from common import logging as dlog
from common.wire import journal as wj
from mt.apply import DiskStore
from mt.catalog import Point
from mt.extents import ExtentMap
from mt.failover import data_regions
from mt.journal import crash_point
from mt.replica import fsync_dir, read_exact, write_all
from mt.statefile import VIEW_REMEDY, StateFile

log = dlog.get("drlab.mt.view")

COMMITTING = "committing"  # in a view's directory: a commit of it started and did not finish
OVERLAY_ENTRY = struct.Struct("<QQ")  # (offset, length) of one overlay write
META_FORMAT = 1  # meta.json's "format" field (common/formats.py: none is 1)
BLOCK = 1 << 20


Reader = Callable[[int, int], bytes]  # (offset, length) -> bytes
SourceReader = Callable[[int, int, int], bytes]  # (source, offset, length) -> bytes

OVERLAY = 0


class ViewIndex:
    """Pure read rule of a view: overlay, else oldest newer undo record, else replica."""

    def __init__(self) -> None:
        self.undo = ExtentMap()
        self.overlay = ExtentMap()
        self.undo_records = 0

    def add_undo(self, segno: int, records: list[tuple[int, int, int]]) -> None:
        """Undo records ``(replica offset, length, data offset in the segment)`` of one batch newer
        than the point (batches must come oldest first)."""
        for offset, length, data_offset in records:
            self.undo.fill(offset, offset + length, segno, data_offset)
        self.undo_records += len(records)

    def wrote(self, offset: int, length: int) -> None:
        """The overlay now holds ``[offset, offset + length)`` (stored at the same offset)."""
        self.overlay.put(offset, offset + length, OVERLAY, offset)

    def read(self, offset: int, length: int, replica: Reader, segment: SourceReader, overlay: Reader) -> bytes:
        parts: list[bytes] = []
        for s, e, src, so in self.overlay.lookup(offset, offset + length):
            if src is not None:
                parts.append(overlay(so, e - s))
                continue
            for us, ue, seg, uo in self.undo.lookup(s, e):
                parts.append(replica(us, ue - us) if seg is None else segment(seg, uo, ue - us))
        return b"".join(parts)


def undo_records(path: Path, start: int, end: int) -> list[tuple[int, int, int]]:
    """(replica offset, length, data offset) of the undo records in ``[start, end)`` of a segment
    (scanned, crc-checked)."""
    out: list[tuple[int, int, int]] = []
    if start >= end:
        return out
    with open(path, "rb") as f:
        for offset, rec in wj.scan(f, start):
            if offset >= end:
                break
            if not isinstance(rec, wj.UndoRecord):
                raise errors.MalformedBatch(f"commit record inside an undo range at {offset}", code="journal_corrupt")
            out.append((rec.offset, rec.length, rec.data_offset))
    return out


def laid_out(start: int, spans: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Where the undo records of ``spans`` (replica offset, length), appended from ``start``, keep
    their data (common.wire.journal: head, data, crc) — no need to read them back."""
    out = []
    for offset, length in spans:
        out.append((offset, length, start + wj.UNDO_HEAD.size))
        start += wj.undo_size(length)
    return out


class DiskView:
    """A live view of one disk at ``point`` (module docstring). Create with :meth:`create`,
    reopen with :meth:`open`, release with :meth:`close` (keeps the files) or :meth:`drop`."""

    def __init__(self, store: DiskStore, point: Point, directory: Path) -> None:
        self.store = store
        self.point = point
        self.directory = directory
        self.index = ViewIndex()
        self._seg_fds: dict[int, int] = {}
        self._overlay_fd = -1
        self._log_fd = -1
        self.owner = f"view:{directory.name}"
        self.log = log.bind(disk=store.disk_id, view=directory.name)

    def __repr__(self) -> str:
        return f"DiskView({self.directory.name}, point=({self.point.gen}, {self.point.seq}))"

    @property
    def size_bytes(self) -> int:
        return self.store.replica.size_bytes

    # -- life cycle ----------------------------------------------------------------------------

    @classmethod
    def create(cls, store: DiskStore, point: Point, directory: Path) -> DiskView:
        """A new view with an empty overlay."""
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": META_FORMAT, "disk_id": store.disk_id, "gen": point.gen, "seq": point.seq}
        tls.durable_write(directory / "meta.json", json.dumps(meta).encode(), 0o600)
        for name in ("overlay.img", "overlay.log"):
            os.close(os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        fsync_dir(directory)
        view = cls(store, point, directory)
        view._attach()
        return view

    @classmethod
    def open(cls, store: DiskStore, directory: Path) -> DiskView:
        """Reopen a view (after an MT restart): index from the catalog, overlay from its log."""
        state = StateFile(directory / "meta.json", "failover view", VIEW_REMEDY % directory)  # damaged: StateError
        meta = state.read(META_FORMAT)
        gen, seq = state.integer(meta, "gen"), state.integer(meta, "seq")
        point = store.catalog.get(store.disk_id, gen, seq)
        if state.text(meta, "disk_id") != store.disk_id or point is None:
            raise errors.NotFound(f"view {directory.name}: point ({gen}, {seq}) is gone")
        view = cls(store, point, directory)
        raw = (directory / "overlay.log").read_bytes()
        whole = len(raw) - len(raw) % OVERLAY_ENTRY.size  # a torn last entry: its write was never acknowledged
        for off, length in OVERLAY_ENTRY.iter_unpack(raw[:whole]):
            view.index.wrote(off, length)
        view._attach()
        return view

    def _newer(self) -> list[Point]:
        """The points after the view's, oldest first."""
        return list(reversed(self.store.catalog.newer_than(self.store.disk_id, self.point.gen, self.point.seq)))

    def _scan(self, p: Point) -> list[tuple[int, int, int]]:
        return undo_records(self.store.journal.path(p.segno), p.undo_off, p.commit_off)

    def _attach(self) -> None:
        """Pin the journal (under the store's lock: no prune between the choice of the point and the
        pin), index the batches after the point (scanned outside the store's lock,
        so applying goes on), then under the lock index the few applied meanwhile and register for
        the next ones, so no batch falls between."""
        with self.store.lock:  # retention prunes under this lock: the point and its segments stay once pinned
            if self.store.catalog.get(self.store.disk_id, self.point.gen, self.point.seq) is None:
                raise errors.NotFound(f"point ({self.point.gen}, {self.point.seq}) of disk {self.store.disk_id} "
                                      "left the retention window")
            newer = self._newer()
            self.store.journal.pin(self.owner, min((p.segno for p in newer), default=self.store.journal.segno))
        self._overlay_fd = os.open(self.directory / "overlay.img", os.O_RDWR)
        self._log_fd = os.open(self.directory / "overlay.log", os.O_WRONLY | os.O_APPEND)
        scanned = [(p.segno, self._scan(p)) for p in newer]
        with self.store.lock:
            seen = {p.key for p in newer}
            later = [p for p in self._newer() if p.key not in seen]
            for segno, records in scanned + [(p.segno, self._scan(p)) for p in later]:
                self.index.add_undo(segno, records)
            self.store.undo_listeners.append(self._on_undo)
        newer += later
        self.log.info("view_attached", gen=self.point.gen, seq=self.point.seq, batches=len(newer),
                      undo_records=self.index.undo_records, overlay_extents=len(self.index.overlay))

    def _on_undo(self, segno: int, start: int, spans: list[tuple[int, int]]) -> None:
        """Called by the store (under its lock) once a batch's undo records are durable, before
        the replica is written."""
        self.index.add_undo(segno, laid_out(start, spans))

    def close(self) -> None:
        """Detach from the store (unpin, unregister) and close files; the directory stays."""
        with self.store.lock:
            if self._on_undo in self.store.undo_listeners:
                self.store.undo_listeners.remove(self._on_undo)
            self.store.journal.unpin(self.owner)
        for fd in [*self._seg_fds.values(), self._overlay_fd, self._log_fd]:
            if fd >= 0:
                os.close(fd)
        self._seg_fds.clear()
        self._overlay_fd = self._log_fd = -1

    def drop(self) -> None:
        """Close and delete the view (test failover cleanup, or a change of recovery point)."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- I/O -----------------------------------------------------------------------------------

    def _segment(self, segno: int, offset: int, length: int) -> bytes:
        fd = self._seg_fds.get(segno)
        if fd is None:
            fd = self._seg_fds[segno] = os.open(self.store.journal.path(segno), os.O_RDONLY)
        return read_exact(fd, length, offset)

    def _overlay(self, offset: int, length: int) -> bytes:
        return read_exact(self._overlay_fd, length, offset)

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            raise errors.BadRequest(f"range {offset}+{length} is outside the disk ({self.size_bytes} bytes)")

    def read(self, offset: int, length: int) -> bytes:
        """The disk at the point (plus the overlay's writes)."""
        self._check(offset, length)
        with self.store.lock:
            return self.index.read(offset, length, self.store.replica.read, self._segment, self._overlay)

    def write(self, offset: int, data: bytes) -> None:
        """A write of the failed-over machine: to the overlay, durable when this returns."""
        self._check(offset, len(data))
        if not data:
            return
        write_all(self._overlay_fd, data, offset)
        os.fdatasync(self._overlay_fd)
        os.write(self._log_fd, OVERLAY_ENTRY.pack(offset, len(data)))
        os.fdatasync(self._log_fd)
        with self.store.lock:  # readers and the apply path use the index under this lock
            self.index.wrote(offset, len(data))

    def flush(self) -> None:
        """Make the overlay and its log durable (every :meth:`write` already is when it returns; this
        is for a client's FLUSH). OSError once the view is closed."""
        for fd in (self._overlay_fd, self._log_fd):
            os.fsync(fd)

    def regions(self) -> list[tuple[int, int]]:
        """Sorted, merged (start, end) regions that may hold data at the view: the replica's data
        regions (a hole in the replica was never written), the overlay's and the undo extents."""
        spans = list(data_regions(self.store.replica.fd, self.size_bytes))
        spans += self.index.overlay.extents() + self.index.undo.extents()
        merged: list[list[int]] = []
        for s, e in sorted(spans):
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        return [(s, e) for s, e in merged]

    def materialize(self, dest: Path) -> int:
        """A sparse copy of the view at ``dest`` (for verification and export); returns the bytes
        written. Reads take the store's lock a block at a time, so replication keeps running."""
        zero = bytes(BLOCK)
        written = 0
        tmp = dest.with_name(dest.name + ".tmp")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, self.size_bytes)
            for start, end in self.regions():
                for pos in range(start, end, BLOCK):
                    block = self.read(pos, min(BLOCK, end - pos))
                    if block != zero[:len(block)]:
                        write_all(fd, block, pos)
                        written += len(block)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return written

    def describe(self) -> dict[str, Any]:
        return {"view_dir": str(self.directory.resolve()), "undo_records": self.index.undo_records,
                "undo_extents": len(self.index.undo), "overlay_extents": len(self.index.overlay)}


def failover_view(store: DiskStore, point: Point, directory: Path,
                  dest: Path | None) -> tuple[DiskView, dict[str, Any]]:
    """A failover job's work: the view of ``point`` (ready — writable over NBD — in a time
    independent of the disk's size); only when ``dest`` is given (the job asked ``"image": true``)
    also a sparse copy of it at ``dest``, the image file the result then names (``image_path``),
    for the oracle and the lab: that copy takes time in proportion to the data, so a failover is
    ready when its view is. Returns the view (still attached) and the job result (PROTOCOL.md)."""
    if directory.exists():  # a run interrupted by a restart: start over
        shutil.rmtree(directory)
    t0 = time.perf_counter()
    view = DiskView.create(store, point, directory)
    ready_s = time.perf_counter() - t0
    timing: dict[str, Any] = {"ready_s": round(ready_s, 6)}
    image: dict[str, Any] = {}
    if dest is not None:
        try:
            image = export_image(view, dest)
        except BaseException:
            view.drop()
            raise
        timing["image_s"] = image.pop("image_s")
    view.log.info("failover_view_ready", view_ready_ms=round(ready_s * 1000, 3), image=image.get("image_path"),
                  image_ms=round(timing.get("image_s", 0.0) * 1000, 3))
    result = {**image, "disk_id": store.disk_id,
              "point": {"gen": point.gen, "seq": point.seq, "wnum_hi": point.wnum_hi, "t_last_ns": point.t_last_ns,
                        "accuracy": point.accuracy_name},
              "view": {**view.describe(), **timing}}
    return view, result


def export_image(view: DiskView, dest: Path) -> dict[str, Any]:
    """The view's image file at ``dest`` (sparse; :meth:`DiskView.materialize`):
    ``{"image_path", "image_bytes", "image_s"}``; the view stays as it was."""
    t0 = time.perf_counter()
    written = view.materialize(dest)
    return {"image_path": str(dest.resolve()), "image_bytes": written,
            "image_s": round(time.perf_counter() - t0, 6)}


def change_point(view: DiskView, point: Point) -> DiskView:
    """Another recovery point before commit: the view is dropped (its overlay with it) and a new
    one made at ``point`` in the same directory."""
    view.drop()
    return DiskView.create(view.store, point, view.directory)


def _copy(view: DiskView, start: int, end: int, seg: int | None, off: int) -> None:
    """Replica ``[start, end)`` := journal segment ``seg`` (the overlay if None) from ``off``."""
    for pos in range(start, end, BLOCK):
        n = min(BLOCK, end - pos)
        data = view._overlay(pos, n) if seg is None else view._segment(seg, off + pos - start, n)
        view.store.replica.write(pos, data)


def commit(view: DiskView) -> dict[str, Any]:
    """Make the view the replica, in place, and drop the view.

    Under the store's lock, with applying stopped for good (the disk now belongs to the failed-over
    machine; staged batches are discarded): the pre-images the view reads are written back, then
    the overlay, and the replica is fsynced; only then the journal forgets the batches after the
    point (truncated after its commit record) and the catalog their rows. Every step before the
    journal's is idempotent, so a crash in between is finished by reopening the view and committing
    again (a ``committing`` file in the view's directory says one is unfinished; the job runner
    keeps applying stopped for such a disk). With an empty overlay the replica is the point's image
    and the older points stay valid; with overlay writes (not in the journal) no point describes the
    replica any more: the journal is reset and every point is dropped. Known gap: a crash inside that
    reset (between its new segment and the removal of the old ones) leaves older points listed that
    no longer describe the replica. Blocking: call from a worker thread.
    """
    store, point = view.store, view.point
    with store.lock:
        others = set(store.journal.pins) - {view.owner}
        if others:
            raise errors.Conflict(f"disk {store.disk_id} has other failover views ({len(others)}): drop them first")
        store.closed = True
        tls.durable_write(view.directory / COMMITTING, b"committing\n")
        for key in store.staging.keys():
            store.staging.delete(*key)
        undo = view.index.undo.items()
        for i, (start, end, seg, off) in enumerate(undo):
            if i == len(undo) // 2:
                crash_point("mid_commit")
            _copy(view, start, end, seg, off)
        overlay = view.index.overlay.extents()
        for start, end in overlay:
            _copy(view, start, end, None, start)
        store.replica.sync()
        crash_point("before_commit_truncate")
        newer = store.catalog.newer_than(store.disk_id, point.gen, point.seq)
        if overlay:
            dropped = [p.key for p in store.catalog.all(store.disk_id)]
            store.journal.reset()
        else:
            dropped = [p.key for p in newer]
            store.journal.truncate_after(point.segno, point.commit_off + wj.COMMIT_SIZE)
        store.catalog.delete(store.disk_id, dropped)
        store.applied = point.key
    view.drop()
    view.log.info("failover_view_committed", gen=point.gen, seq=point.seq, dropped_points=len(dropped),
                  overlay_extents=len(overlay))
    return {"disk_id": store.disk_id, "point": {"gen": point.gen, "seq": point.seq},
            "dropped_points": len(dropped), "kept_points": not overlay,
            "replica_path": str(store.replica.path.resolve())}  # the disk a failed-over machine boots from
