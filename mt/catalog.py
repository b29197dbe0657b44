"""Recovery-point catalog: one SQLite row per applied batch (``data_dir/catalog.db``, WAL).

The journal's commit records are the authority; the catalog is an index over them that
:meth:`Catalog.reconcile` repairs after a crash. Blocking: call from a worker thread.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from common.wire.batch import Accuracy, Flags, Mode

ACCURACY_NAMES = {Accuracy.EXACT: "exact", Accuracy.APPROXIMATE: "approximate", Accuracy.NONE: "none"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    disk_id TEXT NOT NULL, gen INTEGER NOT NULL, seq INTEGER NOT NULL,
    wnum_first INTEGER NOT NULL, wnum_hi INTEGER NOT NULL,
    t_first_ns INTEGER NOT NULL, t_last_ns INTEGER NOT NULL,
    received_ns INTEGER NOT NULL, applied_ns INTEGER NOT NULL,
    accuracy INTEGER NOT NULL, flags INTEGER NOT NULL, in_resync INTEGER NOT NULL,
    segno INTEGER NOT NULL, undo_off INTEGER NOT NULL, commit_off INTEGER NOT NULL,
    data_bytes INTEGER NOT NULL, checksum BLOB,
    PRIMARY KEY (disk_id, gen, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_time ON points (disk_id, t_last_ns);
"""


@dataclass(frozen=True)
class Point:
    disk_id: str
    gen: int
    seq: int
    wnum_first: int
    wnum_hi: int
    t_first_ns: int
    t_last_ns: int
    received_ns: int
    applied_ns: int
    accuracy: int
    flags: int
    in_resync: bool
    segno: int
    undo_off: int
    commit_off: int
    data_bytes: int
    checksum: bytes | None

    @property
    def key(self) -> tuple[int, int]:
        return (self.gen, self.seq)

    @property
    def accuracy_name(self) -> str:
        return ACCURACY_NAMES[Accuracy(self.accuracy)]

    def public(self) -> dict[str, object]:
        return {"gen": self.gen, "seq": self.seq, "wnum_hi": self.wnum_hi, "t_first_ns": self.t_first_ns,
                "t_last_ns": self.t_last_ns, "received_ns": self.received_ns, "applied_ns": self.applied_ns,
                "accuracy": self.accuracy_name, "data_bytes": self.data_bytes, "flags": self.flags}


_COLUMNS = ", ".join(f.name for f in fields(Point))
_PLACEHOLDERS = ", ".join("?" for _ in fields(Point))


def point_accuracy(in_resync: bool, mode: int, accuracy: int, flags: int) -> tuple[Accuracy, bool]:
    """(accuracy of the point after this batch, whether a resync is still running after it).

    NONE from the batch flagged RESYNC_START up to (not including) the one flagged RESYNC_DONE;
    the RESYNC_DONE batch completes the copy (APPROXIMATE unless it claims EXACT); afterwards
    EXACT for data-mode batches, APPROXIMATE for metadata mode, never better than the header.
    """
    if flags & Flags.RESYNC_START:
        in_resync = True
    if flags & Flags.RESYNC_DONE:
        return Accuracy(min(int(accuracy), int(Accuracy.APPROXIMATE))), False
    if in_resync:
        return Accuracy.NONE, True
    by_mode = {Mode.DATA: Accuracy.EXACT, Mode.METADATA: Accuracy.APPROXIMATE}.get(Mode(mode), Accuracy.NONE)
    return Accuracy(max(int(by_mode), int(accuracy))), False


def _point(row: tuple[object, ...]) -> Point:
    values = list(row)
    values[11] = bool(values[11])
    return Point(*values)  # type: ignore[arg-type]


class Catalog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def __repr__(self) -> str:
        return f"Catalog({self.path})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, args: Iterable[object] = ()) -> list[Point]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM points {sql}", tuple(args)).fetchall()
        return [_point(r) for r in rows]

    def insert(self, point: Point) -> None:
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO points ({_COLUMNS}) VALUES ({_PLACEHOLDERS})", astuple(point))

    def delete(self, disk_id: str, keys: Iterable[tuple[int, int]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM points WHERE disk_id = ? AND gen = ? AND seq = ?",
                                 [(disk_id, g, s) for g, s in keys])
            self._db.execute("COMMIT")

    def all(self, disk_id: str) -> list[Point]:
        return self._query("WHERE disk_id = ? ORDER BY gen, seq", (disk_id,))

    def get(self, disk_id: str, gen: int, seq: int) -> Point | None:
        rows = self._query("WHERE disk_id = ? AND gen = ? AND seq = ?", (disk_id, gen, seq))
        return rows[0] if rows else None

    def latest(self, disk_id: str) -> Point | None:
        rows = self._query("WHERE disk_id = ? ORDER BY gen DESC, seq DESC LIMIT 1", (disk_id,))
        return rows[0] if rows else None

    def recent(self, disk_id: str, limit: int) -> list[Point]:
        """The newest ``limit`` points, newest first."""
        return self._query("WHERE disk_id = ? ORDER BY gen DESC, seq DESC LIMIT ?", (disk_id, limit))

    def at_time(self, disk_id: str, t_ns: int) -> Point | None:
        """The newest point that holds no write after ``t_ns``: the batch just before the first
        batch whose last write is later than ``t_ns``."""
        after = self._query("WHERE disk_id = ? AND t_last_ns > ? ORDER BY gen, seq LIMIT 1", (disk_id, t_ns))
        if not after:
            return self.latest(disk_id)
        g, s = after[0].key
        rows = self._query("WHERE disk_id = ? AND (gen < ? OR (gen = ? AND seq < ?)) "
                           "ORDER BY gen DESC, seq DESC LIMIT 1", (disk_id, g, g, s))
        return rows[0] if rows else None

    def newer_than(self, disk_id: str, gen: int, seq: int) -> list[Point]:
        """Points after (gen, seq), newest first."""
        return self._query("WHERE disk_id = ? AND (gen > ? OR (gen = ? AND seq > ?)) ORDER BY gen DESC, seq DESC",
                           (disk_id, gen, gen, seq))
