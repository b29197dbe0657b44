"""Seeds: an existing disk adopted as a disk's replica (cs/targets.py), for reprotect and failback.

When the settings give a disk a ``replica_path`` other than the replica it has, the MT adopts that
file: it starts a new replication into it. What it held for the disk before (points, journal,
staged batches, failover views) describes another replica, so it is dropped first, in this order,
each step safe to repeat after a crash: catalog rows, views, journal, staging, then the marker
``replicas/<disk>.adopted`` (holding the path) is written durably. Until the marker is written the
disk opens on its old replica with nothing to recover, and the settings adopt it again.

Only a path inside the MT's ``datastore_dir`` (symbolic links resolved) is adopted; the CS checks the
same before it sends one. Blocking: call from a worker thread.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from common import errors, tls
from common import logging as dlog
from mt.catalog import Catalog

log = dlog.get("drlab.mt.seed")


def marker(data_dir: Path, disk_id: str) -> Path:
    return data_dir / "replicas" / f"{disk_id}.adopted"


def replica_file(data_dir: Path, disk_id: str) -> Path:
    """The disk's replica: the adopted file, if any, else the MT's own image."""
    mark = marker(data_dir, disk_id)
    if mark.exists():
        return Path(mark.read_text().strip())
    return data_dir / "replicas" / f"{disk_id}.img"


def allowed(path: str, datastore: Path | None) -> Path:
    """``path`` resolved, if it lies inside the datastore; else Forbidden (nothing is adopted)."""
    if datastore is None:
        raise errors.Forbidden("this master target has no datastore: it adopts no existing disk")
    root, target = datastore.resolve(), Path(path).resolve()
    if target != root and root not in target.parents:
        raise errors.Forbidden(f"{path} is outside the datastore {root}")
    return target


def needs_adopt(data_dir: Path, disk_id: str, path: Path) -> bool:
    return replica_file(data_dir, disk_id).resolve() != path


def adopt(data_dir: Path, disk_id: str, path: Path, catalog: Catalog) -> None:
    """Make ``path`` the disk's replica, dropping the disk's old points, views, journal and staging."""
    catalog.delete(disk_id, [p.key for p in catalog.all(disk_id)])
    for sub in ("views", "journal", "staging"):
        shutil.rmtree(data_dir / sub / disk_id, ignore_errors=True)
    mark = marker(data_dir, disk_id)
    mark.parent.mkdir(parents=True, exist_ok=True)
    tls.durable_write(mark, str(path).encode())
    log.info("replica_adopted", disk=disk_id, path=str(path))
