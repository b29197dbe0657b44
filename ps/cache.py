"""The PS's durable cache of change batches, one directory per disk.

Layout: ``{root}/{disk_id}/{gen:08d}-{seq:012d}.batch``, each file the change batch exactly as
the agent sent it (so its last 16 bytes are the batch checksum).

Rules:
- A batch is stored by writing ``*.tmp``, fsync, rename, fsync of the directory: a file with
  the final name is always complete and durable. Leftover ``*.tmp`` files (a crash mid-store)
  are removed when the cache is loaded; they were never acknowledged.
- The in-memory index ``{(gen, seq): Entry}`` per disk is rebuilt from the directory at load.
- Storing an identity that is already cached (or was recently uploaded) with the same checksum
  is a no-op; with another checksum it is :class:`ChecksumMismatch`. Nothing is written then.
- A NEW batch is refused with :class:`Throttled` (507 + Retry-After) while the throttle
  (ps/throttle.py) holds for its disk or the whole cache, and whenever it does not fit now: above
  what ``max_bytes`` leaves or what the filesystem has free (``cache_full``; ENOSPC while writing
  is the same; a batch larger than the whole cache stays ``cache_full`` — the message says so —
  since the limit may grow). A re-send of a batch already held is answered before any of this.
- The throttle is re-evaluated before each new batch, after each store and after each delete (so
  it lifts as the uploader drains); the filesystem's free space is sampled at most every
  ``fs_check_s``. Starts and stops are logged with their reason.
- A cached file that is not a whole batch (torn, truncated, garbage appended: its header's
  length disagrees with its size) is removed when the cache is loaded, and one whose bytes fail
  their checksum when read for upload is :class:`CacheCorrupt` (the uploader drops it), both
  logged as errors: the agent sees the gap in what the PS holds and re-sends (agent/psloss.py).
- A file is deleted only after the MT's durable receipt (the uploader calls :meth:`delete`).
  A delete that a crash undoes only causes an idempotent re-upload.

Index changes happen on the event-loop thread; file I/O runs in the given executor.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import os
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from common import errors, tls
from common import logging as dlog
from common.recent import Recent
from common.wire import batch as wbatch
from ps.throttle import CACHE, CACHE_FULL, Change, Sample, Throttle, ThrottlePolicy

log = dlog.get("drlab.ps.cache")

SUFFIX = ".batch"
TMP_SUFFIX = ".tmp"
RECENT_DONE = 4096

Key = tuple[int, int]


class CacheCorrupt(errors.MalformedBatch):
    """A cached batch's bytes are damaged (not retriable: the batch must be dropped)."""

    code = "cache_corrupt"


@dataclass(frozen=True)
class Entry:
    gen: int
    seq: int
    size: int
    checksum: bytes = field(repr=False)


def file_name(gen: int, seq: int) -> str:
    return f"{gen:08d}-{seq:012d}{SUFFIX}"


def parse_name(name: str) -> Key | None:
    if not name.endswith(SUFFIX):
        return None
    gen, sep, seq = name[: -len(SUFFIX)].partition("-")
    if not sep or not gen.isdigit() or not seq.isdigit():
        return None
    return int(gen), int(seq)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(directory: Path, name: str, data: bytes) -> None:
    """tmp file + fsync + rename + directory fsync (runs in a worker thread)."""
    if not directory.exists():
        directory.mkdir(parents=True, exist_ok=True)
        fsync_dir(directory.parent)
    tmp = directory / f"{name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        tls.write_synced(tmp, data)
        os.replace(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)


def torn_file(head: bytes, size: int) -> str | None:
    """Why a cached batch file of ``size`` bytes starting with ``head`` is not a whole batch
    (a torn write or a garbage tail: its header's length disagrees), or None."""
    try:
        hdr = wbatch.parse_header(head)
    except errors.MalformedBatch as exc:
        return exc.message
    if hdr.total_len != size:
        return f"header says {hdr.total_len} bytes, the file has {size}"
    return None


class DiskIndex:
    """What is cached for one disk, in (gen, seq) order, plus recently uploaded checksums."""

    def __init__(self) -> None:
        self.entries: dict[Key, Entry] = {}
        self.order: list[Key] = []
        self.bytes = 0
        self.done: OrderedDict[Key, bytes] = OrderedDict()

    def add(self, entry: Entry) -> None:
        key = (entry.gen, entry.seq)
        self.entries[key] = entry
        bisect.insort(self.order, key)
        self.bytes += entry.size

    def remove(self, key: Key) -> Entry | None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.order.pop(bisect.bisect_left(self.order, key))
            self.bytes -= entry.size
            self.done[key] = entry.checksum
            while len(self.done) > RECENT_DONE:
                self.done.popitem(last=False)
        return entry

    def known_checksum(self, key: Key) -> bytes | None:
        entry = self.entries.get(key)
        return entry.checksum if entry is not None else self.done.get(key)


def statvfs_free(path: Path) -> int:
    """Bytes of the filesystem holding ``path`` that this process may still use."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class BatchCache:
    def __init__(self, root: Path, max_bytes: int, executor: Executor | None = None, *,
                 policy: ThrottlePolicy | None = None, fs_free: Callable[[], int] | None = None,
                 fs_check_s: float = 1.0, memory_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = root
        # the newest stored batches, so that their upload skips reading them back (common/recent.py)
        self.recent: Recent[tuple[str, int, int], bytes | bytearray] = Recent(memory_bytes)
        self.max_bytes = max_bytes
        self._executor = executor
        self._disks: dict[str, DiskIndex] = {}
        self._reserved = 0
        self._inflight: dict[tuple[str, int, int], asyncio.Future[None]] = {}
        self.throttle = Throttle(policy or ThrottlePolicy())
        self.refused_total = 0  # 507s answered, whatever the reason
        self._fs_free_fn = fs_free or (lambda: statvfs_free(self.root))
        self._fs_check_s = fs_check_s
        self._fs_free = (0, -float("inf"))  # (bytes, monotonic time sampled)

    def __repr__(self) -> str:
        return f"BatchCache({self.root}, used={self.used_bytes}, max={self.max_bytes})"

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> None:
        """Remove leftover tmp files and rebuild the index from the directory (blocking)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._disks.clear()
        for disk_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            self._load_disk(disk_dir)
        log.info("cache_loaded", disks=len(self._disks), batches=self.total_batches, bytes=self.used_bytes)

    def _load_disk(self, disk_dir: Path) -> None:
        index = self._disks.setdefault(disk_dir.name, DiskIndex())
        for path in disk_dir.iterdir():
            if path.name.endswith(TMP_SUFFIX):
                path.unlink(missing_ok=True)
                log.info("cache_tmp_removed", path=str(path))
                continue
            key = parse_name(path.name)
            if key is None or not path.is_file():
                continue
            size = path.stat().st_size
            with open(path, "rb") as fh:
                head = fh.read(wbatch.HEADER_SIZE)
                wbatch.check_stored(f"cached batch {path}", head)
                fh.seek(max(0, size - wbatch.TRAILER_SIZE))
                checksum = fh.read(wbatch.TRAILER_SIZE)
            why = torn_file(head, size)
            if why is not None:  # dropped: the agent sees the gap and re-sends (agent/psloss.py)
                path.unlink(missing_ok=True)
                log.error("cache_batch_corrupt_removed", path=str(path), gen=key[0], seq=key[1], why=why)
                continue
            index.add(Entry(key[0], key[1], size, checksum))

    # -- queries -------------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        return sum(d.bytes for d in self._disks.values())

    @property
    def total_batches(self) -> int:
        return sum(len(d.entries) for d in self._disks.values())

    @property
    def free_fraction(self) -> float:
        """Free share of the cache's capacity (limit and filesystem both counted)."""
        return self.sample().free_pct / 100.0

    def disks(self) -> list[str]:
        return sorted(self._disks)

    def pending(self, disk_id: str) -> list[Entry]:
        """Cached batches of the disk in (gen, seq) order."""
        index = self._disks.get(disk_id)
        return [index.entries[k] for k in index.order] if index else []

    def backlog(self, disk_id: str) -> tuple[int, int]:
        index = self._disks.get(disk_id)
        return (len(index.entries), index.bytes) if index else (0, 0)

    def lookup(self, disk_id: str, gen: int, seq: int) -> Entry | None:
        index = self._disks.get(disk_id)
        return index.entries.get((gen, seq)) if index else None

    def path(self, disk_id: str, gen: int, seq: int) -> Path:
        return self.root / disk_id / file_name(gen, seq)

    def read(self, disk_id: str, entry: Entry) -> bytes | bytearray:
        """The cached bytes of a batch: the memory copy of a batch stored lately, else the file's,
        checked against their checksum (CacheCorrupt if they fail it; blocking: call in a worker
        thread)."""
        kept = self.recent.get((disk_id, entry.gen, entry.seq))
        if kept is not None and wbatch.checksum(kept) == entry.checksum:
            return kept
        data = self.path(disk_id, entry.gen, entry.seq).read_bytes()
        end = len(data) - wbatch.TRAILER_SIZE
        if end < wbatch.HEADER_SIZE or xxhash.xxh3_128_digest(memoryview(data)[:end]) != entry.checksum:
            raise CacheCorrupt(f"cached batch {entry.gen}/{entry.seq} of disk {disk_id} fails its checksum")
        return data

    # -- throttle ------------------------------------------------------------------------------

    def fs_free_bytes(self, fresh: bool = False) -> int:
        """The filesystem's free bytes, sampled at most every ``fs_check_s`` unless ``fresh``."""
        value, at = self._fs_free
        if fresh or time.monotonic() - at >= self._fs_check_s:
            try:
                value = int(self._fs_free_fn())
            except OSError as exc:
                log.warning("cache_statvfs_failed", error=str(exc))
                value = self.max_bytes
            self._fs_free = (value, time.monotonic())
        return value

    def sample(self, fresh: bool = False) -> Sample:
        return Sample(self.used_bytes + self._reserved, self.max_bytes, self.fs_free_bytes(fresh),
                      {d: i.bytes for d, i in self._disks.items()})

    def refresh_throttle(self, fresh: bool = False) -> None:
        """Re-evaluate the throttle now; log what started or stopped."""
        for change in self.throttle.update(self.sample(fresh), time.time_ns()):
            log_change(change)

    def throttle_metrics(self) -> dict[str, Any]:
        self.refresh_throttle()
        return {**self.throttle.metrics(), "refusals_total": self.refused_total}

    def _admit(self, disk_id: str, size: int) -> None:
        """Raise Throttled if a new batch of ``size`` bytes for ``disk_id`` must wait."""
        self.refresh_throttle()
        why = self.throttle.refusal(disk_id)
        if why is None:
            sample = self.throttle.last or self.sample()
            if size > sample.free_bytes:
                sample = self.sample(fresh=True)  # look at the filesystem again before refusing
            if size > sample.free_bytes:
                why = (f"{CACHE_FULL}: a batch of {size} bytes does not fit ({sample.used_bytes} bytes used of "
                       f"{sample.max_bytes}, {sample.fs_free_bytes} free on the filesystem)")
                if size > self.max_bytes:
                    why += "; it is larger than the whole cache: cut smaller batches or give this cache more room"
        if why is not None:
            self.refused_total += 1
            raise errors.Throttled(why, retry_after_s=self.throttle.policy.retry_after_s)
        self._reserved += size

    # -- changes -------------------------------------------------------------------------------

    async def store(self, disk_id: str, gen: int, seq: int, data: bytes) -> bool:
        """Store durably; True if newly stored, False if the same batch was already there."""
        ident = (disk_id, gen, seq)
        while (pending := self._inflight.get(ident)) is not None:
            await asyncio.shield(pending)
        checksum = wbatch.checksum(data)
        if self._already_have(disk_id, (gen, seq), checksum):
            return False
        self._admit(disk_id, len(data))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[ident] = done
        # Shielded: once the write started, the index follows the file even if the caller goes away.
        await asyncio.shield(self._write(ident, Entry(gen, seq, len(data), checksum), data, done))
        return True

    async def _write(self, ident: tuple[str, int, int], entry: Entry, data: bytes, done: asyncio.Future[None]) -> None:
        disk_id = ident[0]
        try:
            await self._run(write_durable, self.root / disk_id, file_name(entry.gen, entry.seq), data)
            self._disks.setdefault(disk_id, DiskIndex()).add(entry)
            self.recent.put(ident, data, len(data))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            self.refused_total += 1
            raise errors.Throttled(f"{CACHE_FULL}: the cache's filesystem is full",
                                   retry_after_s=self.throttle.policy.retry_after_s) from exc
        finally:
            self._reserved -= entry.size
            del self._inflight[ident]
            done.set_result(None)
        self.refresh_throttle()

    def _already_have(self, disk_id: str, key: Key, checksum: bytes) -> bool:
        index = self._disks.get(disk_id)
        known = index.known_checksum(key) if index else None
        if known is None:
            return False
        if known != checksum:
            raise errors.ChecksumMismatch(f"batch {key[0]}/{key[1]} was already received with another checksum")
        return True

    async def delete(self, disk_id: str, gen: int, seq: int, *, remember: bool = True) -> None:
        """Forget a batch the MT holds durably (or that a newer generation superseded);
        ``remember=False`` (a corrupt batch): a re-send of it is stored again, not a no-op."""
        index = self._disks.get(disk_id)
        self.recent.pop((disk_id, gen, seq))
        if index is None or index.remove((gen, seq)) is None:
            return
        if not remember:
            index.done.pop((gen, seq), None)
        await self._run(self.path(disk_id, gen, seq).unlink, True)
        self.refresh_throttle()

    async def purge(self, disk_id: str) -> int:
        """Forget every cached batch of a disk this PS no longer serves and delete its files;
        returns how many batches there were."""
        index = self._disks.pop(disk_id, None)
        self.recent.drop_where(lambda key: key[0] == disk_id)
        await self._run(shutil.rmtree, self.root / disk_id, True)
        self.refresh_throttle()
        return len(index.entries) if index is not None else 0

    async def _run(self, fn: Callable[..., object], *args: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def log_change(change: Change) -> None:
    what = "free_pct" if change.scope == CACHE else "backlog_bytes"
    value = round(change.value, 2) if change.scope == CACHE else int(change.value)
    if change.started:
        log.warning("throttle_started", scope=change.scope, reason=change.reason, **{what: value},
                    limit=change.limit)
    else:
        log.info("throttle_stopped", scope=change.scope, reason=change.reason, **{what: value},
                 limit=change.limit, lasted_s=round(change.lasted_ns / 1e9, 3))
