"""Releasing a disk the settings document no longer lists (blocking core: call in a worker thread).

Rules:

- A released disk has a marker ``released/{disk_id}`` written (durably) *before* its staged
  batches are discarded, and it stays until the disk is listed again. :meth:`MTService._recover_all`
  never reopens a marked disk, so a batch staged before the release is never applied later,
  whatever the crash point.
- Staged (received, not yet applied) batches of a released disk are discarded: they are no
  recovery point. Reopening a marked disk (the disk is listed again: protection enabled again)
  discards its staging area again before the store opens, then removes the marker.
- The replica, the journal and the catalog rows (the recovery points) stay unless the CS asks
  for them to be deleted (``delete_disks`` of the settings document, docs/PROTOCOL.md):
  :func:`delete_files` removes the replica, journal, staging, failover views and images, and the
  catalog rows, then the marker. Deleting is idempotent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common import logging as dlog
from mt.catalog import Catalog
from mt.replica import fsync_dir

log = dlog.get("drlab.mt.release")

MARKERS = "released"


def is_disk_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def marker(data_dir: Path, disk_id: str) -> Path:
    return data_dir / MARKERS / disk_id


def is_released(data_dir: Path, disk_id: str) -> bool:
    return marker(data_dir, disk_id).exists()


def released(data_dir: Path) -> set[str]:
    """The disks released and not listed again since."""
    root = data_dir / MARKERS
    return {p.name for p in root.iterdir() if is_disk_id(p.name)} if root.is_dir() else set()


def mark(data_dir: Path, disk_id: str) -> None:
    """Write the marker durably (before the worker stops: from here on no restart reopens the
    disk; :func:`discard_staging` follows once the worker stopped)."""
    path = marker(data_dir, disk_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def discard_staging(data_dir: Path, disk_id: str) -> int:
    """Delete the disk's staged batches (never applied); returns how many there were."""
    directory = data_dir / "staging" / disk_id
    if not directory.is_dir():
        return 0
    count = sum(1 for p in directory.iterdir() if p.name.endswith(".batch"))
    shutil.rmtree(directory, ignore_errors=True)
    if count:
        log.info("staged_batches_discarded", disk=disk_id, count=count)
    return count


def unmark(data_dir: Path, disk_id: str) -> None:
    """The disk is listed again: staging discarded again (a batch a late PUT staged after the
    release), then the marker removed."""
    if not is_released(data_dir, disk_id):
        return
    discard_staging(data_dir, disk_id)
    marker(data_dir, disk_id).unlink(missing_ok=True)
    fsync_dir(marker(data_dir, disk_id).parent)


def delete_files(data_dir: Path, catalog: Catalog, disk_id: str) -> bool:
    """Delete everything the MT holds of a released disk (marker last); True if anything was there."""
    # an adopted replica (mt/seed.py) is another machine's disk: only the note that names it goes
    paths = [data_dir / "replicas" / f"{disk_id}.img", data_dir / "replicas" / f"{disk_id}.adopted",
             data_dir / "journal" / disk_id, data_dir / "staging" / disk_id, data_dir / "views" / disk_id,
             data_dir / "failover" / disk_id]
    found = any(p.exists() for p in paths)
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    points = catalog.all(disk_id)
    if points:
        catalog.delete(disk_id, [p.key for p in points])
    marker(data_dir, disk_id).unlink(missing_ok=True)
    if found or points:
        log.info("disk_files_deleted", disk=disk_id, points=len(points))
    return found or bool(points)
