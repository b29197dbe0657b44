"""Change tracker in data mode (write order), the emulated filter driver's core.

Pure: no I/O, no clock. The shell feeds it events and asks for cuts.

Rules:
- one write counter per machine: a write is accepted only when its wnum is greater than every
  wnum seen before, on any disk (:class:`WnumError` otherwise), so write order is total;
- a write to a disk that is not watched (not protected yet) still advances the counter;
- changes of a watched disk are kept in arrival order: client writes (wnum >= 1) and resync
  records (wnum 0, bytes read back from the disk) interleave exactly as they happened;
- :meth:`Tracker.cut` hands over everything pending for one disk with ``wnum_hi`` = the
  highest wnum accepted so far on the machine: the point after that batch holds exactly the
  writes with wnum <= wnum_hi to that disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.wire.batch import Record


class WnumError(ValueError):
    """A write whose number is not above the last one the machine processed."""


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


@dataclass
class _Pending:
    records: list[Record] = field(default_factory=list)
    nbytes: int = 0
    wnum_first: int = 0
    t_first_ns: int = 0
    t_last_ns: int = 0
    resync_records: int = 0
    resync_done: bool = False

    def add(self, record: Record, now_ns: int) -> None:
        if not self.records and not self.resync_done:
            self.t_first_ns = now_ns
        self.records.append(record)
        self.nbytes += len(record.data)
        self.t_last_ns = now_ns

    def empty(self) -> bool:
        return not self.records and not self.resync_done


class Tracker:
    """Per-machine tracker holding, per watched disk, the changes not yet cut."""

    def __init__(self, last_wnum: int = 0) -> None:
        self.last_wnum = last_wnum
        self._disks: dict[int, _Pending] = {}

    def watch(self, disk: int) -> None:
        """Start tracking ``disk`` (drops anything it held)."""
        self._disks[disk] = _Pending()

    def unwatch(self, disk: int) -> int:
        """Stop tracking ``disk``; returns the bytes dropped."""
        pending = self._disks.pop(disk, None)
        return pending.nbytes if pending else 0

    def watching(self, disk: int) -> bool:
        return disk in self._disks

    def check_wnum(self, wnum: int) -> None:
        if wnum <= self.last_wnum:
            raise WnumError(f"write number {wnum} is not above the last one processed ({self.last_wnum})")

    def record_write(self, disk: int, wnum: int, offset: int, data: bytes, now_ns: int) -> bool:
        """Account a client write already applied to the disk; True when it was tracked."""
        self.check_wnum(wnum)
        self.last_wnum = wnum
        pending = self._disks.get(disk)
        if pending is None or not data:
            return False
        if not pending.wnum_first:
            pending.wnum_first = wnum
        pending.add(Record(offset, data), now_ns)
        return True

    def record_resync(self, disk: int, offset: int, data: bytes, now_ns: int) -> None:
        """Bytes read back from the disk now, replayed in order with the client writes."""
        pending = self._disks[disk]
        if data:
            pending.add(Record(offset, data), now_ns)
            pending.resync_records += 1

    def mark_resync_done(self, disk: int, now_ns: int) -> None:
        """The last resync record has been recorded: the next cut of ``disk`` completes it."""
        pending = self._disks[disk]
        if pending.empty():
            pending.t_first_ns = pending.t_last_ns = now_ns
        pending.resync_done = True

    def pending_bytes(self, disk: int) -> int:
        pending = self._disks.get(disk)
        return pending.nbytes if pending else 0

    def total_bytes(self) -> int:
        return sum(p.nbytes for p in self._disks.values())

    def max_pending_bytes(self) -> int:
        return max((p.nbytes for p in self._disks.values()), default=0)

    def has_pending(self, disk: int) -> bool:
        pending = self._disks.get(disk)
        return pending is not None and not pending.empty()

    def cut(self, disk: int, now_ns: int) -> Cut | None:
        """Everything ``disk`` holds as one batch's content, or None when nothing changed."""
        pending = self._disks.get(disk)
        if pending is None or pending.empty():
            return None
        self._disks[disk] = _Pending()
        return Cut(records=pending.records, wnum_first=pending.wnum_first, wnum_hi=self.last_wnum,
                   t_first_ns=pending.t_first_ns or now_ns, t_last_ns=pending.t_last_ns or now_ns,
                   nbytes=pending.nbytes, resync_records=pending.resync_records,
                   resync_done=pending.resync_done)
