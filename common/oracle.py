"""The oracle: the disk image a recovery point claims, rebuilt from the workload's write log.

A point with ``wnum_hi`` contains, for its disk, exactly the logged workload writes with wnum <=
wnum_hi, each write *in doubt* (the agent was killed before it answered) either wholly or not at
all (docs/PROTOCOL.md, "Recovery point semantics"), and the prefill the disk held by then
(:func:`point_records`). The expected image is those records applied in wnum order to a zero disk,
their data regenerated from the log's seed and profile (common.datagen). An image is right only if
it equals that byte for byte.

W is the agent's write counter. A prefill is written straight into the image, unseen by the agent:
its log numbers (which only give its data) advance no counter, so the initial replication's point,
cut before the first workload write, has W 0 (or the agent's last W) and yet holds the whole prefill.

A machine point (several disks, one write counter) is checked at one W: every disk's image must
be the image of that disk's logged writes <= W (:func:`verify_machine`). Per-disk points taken
independently are one machine state only if no disk wrote between its own point and the newest of
them (:func:`machine_consistency`).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.datagen import data_for
from common.wire.writelog import KIND_DOUBT, KIND_PREFILL, KIND_WRITE, LogIndex, LogRecord

BLOCK = 1 << 20


@dataclass(frozen=True)
class Mismatch:
    offset: int  # first differing byte
    expected: int | None  # byte value, None past the end of the file
    actual: int | None
    last_wnum: int | None = None  # last logged write covering the offset (0: none), if known

    def describe(self) -> str:
        who = "" if self.last_wnum is None else (
            f", last written by wnum {self.last_wnum}" if self.last_wnum else ", never written (zero)")
        return f"offset {self.offset}: expected {_b(self.expected)}, got {_b(self.actual)}{who}"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    first_mismatch_offset: int | None
    bytes_compared: int
    wnum_hi: int
    writes_applied: int
    mismatch: Mismatch | None
    seconds: float

    @property
    def detail(self) -> str:
        return "byte-exact" if self.ok or self.mismatch is None else self.mismatch.describe()


def _b(v: int | None) -> str:
    return "EOF" if v is None else f"0x{v:02x}"


def point_records(index: LogIndex, wnum_hi: int, disk: int | None = None) -> list[LogRecord]:
    """The records a point at W ``wnum_hi`` holds (of ``disk`` if given), in wnum order: every record
    with wnum <= W, and the prefill records logged right after them (before the next workload
    write). A prefill record belongs to every W from the machine's counter when it was made (the
    last workload wnum logged before it, 0 if none): a prefill made before any workload write is in
    every point, W 0 included. A point at a lower W holds a prefix of these."""
    head = len(index.upto(wnum_hi))
    end = head
    while end < len(index.records) and index.records[end].kind == KIND_PREFILL:
        end += 1
    records = index.records[:end]
    return records if disk is None else [r for r in records if r.disk == disk]


def _after(index: LogIndex, disk: int, wnum_lo: int, wnum_hi: int) -> list[LogRecord]:
    """The disk's records a point at ``wnum_hi`` holds and one at ``wnum_lo`` (<= it) does not."""
    return point_records(index, wnum_hi, disk)[len(point_records(index, wnum_lo, disk)):]


def _last_covering(records: Sequence[LogRecord], offset: int) -> LogRecord | None:
    return next((r for r in reversed(records) if r.offset <= offset < r.end), None)


def apply_records(index: LogIndex, disk_index: int, size_bytes: int, wnum_hi: int, fd: int,
                  with_doubts: bool = False) -> int:
    """Write the disk's records of the point at ``wnum_hi`` (:func:`point_records`) into ``fd`` in
    wnum order; returns how many. Writes in doubt (the agent died before answering) are left out
    unless ``with_doubts``."""
    seed, prof = index.header.data_args()
    records = [r for r in point_records(index, wnum_hi, disk_index) if with_doubts or r.kind != KIND_DOUBT]
    for rec in records:
        if rec.end > size_bytes:
            raise ValueError(f"logged write {rec.wnum} [{rec.offset}, +{rec.length}) exceeds {size_bytes} bytes")
        _pwrite_all(fd, data_for(seed, rec.wnum, rec.length, prof), rec.offset)
    return len(records)


def expected_image(log_path: Path, disk_index: int, size_bytes: int, wnum_hi: int, out_path: Path) -> int:
    """Build at ``out_path`` (a sparse file) the image of the point at ``wnum_hi``; returns the count."""
    index = LogIndex.load(Path(log_path))
    fd = os.open(out_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size_bytes)
        return apply_records(index, disk_index, size_bytes, wnum_hi, fd)
    finally:
        os.close(fd)


def compare(expected_path: Path, actual_path: Path, *, block: int = BLOCK) -> Mismatch | None:
    """The first differing byte of two files (a size difference counts), or None if equal."""
    with open(expected_path, "rb", buffering=0) as fe, open(actual_path, "rb", buffering=0) as fa:
        offset = 0
        while True:
            a, b = fe.read(block), fa.read(block)
            if a != b:
                return _first_difference(offset, a, b)
            if not a:
                return None
            offset += len(a)


def _first_difference(offset: int, a: bytes, b: bytes) -> Mismatch:
    n = min(len(a), len(b))
    lo, hi = 0, n  # binary search on prefix equality: O(log n) slice compares, each at C speed
    while lo < hi:
        mid = (lo + hi) // 2
        if a[lo:mid + 1] == b[lo:mid + 1]:
            lo = mid + 1
        else:
            hi = mid
    return Mismatch(offset + lo, a[lo] if lo < len(a) else None, b[lo] if lo < len(b) else None)


def verify(log_path: Path, disk_index: int, size_bytes: int, wnum_hi: int, image_path: Path) -> VerifyResult:
    """Does ``image_path`` equal the image of the point at ``wnum_hi`` of that disk (its logged writes
    <= ``wnum_hi`` and the prefill it held then: :func:`point_records`)?

    The expected image is built in a temporary sparse file next to the image (same
    filesystem, so no extra copy elsewhere) and deleted afterwards."""
    started = time.monotonic()
    index = LogIndex.load(Path(log_path))
    image_path = Path(image_path)
    fd, tmp = tempfile.mkstemp(prefix=".oracle-", suffix=".img", dir=image_path.parent)
    try:
        os.ftruncate(fd, size_bytes)
        applied = apply_records(index, disk_index, size_bytes, wnum_hi, fd)
        os.close(fd)
        fd = -1
        mismatch = compare(Path(tmp), image_path)
        if mismatch is not None and doubts(index, disk_index, wnum_hi):
            mismatch = _compare_with_doubts(index, disk_index, size_bytes, wnum_hi, Path(tmp), image_path)
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
    if mismatch is not None:
        rec = _last_covering(point_records(index, wnum_hi, disk_index), mismatch.offset)
        mismatch = Mismatch(mismatch.offset, mismatch.expected, mismatch.actual, rec.wnum if rec else 0)
    compared = size_bytes if mismatch is None else mismatch.offset
    return VerifyResult(mismatch is None, None if mismatch is None else mismatch.offset, compared, wnum_hi,
                        applied, mismatch, time.monotonic() - started)


def doubts(index: LogIndex, disk_index: int, wnum_hi: int) -> list[LogRecord]:
    return [r for r in point_records(index, wnum_hi, disk_index) if r.kind == KIND_DOUBT]


def _compare_with_doubts(index: LogIndex, disk_index: int, size_bytes: int, wnum_hi: int, without: Path,
                         image_path: Path, block: int = BLOCK) -> Mismatch | None:
    """A write in doubt may or may not have reached the disk: every block of the image must
    equal the expected image without the doubtful writes or the one with them."""
    fd, tmp = tempfile.mkstemp(prefix=".oracle-doubt-", suffix=".img", dir=image_path.parent)
    try:
        os.ftruncate(fd, size_bytes)
        apply_records(index, disk_index, size_bytes, wnum_hi, fd, with_doubts=True)
        os.close(fd)
        fd = -1
        return _either(without, Path(tmp), image_path, block)
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)


@dataclass(frozen=True)
class DiskImage:
    """One disk of a machine point: its index in the write log, name, size and failed-over image."""

    index: int
    name: str
    size_bytes: int
    image_path: Path


@dataclass(frozen=True)
class MachineVerifyResult:
    wnum: int
    disks: dict[str, VerifyResult]  # by disk name

    @property
    def ok(self) -> bool:
        return bool(self.disks) and all(r.ok for r in self.disks.values())

    def report(self) -> str:
        """One line per disk: byte-exact with how many writes, or where it first differs."""
        lines = [f"machine point W={self.wnum}: {'every disk byte-exact' if self.ok else 'MISMATCH'}"]
        for name, res in self.disks.items():
            state = "byte-exact" if res.ok else "MISMATCH " + res.detail
            lines.append(f"  {name}: {state} ({res.writes_applied} writes <= {res.wnum_hi}, "
                         f"{res.bytes_compared} bytes compared, {res.seconds:.2f} s)")
        return "\n".join(lines)


def verify_machine(log_path: Path, disks: Sequence[DiskImage], wnum: int) -> MachineVerifyResult:
    """Every disk's image against the machine's write log at the same ``wnum``."""
    return MachineVerifyResult(wnum, {d.name: verify(log_path, d.index, d.size_bytes, wnum, d.image_path)
                                      for d in disks})


@dataclass(frozen=True)
class Consistency:
    """Whether per-disk points (disk index -> wnum_hi) are one machine state, and why not."""

    ok: bool
    wnum: int  # the newest of the points: the W they would have to share
    stray: dict[int, list[int]]  # disk index -> its writes in (its point, wnum]: what its image lacks

    def describe(self) -> str:
        if self.ok:
            return f"one machine state at W={self.wnum}"
        return "; ".join(f"disk {d} lacks writes {w[0]}..{w[-1]} ({len(w)}) of W={self.wnum}"
                         for d, w in sorted(self.stray.items()))


def machine_consistency(log_path: Path, points: Mapping[int, int]) -> Consistency:
    """Are the disks' images at their own ``wnum_hi`` one machine state? Only if no disk has a
    logged record in the point at the newest W that its own point lacks (a prefill it held is none)."""
    index = LogIndex.load(Path(log_path))
    top = max(points.values(), default=0)
    stray: dict[int, list[int]] = {}
    for disk, wnum_hi in points.items():
        late = [r.wnum for r in _after(index, disk, wnum_hi, top)]
        if late:
            stray[disk] = late
    return Consistency(not stray, top, stray)


def points_from_log(log_path: Path, disk_index: int | None = None,
                    kinds: tuple[int, ...] = (KIND_WRITE,)) -> list[tuple[int, int]]:
    """(wnum, ack_ns) of the logged writes (workload writes by default), in wnum order."""
    index = LogIndex.load(Path(log_path))
    return [(r.wnum, r.ack_ns) for r in index.records
            if r.kind in kinds and (disk_index is None or r.disk == disk_index)]


def records_upto(log_path: Path, wnum_hi: int, disk_index: int | None = None) -> list[LogRecord]:
    """The records of the point at ``wnum_hi`` (:func:`point_records`)."""
    return point_records(LogIndex.load(Path(log_path)), wnum_hi, disk_index)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


# -- an image that started as a copy of a base image (a failed-over disk, then written to) ------


def _copy_sparse(src: Path, fd: int, size_bytes: int, block: int = BLOCK) -> None:
    """``src`` into ``fd`` (truncated to ``size_bytes``), zero blocks left as holes."""
    os.ftruncate(fd, size_bytes)
    with open(src, "rb", buffering=0) as f:
        offset = 0
        while offset < size_bytes:
            data = f.read(min(block, size_bytes - offset))
            if not data:
                break
            if data.count(0) != len(data):
                _pwrite_all(fd, data, offset)
            offset += len(data)


def _apply_after(index: LogIndex, disk_index: int, size_bytes: int, wnum_lo: int, wnum_hi: int, fd: int,
                 with_doubts: bool) -> int:
    """The disk's records of the point at ``wnum_hi`` that the one at ``wnum_lo`` lacks into ``fd``,
    in wnum order; returns how many."""
    seed, prof = index.header.data_args()
    records = [r for r in _after(index, disk_index, wnum_lo, wnum_hi) if with_doubts or r.kind != KIND_DOUBT]
    for rec in records:
        if rec.end > size_bytes:
            raise ValueError(f"logged write {rec.wnum} [{rec.offset}, +{rec.length}) exceeds {size_bytes} bytes")
        _pwrite_all(fd, data_for(seed, rec.wnum, rec.length, prof), rec.offset)
    return len(records)


def verify_over_base(base_path: Path, log_path: Path, disk_index: int, size_bytes: int, wnum_hi: int,
                     image_path: Path, *, wnum_lo: int = 0) -> VerifyResult:
    """Does ``image_path`` equal ``base_path`` (e.g. a failover job's image: the disk at its point)
    with the logged writes in (``wnum_lo``, ``wnum_hi``] of the disk applied on top, in wnum order
    (e.g. the writes a failed-over machine then made to the view over NBD)? A write in doubt may or
    may not be there, as in :func:`verify` (each block: the expected image without the doubts, or
    the one with them). The expected images are temporary sparse files next to the image."""
    started = time.monotonic()
    index = LogIndex.load(Path(log_path))
    image_path = Path(image_path)
    has_doubts = any(r.kind == KIND_DOUBT for r in _after(index, disk_index, wnum_lo, wnum_hi))
    tmps: list[str] = []
    try:
        applied = 0
        for with_doubts in ((False, True) if has_doubts else (False,)):
            fd, tmp = tempfile.mkstemp(prefix=".oracle-base-", suffix=".img", dir=image_path.parent)
            tmps.append(tmp)
            try:
                _copy_sparse(Path(base_path), fd, size_bytes)
                count = _apply_after(index, disk_index, size_bytes, wnum_lo, wnum_hi, fd, with_doubts)
                applied = applied or count
            finally:
                os.close(fd)
        mismatch = compare(Path(tmps[0]), image_path)
        if mismatch is not None and has_doubts:
            mismatch = _either(Path(tmps[0]), Path(tmps[1]), image_path)
    finally:
        for tmp in tmps:
            os.unlink(tmp)
    if mismatch is not None:
        rec = _last_covering(_after(index, disk_index, wnum_lo, wnum_hi), mismatch.offset)
        wnum = rec.wnum if rec is not None else None  # None: the base's byte
        mismatch = Mismatch(mismatch.offset, mismatch.expected, mismatch.actual, wnum)
    compared = size_bytes if mismatch is None else mismatch.offset
    return VerifyResult(mismatch is None, None if mismatch is None else mismatch.offset, compared, wnum_hi,
                        applied, mismatch, time.monotonic() - started)


def _either(without: Path, with_doubts: Path, image_path: Path, block: int = BLOCK) -> Mismatch | None:
    """The first block of the image that is neither expected image's (None: every block is one)."""
    with open(without, "rb", buffering=0) as f0, open(with_doubts, "rb", buffering=0) as f1, \
            open(image_path, "rb", buffering=0) as fa:
        offset = 0
        while True:
            e0, e1, a = f0.read(block), f1.read(block), fa.read(block)
            if a not in (e0, e1):
                return _first_difference(offset, e0, a)
            if not a:
                return None
            offset += len(a)
