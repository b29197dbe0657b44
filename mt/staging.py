"""Durable staging of received change batches: ``staging/{disk_id}/{gen:08d}-{seq:012d}.batch``.

A file holds the opened, decompressed and checksum-verified change batch. It is written to a
unique temp file, fsynced, renamed into place and the directory fsynced before the receipt is
acknowledged; it is deleted once the batch is applied. The decoded batch is also kept in memory
(common/recent.py, a budget shared by the MT's disks) so that its apply, a moment later, neither
reads nor decodes the file again; the file stays the authority (a miss or a restart reads it).
Identity is (gen, seq): storing the same identity with the same checksum again is a no-op, with
another checksum a ChecksumMismatch.
No space to stage it is :class:`common.errors.Throttled` (507, retried by the PS), leaving no file.
Blocking: call from a worker thread (thread-safe).
"""

from __future__ import annotations

import errno
import os
import re
import threading
import uuid
from pathlib import Path

from common import errors, tls
from common import logging as dlog
from common.recent import Recent
from common.wire import batch as wbatch
from mt.replica import fsync_dir, read_exact

log = dlog.get("drlab.mt.staging")

_NAME = re.compile(r"^(\d{8,20})-(\d{12,20})\.batch\Z")
Key = tuple[int, int]
Kept = tuple[wbatch.ChangeBatch, int]  # a staged batch decoded, and its received time (the file's mtime)
KEPT_MAX_BYTES = 32 * 1024 * 1024  # the budget of a staging area that is given none


def file_name(gen: int, seq: int) -> str:
    return f"{gen:08d}-{seq:012d}.batch"


class DiskStaging:
    """The staged batches of one disk, indexed by (gen, seq) -> checksum."""

    def __init__(self, directory: Path, recent: Recent[tuple[str, int, int], Kept] | None = None) -> None:
        self.directory = directory
        self.recent: Recent[tuple[str, int, int], Kept] = recent if recent is not None else Recent(KEPT_MAX_BYTES)
        self._index: dict[Key, bytes] = {}
        self._bytes: dict[Key, int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DiskStaging({self.directory}, batches={len(self._index)})"

    def load(self) -> None:
        """Index what a previous run left (temp files are removed: never acknowledged)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.iterdir():
            m = _NAME.match(path.name)
            if m is None:
                if path.name.endswith(".tmp"):
                    path.unlink(missing_ok=True)
                continue
            size = path.stat().st_size
            if size < wbatch.HEADER_SIZE + wbatch.TRAILER_SIZE:
                log.error("staged_batch_truncated", path=str(path))
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                wbatch.check_stored(f"staged batch {path}", read_exact(fd, 6, 0))  # a newer one: refused
                trailer = read_exact(fd, wbatch.TRAILER_SIZE, size - wbatch.TRAILER_SIZE)
            finally:
                os.close(fd)
            key = (int(m.group(1)), int(m.group(2)))
            self._index[key], self._bytes[key] = trailer, size

    def path(self, gen: int, seq: int) -> Path:
        return self.directory / file_name(gen, seq)

    def checksum(self, key: Key) -> bytes | None:
        with self._lock:
            return self._index.get(key)

    def keys(self) -> list[Key]:
        with self._lock:
            return sorted(self._index)

    def __contains__(self, key: Key) -> bool:
        with self._lock:
            return key in self._index

    def backlog(self) -> tuple[int, int]:
        with self._lock:
            return len(self._index), sum(self._bytes.values())

    def store(self, gen: int, seq: int, data: bytes, batch: wbatch.ChangeBatch | None = None) -> bool:
        """Store durably; True if new, False for an identical re-send (ChecksumMismatch otherwise).
        ``batch``: ``data`` decoded, kept in memory for its apply."""
        key, digest = (gen, seq), wbatch.checksum(data)
        if self._known(key, digest):
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{uuid.uuid4().hex}.tmp"
        try:
            tls.write_synced(tmp, data)
        except OSError as exc:  # nothing is left behind; a full volume is a retriable 507
            if exc.errno == errno.ENOSPC:
                raise errors.Throttled("mt_staging_full: no space left to stage the batch",
                                       retry_after_s=1.0) from exc
            raise
        with self._lock:
            if key in self._index:
                tmp.unlink(missing_ok=True)
                self._same_or_raise(key, digest)
                return False
            os.replace(tmp, self.path(gen, seq))
            fsync_dir(self.directory)
            self._index[key], self._bytes[key] = digest, len(data)
        if batch is None:  # nothing older may stand for it (a disk released and held again)
            self.recent.pop((self.directory.name, gen, seq))
        else:
            self.recent.put((self.directory.name, gen, seq), (batch, self.path(gen, seq).stat().st_mtime_ns),
                            len(data))
        return True

    def forget(self) -> None:
        """Drop this disk's memory copies (the store closes: released, or the MT stops)."""
        name = self.directory.name
        self.recent.drop_where(lambda key: key[0] == name)

    def kept(self, gen: int, seq: int) -> Kept | None:
        """The batch decoded and its received time, if still in memory."""
        return self.recent.get((self.directory.name, gen, seq))

    def _known(self, key: Key, digest: bytes) -> bool:
        with self._lock:
            if key not in self._index:
                return False
            self._same_or_raise(key, digest)
            return True

    def _same_or_raise(self, key: Key, digest: bytes) -> None:
        if self._index[key] != digest:
            raise errors.ChecksumMismatch(f"batch {key[0]}/{key[1]} was received with another checksum")

    def read(self, gen: int, seq: int) -> tuple[bytes, int]:
        """(batch bytes, received time in ns: the file's mtime, set when it was written)."""
        path = self.path(gen, seq)
        with open(path, "rb") as f:
            data = f.read()
            mtime = os.fstat(f.fileno()).st_mtime_ns
        return data, mtime

    def delete(self, gen: int, seq: int) -> None:
        self.recent.pop((self.directory.name, gen, seq))
        with self._lock:
            self._index.pop((gen, seq), None)
            self._bytes.pop((gen, seq), None)
        self.path(gen, seq).unlink(missing_ok=True)

    def contiguous_from(self, gen: int, seq: int) -> int:
        """Highest s >= seq such that (gen, seq + 1) .. (gen, s) are all staged."""
        with self._lock:
            while (gen, seq + 1) in self._index:
                seq += 1
        return seq


class Staging:
    """Every disk's staging area under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._disks: dict[str, DiskStaging] = {}

    def disk(self, disk_id: str) -> DiskStaging:
        ds = self._disks.get(disk_id)
        if ds is None:
            ds = self._disks[disk_id] = DiskStaging(self.root / disk_id)
        return ds

    def disk_ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())
