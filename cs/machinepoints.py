"""Machine-consistent recovery points (pure: no I/O) — the rule of docs/PROTOCOL.md, "Recovery
point semantics".

The agent numbers the writes of a machine with one counter (wnum) across its disks and cuts every
disk of the machine at the same instant, so the ``wnum_hi`` of any disk's point is a *machine
boundary*: at that cut the machine had processed exactly the writes <= ``wnum_hi``. A disk's point
``p`` holds exactly the writes to that disk with wnum <= ``p.wnum_hi``; a disk that got no batch at
a cut had no write since its previous point. Hence, for a machine boundary W, the newest point of
each disk with ``wnum_hi <= W`` is that disk's state at W — provided the disk's next point (if any)
starts after W (``wnum_first > W``, or holds no client write at all), which a boundary guarantees
and which is checked anyway.

Choices of W (the CS asks each disk's MT for the facts, see ``cs/machines.py``):
- ``latest``: W = min over disks of their latest point's ``wnum_hi`` (every disk has reached W;
  the disk with the smallest latest point is taken as it is, the others go back to W).
- ``{"wnum": W}``: any W <= that minimum; each disk's MT checks that W is a boundary of its disk.
- ``{"time_ns": T}``: the newest machine point holding no write after T. Per disk, the first point
  with a client write whose last write is after T starts at ``m_d`` (its ``wnum_first``); every
  boundary below ``M = min m_d`` (and <= the latest minimum) holds no write after T, every boundary
  >= M does. W is the largest point boundary of any disk below that bound.
A machine point's accuracy is the worst of its disks' points; its time ``t_ns`` is the newest
``t_last_ns`` of its disks' points (a failover at that time gives the same W).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common import errors

ACCURACY_RANK = {"exact": 0, "approximate": 1, "none": 2}
MAX_U64 = 2**64 - 1


@dataclass(frozen=True)
class DiskPoint:
    """What the machine rule needs of one disk's point (as an MT reports it)."""

    gen: int
    seq: int
    wnum_first: int  # first client write in the batch, 0 if it holds none
    wnum_hi: int
    t_first_ns: int
    t_last_ns: int
    accuracy: str
    tags: tuple[str, ...] = ()  # its bookmark tags (when the MT listed them)

    @classmethod
    def parse(cls, item: Any) -> DiskPoint:
        """From an MT's report; anything malformed -> BadRequest (never trusted as is)."""
        if not isinstance(item, dict):
            raise errors.BadRequest("a point must be an object")
        values = {}
        for name in ("gen", "seq", "wnum_first", "wnum_hi", "t_first_ns", "t_last_ns"):
            value = item.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_U64:
                raise errors.BadRequest(f"point field {name} must be an unsigned 64-bit integer")
            values[name] = value
        if item.get("accuracy") not in ACCURACY_RANK:
            raise errors.BadRequest(f"point accuracy must be one of {', '.join(ACCURACY_RANK)}")
        tags = item.get("tags", [])
        if not isinstance(tags, list) or len(tags) > MAX_TAGS \
                or not all(isinstance(t, str) and len(t) <= MAX_TAG_CHARS for t in tags):
            raise errors.BadRequest(f"point tags must be a list of at most {MAX_TAGS} strings")
        return cls(accuracy=str(item["accuracy"]), tags=tuple(tags), **values)

    @classmethod
    def parse_optional(cls, item: Any) -> DiskPoint | None:
        return None if item is None else cls.parse(item)

    def public(self) -> dict[str, Any]:
        return {"gen": self.gen, "seq": self.seq, "wnum_first": self.wnum_first, "wnum_hi": self.wnum_hi,
                "t_first_ns": self.t_first_ns, "t_last_ns": self.t_last_ns, "accuracy": self.accuracy,
                "tags": list(self.tags), "types": point_types(self.tags, self.accuracy)}


APP_KINDS = ("app", "group-app")  # as mt/catalog.py: app-consistent (hooks ran around a freeze)
GROUP_KINDS = ("group-app", "group-crash")  # multi-machine: the CS's two-phase bookmark
MAX_TAGS = 64
MAX_TAG_CHARS = 4096


def tag_kind(tag: str) -> str:
    return tag.partition(":")[0] if ":" in tag else ""


def point_types(tags: Sequence[str], accuracy: str) -> list[str]:
    """A point's types: none for a point that is not valid (accuracy ``none``: resyncing); else
    ``crash-consistent`` (every disk of the machine is cut at one write boundary), plus
    ``app-consistent`` with an ``app:`` / ``group-app:`` tag and ``multi-machine`` with a ``group-*:``
    tag (docs/PROTOCOL.md, "Bookmarks")."""
    if accuracy == "none":
        return []
    kinds = {tag_kind(t) for t in tags}
    return ["crash-consistent"] + (["app-consistent"] if kinds & set(APP_KINDS) else []) \
        + (["multi-machine"] if kinds & set(GROUP_KINDS) else [])


def worst(accuracies: Sequence[str]) -> str:
    return max(accuracies, key=lambda a: ACCURACY_RANK[a]) if accuracies else "none"


@dataclass(frozen=True)
class MachinePoint:
    wnum: int
    t_ns: int
    accuracy: str
    disks: Mapping[str, DiskPoint]

    @property
    def tags(self) -> list[str]:
        """The tags every disk's point carries, each point cut at this very W (a bookmark cuts every
        disk of the machine at one boundary; the same tag at other W is not this machine point's)."""
        sets = [set(p.tags) for p in self.disks.values() if p.wnum_hi == self.wnum]
        return sorted(set.intersection(*sets)) if sets and len(sets) == len(self.disks) else []

    def public(self) -> dict[str, Any]:
        """Time, types, accuracy and write range: the machine's writes ``wnum_first..wnum`` are in
        its disks' newest batches here (``wnum_first`` 0 when none holds a client write)."""
        firsts = [p.wnum_first for p in self.disks.values() if p.wnum_first]
        tags = self.tags
        return {"wnum": self.wnum, "wnum_first": min(firsts, default=0), "wnum_hi": self.wnum, "t_ns": self.t_ns,
                "accuracy": self.accuracy, "tags": tags, "types": point_types(tags, self.accuracy),
                "disks": {d: p.public() for d, p in sorted(self.disks.items())}}


class Window:
    """A contiguous run of one disk's points, oldest first (the newest N the MT holds)."""

    def __init__(self, points: Sequence[DiskPoint]) -> None:
        self.points = list(points)
        his = [p.wnum_hi for p in self.points]
        self._his = his if all(a <= b for a, b in zip(his, his[1:], strict=False)) else None

    def at(self, wnum: int) -> DiskPoint | None:
        """The disk's state at machine boundary ``wnum``: its newest point with wnum_hi <= wnum,
        or None if the window does not show it (no such point here, or ``wnum`` falls inside one
        of the disk's batches, or the disk has not reached ``wnum`` yet)."""
        if self._his is not None:
            i = bisect.bisect_right(self._his, wnum) - 1
        else:  # wnum_hi going back (a restart's resync batch): newest by (gen, seq) wins
            i = max((k for k, p in enumerate(self.points) if p.wnum_hi <= wnum), default=-1)
        if i < 0:
            return None
        point = self.points[i]
        nxt = self.points[i + 1] if i + 1 < len(self.points) else None
        if nxt is None:
            return point if point.wnum_hi == wnum else None
        if nxt.wnum_first and nxt.wnum_first <= wnum:
            return None
        return point


def latest_wnum(latests: Mapping[str, DiskPoint | None]) -> int:
    """The machine's latest consistent boundary: the smallest latest ``wnum_hi`` of its disks."""
    if not latests:
        raise errors.Conflict("the machine has no protected disk")
    missing = sorted(d for d, p in latests.items() if p is None)
    if missing:
        raise errors.NotFound(f"no recovery point yet on disk(s) {', '.join(missing)}")
    return min(p.wnum_hi for p in latests.values() if p is not None)


def check_wnum(latests: Mapping[str, DiskPoint | None], wnum: int) -> int:
    """``wnum`` itself, if every disk has reached it (each MT checks it is a boundary)."""
    top = latest_wnum(latests)
    if wnum > top:
        raise errors.Conflict(f"wnum {wnum} is past the machine's latest consistent point {top}")
    return wnum


def time_bound(latests: Mapping[str, DiskPoint | None], afters: Mapping[str, DiskPoint | None]) -> int:
    """Exclusive bound X for a time-based point: every machine boundary < X holds no write after
    the time (``afters``: per disk, the first point with a client write after it, or None)."""
    top = latest_wnum(latests)
    starts = [p.wnum_first for p in afters.values() if p is not None and p.wnum_first]
    return min([top + 1, *starts])


def time_wnum(belows: Mapping[str, DiskPoint | None], bound: int) -> int:
    """The newest boundary below ``bound`` (``belows``: per disk, its newest point below it; a disk
    without one has no state that early, so neither has the machine)."""
    found = [p.wnum_hi for p in belows.values() if p is not None and p.wnum_hi < bound]
    if not found or len(found) < len(belows):
        raise errors.NotFound("no machine point holds only writes made at or before that time")
    return max(found)


def machine_point(windows: Mapping[str, Window], wnum: int) -> MachinePoint | None:
    """The machine point at boundary ``wnum``, if every disk's window shows its state there."""
    disks = {}
    for disk_id, window in windows.items():
        point = window.at(wnum)
        if point is None:
            return None
        disks[disk_id] = point
    if not disks:
        return None
    return MachinePoint(wnum, max(p.t_last_ns for p in disks.values()),
                        worst([p.accuracy for p in disks.values()]), disks)


def listing(windows: Mapping[str, Window], limit: int) -> list[MachinePoint]:
    """The newest ``limit`` machine points the windows show, oldest first: one per distinct
    ``wnum_hi`` of any disk's point (a machine boundary) up to the smallest latest one."""
    if not windows or any(not w.points for w in windows.values()):
        return []
    top = min(w.points[-1].wnum_hi for w in windows.values())
    candidates = sorted({p.wnum_hi for w in windows.values() for p in w.points if p.wnum_hi <= top}, reverse=True)
    out: list[MachinePoint] = []
    for wnum in candidates:
        point = machine_point(windows, wnum)
        if point is not None:
            out.append(point)
            if len(out) >= limit:
                break
    return out[::-1]
