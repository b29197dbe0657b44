"""Failover images: a sparse copy of the replica rolled back through the undo journal to a point.

Under the disk's apply lock the replica is copied (holes and all-zero 1 MiB blocks are skipped)
and the batches applied after the point are noted; outside the lock, their undo records are
written to the copy, newest batch first and each batch's records in reverse order. Replication
keeps running meanwhile: the journal is append-only, so the noted batches do not change.
Blocking: call from a worker thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import errors
from common import logging as dlog
from mt.apply import DiskStore
from mt.catalog import Catalog, Point
from mt.journal import read_undo_range, roll_back
from mt.replica import fsync_dir, read_exact, write_all

log = dlog.get("drlab.mt.failover")

BLOCK = 1 << 20
_ZERO = bytes(BLOCK)


def choose_point(catalog: Catalog, disk_id: str, spec: Any) -> Point:
    """``"latest"`` / ``"latest-processed"`` (the newest applied batch: the caller applies what is
    staged first for ``latest``) or ``{"time_ns": T}`` (newest point with no write after T)."""
    if spec in ("latest", "latest-processed"):
        point = catalog.latest(disk_id)
    elif isinstance(spec, dict) and isinstance(spec.get("time_ns"), int):
        point = catalog.at_time(disk_id, int(spec["time_ns"]))
    else:
        raise errors.BadRequest(f"unknown recovery point {spec!r}")
    if point is None:
        raise errors.NotFound(f"no recovery point of disk {disk_id} matches {spec!r}")
    return point


def data_regions(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the regions of a file that may hold data (holes skipped when the file
    system says where they are)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = min(size, os.lseek(fd, start, os.SEEK_HOLE))
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            yield pos, size  # no hole support: copy everything
            return
        yield start, end
        pos = end


def sparse_copy(src_fd: int, dst_fd: int, size: int) -> int:
    """Copy ``size`` bytes, leaving holes where the source has holes or zero blocks; returns the
    bytes written."""
    written = 0
    os.ftruncate(dst_fd, size)
    for start, end in data_regions(src_fd, size):
        for pos in range(start, end, BLOCK):
            block = read_exact(src_fd, min(BLOCK, end - pos), pos)
            if block != _ZERO[:len(block)]:
                write_all(dst_fd, block, pos)
                written += len(block)
    return written


def make_image(store: DiskStore, point: Point, dest: Path) -> dict[str, Any]:
    """Build the image of ``point`` at ``dest``; returns the job result (PROTOCOL.md)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with store.lock:
            copied = sparse_copy(store.replica.fd, fd, store.replica.size_bytes)
            newer = store.catalog.newer_than(store.disk_id, point.gen, point.seq)
        for p in newer:
            roll_back(fd, read_undo_range(store.journal.path(p.segno), p.undo_off, p.commit_off))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    log.info("failover_image_ready", disk=store.disk_id, gen=point.gen, seq=point.seq, path=str(dest),
             copied_bytes=copied, rolled_back_batches=len(newer))
    return {"image_path": str(dest.resolve()), "disk_id": store.disk_id,
            "point": {"gen": point.gen, "seq": point.seq, "wnum_hi": point.wnum_hi, "t_last_ns": point.t_last_ns,
                      "accuracy": point.accuracy_name}}
