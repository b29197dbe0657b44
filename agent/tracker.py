"""Change tracker, the emulated filter driver's core, with its three modes.

Pure: no I/O, no clock (reads of the disk come through the ``read`` callable given to
:meth:`Tracker.cut`). The shell feeds it events, switches modes and asks for cuts.

Rules:
- one write counter per machine: a write is accepted only when its wnum is greater than every
  wnum seen before, on any disk (:class:`WnumError` otherwise), so write order is total;
- a write to a disk that is not watched (not protected yet) still advances the counter;
- per watched disk, one mode at a time (:class:`TrackMode`):
  DATA keeps each write's bytes in arrival order (with resync records, wnum 0, interleaved);
  METADATA keeps only (offset, length) and reads those regions back when the batch is cut;
  BITMAP keeps only a dirty bitmap (1 bit per ``block_bytes``), drained a chunk per cut;
- :meth:`Tracker.cut` hands over a disk's pending changes with ``wnum_hi`` = the highest wnum
  accepted so far on the machine. Reads happen inside the cut, with no write in between, and
  metadata regions are read after every data record of the cut, so the replica after a DATA or
  METADATA batch equals the disk at ``wnum_hi`` (for the regions the batch touches: all the
  regions written since the previous cut). A bitmap drain cut holds only part of the dirty
  blocks: the stream has no valid point until the bitmap is empty again;
- a client write that failed part-way (:meth:`Tracker.record_torn`) took no wnum, but its range
  may hold new bytes: it is tracked as a region read back at the next cut (a bitmap range in
  BITMAP mode), and that cut is no better than METADATA (its bytes are no acknowledged write's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from agent.regions import Bitmap, merge
from common.wire.batch import Record

Read = Callable[[int, int], bytes]


class WnumError(ValueError):
    """A write whose number is not above the last one the machine processed."""


class TrackMode(Enum):
    DATA = "data"
    METADATA = "metadata"
    BITMAP = "bitmap"


@dataclass
class Cut:
    """What one disk accumulated since its previous cut."""

    records: list[Record]
    wnum_first: int  # first client write number in the cut, 0 if none
    wnum_hi: int
    t_first_ns: int
    t_last_ns: int
    nbytes: int
    resync_records: int
    resync_done: bool
    mode: TrackMode  # the mode the disk was in when the changes were recorded (worst of them)
    bitmap_started: bool = False  # the disk entered bitmap mode since the previous cut
    bitmap_drained: bool = False  # no dirty block is left after this cut
    tags: list[bytes] = field(default_factory=list)  # bookmarks placed at this cut's boundary
    folded: bool = False  # metadata regions too large for one batch went to bitmap mode


_RANK = {TrackMode.DATA: 0, TrackMode.METADATA: 1, TrackMode.BITMAP: 2}


@dataclass
class _Disk:
    size_bytes: int
    block_bytes: int
    mode: TrackMode = TrackMode.DATA
    records: list[Record] = field(default_factory=list)
    extents: list[tuple[int, int]] = field(default_factory=list)  # metadata-mode writes
    bitmap: Bitmap | None = None
    nbytes: int = 0  # data bytes held (records)
    extent_bytes: int = 0  # sum of metadata extent lengths (an upper bound of their union)
    wnum_first: int = 0
    t_first_ns: int = 0
    t_last_ns: int = 0
    resync_records: int = 0
    resync_done: bool = False
    forced: bool = False  # cut a batch even if it holds nothing (a marker)
    worst: TrackMode = TrackMode.DATA  # worst mode since the previous cut
    bitmap_started: bool = False
    tags: list[bytes] = field(default_factory=list)

    def touch(self, now_ns: int) -> None:
        if self.empty():
            self.t_first_ns = now_ns
        self.t_last_ns = now_ns

    def empty(self) -> bool:
        return (not self.records and not self.extents and not self.resync_done and not self.forced
                and not self.bitmap and not self.tags)

    def reset(self) -> None:
        self.records, self.extents, self.tags = [], [], []
        self.nbytes = self.extent_bytes = self.wnum_first = self.resync_records = 0
        self.t_first_ns = self.t_last_ns = 0
        self.resync_done = self.forced = self.bitmap_started = False
        self.worst = self.mode


class Tracker:
    """Per-machine tracker holding, per watched disk, the changes not yet cut."""

    def __init__(self, last_wnum: int = 0, block_bytes: int = 4096) -> None:
        self.last_wnum = last_wnum
        self.block_bytes = block_bytes
        self._disks: dict[int, _Disk] = {}

    def watch(self, disk: int, size_bytes: int = 1 << 62) -> None:
        """Start tracking ``disk`` in DATA mode (drops anything it held)."""
        self._disks[disk] = _Disk(size_bytes, self.block_bytes)

    def unwatch(self, disk: int) -> int:
        """Stop tracking ``disk``; returns the bytes dropped."""
        pending = self._disks.pop(disk, None)
        return pending.nbytes if pending else 0

    def watching(self, disk: int) -> bool:
        return disk in self._disks

    def mode(self, disk: int) -> TrackMode:
        return self._disks[disk].mode

    def check_wnum(self, wnum: int) -> None:
        if wnum <= self.last_wnum:
            raise WnumError(f"write number {wnum} is not above the last one processed ({self.last_wnum})")

    # ------------------------------------------------------------ events

    def record_write(self, disk: int, wnum: int, offset: int, data: bytes, now_ns: int) -> bool:
        """Account a client write already applied to the disk; True when it was tracked."""
        self.check_wnum(wnum)
        self.last_wnum = wnum
        d = self._disks.get(disk)
        if d is None or not data:
            return False
        d.touch(now_ns)
        if not d.wnum_first:
            d.wnum_first = wnum
        if d.mode is TrackMode.DATA:
            d.records.append(Record(offset, data))
            d.nbytes += len(data)
        elif d.mode is TrackMode.METADATA:
            d.extents.append((offset, len(data)))
            d.extent_bytes += len(data)
        else:
            assert d.bitmap is not None
            d.bitmap.set_range(offset, len(data))
        return True

    def record_torn(self, disk: int, offset: int, length: int, now_ns: int) -> bool:
        """A client write to [offset, +length) failed after part of it reached the disk: no
        wnum is used (the write was not acknowledged), but the next cut sends what the disk
        then holds there; True when the disk is watched."""
        d = self._disks.get(disk)
        if d is None or length <= 0:
            return False
        d.touch(now_ns)
        if d.mode is TrackMode.BITMAP:
            assert d.bitmap is not None
            d.bitmap.set_range(offset, length)
            return True
        d.extents.append((offset, length))
        d.extent_bytes += length
        if _RANK[d.worst] < _RANK[TrackMode.METADATA]:
            d.worst = TrackMode.METADATA
        return True

    def record_resync(self, disk: int, offset: int, data: bytes, now_ns: int) -> None:
        """Bytes read back from the disk now, replayed in order with the client writes."""
        d = self._disks[disk]
        if data:
            d.touch(now_ns)
            d.records.append(Record(offset, data))
            d.nbytes += len(data)
            d.resync_records += 1

    def mark_resync_start(self, disk: int, now_ns: int) -> None:
        """Make the next cut of ``disk`` yield a batch even if nothing changed (it carries the
        stream's RESYNC_START flag: the MT switches to the new generation when it applies it)."""
        d = self._disks[disk]
        d.touch(now_ns)
        d.forced = True

    def mark_resync_done(self, disk: int, now_ns: int) -> None:
        """The last resync record has been recorded: the next cut of ``disk`` completes it."""
        d = self._disks[disk]
        d.touch(now_ns)
        d.resync_done = True

    def add_tag(self, disk: int, tag: bytes, now_ns: int) -> None:
        """Put a bookmark at the next cut of ``disk`` (the cut happens even if nothing changed)."""
        d = self._disks[disk]
        d.touch(now_ns)
        d.tags.append(bytes(tag))

    def force(self, disk: int, now_ns: int) -> None:
        """The next cut of ``disk`` yields a batch even if empty (a common machine boundary)."""
        self.mark_resync_start(disk, now_ns)

    # ------------------------------------------------------------ modes

    def set_mode(self, disk: int, mode: TrackMode) -> None:
        """Switch a disk's mode. Going to BITMAP folds held changes into the bitmap (data records
        and resync records stay: they are already in order); leaving BITMAP needs it drained."""
        d = self._disks[disk]
        if mode is d.mode:
            return
        if mode is TrackMode.BITMAP:
            d.bitmap = d.bitmap or Bitmap(d.size_bytes, d.block_bytes)
            for off, length in d.extents:
                d.bitmap.set_range(off, length)
            d.extents, d.extent_bytes = [], 0
            d.bitmap_started = True
        elif d.mode is TrackMode.BITMAP:
            if d.bitmap:
                raise ValueError("the bitmap must be drained before leaving bitmap mode")
            d.bitmap, d.bitmap_started = None, False  # a stretch that never reached a cut
        d.mode = mode
        if d.empty() or _RANK[mode] > _RANK[d.worst]:
            d.worst = mode

    def bitmap_dirty_bytes(self, disk: int) -> int:
        d = self._disks.get(disk)
        return len(d.bitmap) * d.block_bytes if d and d.bitmap else 0

    # ------------------------------------------------------------ queries

    def pending_bytes(self, disk: int) -> int:
        """Bytes the next cut would carry (held data + metadata regions, at most the bound)."""
        d = self._disks.get(disk)
        return d.nbytes + d.extent_bytes if d else 0

    def held_bytes(self, disk: int) -> int:
        d = self._disks.get(disk)
        return d.nbytes if d else 0

    def total_bytes(self) -> int:
        """Data bytes held in memory on the machine (what the memory bound limits)."""
        return sum(d.nbytes for d in self._disks.values())

    def max_pending_bytes(self) -> int:
        """The largest amount of data bytes one disk holds (what forces a cut by size)."""
        return max((d.nbytes for d in self._disks.values()), default=0)

    def has_pending(self, disk: int) -> bool:
        d = self._disks.get(disk)
        return d is not None and not d.empty()

    def busy(self, disk: int, offset: int, length: int) -> bool:
        """Whether changes not yet cut touch [offset, offset+length)."""
        d = self._disks.get(disk)
        if d is None:
            return False
        end = offset + length
        if any(r.offset < end and offset < r.offset + len(r.data) for r in d.records):
            return True
        if any(o < end and offset < o + n for o, n in d.extents):
            return True
        return bool(d.bitmap) and d.bitmap.any_in(offset, length)  # type: ignore[union-attr]

    # ------------------------------------------------------------ cut

    def cut(self, disk: int, now_ns: int, read: Read | None = None, drain_bytes: int = 4 << 20) -> Cut | None:
        """Everything ``disk`` holds as one batch's content, or None when nothing changed.
        Metadata regions and bitmap blocks are read with ``read``; a batch reads back at most
        ``drain_bytes``: metadata regions that would not fit go to the bitmap (bitmap mode,
        drained a chunk per cut), so no batch outgrows what a PS cache can take."""
        d = self._disks.get(disk)
        if d is None or d.empty():
            return None
        merged = merge(d.extents)
        folded = bool(merged) and sum(n for _, n in merged) > drain_bytes
        if folded:
            self.set_mode(disk, TrackMode.BITMAP)  # folds the regions into the bitmap
            merged = []
        records = list(d.records)
        for off, length in merged:
            records.append(Record(off, _read(read, off, length)))
        if d.bitmap:
            for off, length in d.bitmap.take(drain_bytes):
                records.append(Record(off, _read(read, off, length)))
        drained = not d.bitmap
        cut = Cut(records=records, wnum_first=d.wnum_first, wnum_hi=self.last_wnum,
                  t_first_ns=d.t_first_ns or now_ns, t_last_ns=d.t_last_ns or now_ns,
                  nbytes=sum(len(r.data) for r in records), resync_records=d.resync_records,
                  resync_done=d.resync_done, mode=d.worst, bitmap_started=d.bitmap_started,
                  bitmap_drained=drained, tags=list(d.tags), folded=folded)
        keep_bitmap = d.bitmap
        d.reset()
        d.bitmap = keep_bitmap
        if keep_bitmap:  # more to drain: the next cut goes on with it
            d.t_first_ns = d.t_last_ns = now_ns
        return cut


def _read(read: Read | None, offset: int, length: int) -> bytes:
    if read is None:
        raise ValueError("a metadata or bitmap cut needs a read function")
    return read(offset, length)
