"""Recovery-point catalog: one SQLite row per applied batch (``data_dir/catalog.db``, WAL).

The journal's commit records are the authority; the catalog is an index over them that
:meth:`Catalog.reconcile` repairs after a crash. Blocking: call from a worker thread.

Tags (bookmarks, docs/PROTOCOL.md "Bookmarks") live in their own table keyed by (disk, gen, seq):
a point row rewritten by the reconcile keeps them, a point deleted takes its tags with it. A tag
is UTF-8 text ``KIND:NAME``; :data:`APP_KINDS` / :data:`GROUP_KINDS` name the kinds the named
points ``latest-app-consistent`` / ``latest-multi-machine`` look for.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from common import formats
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
CREATE INDEX IF NOT EXISTS points_wnum ON points (disk_id, wnum_hi, gen, seq);  -- machine points (at_wnum)
CREATE TABLE IF NOT EXISTS point_tags (
    disk_id TEXT NOT NULL, gen INTEGER NOT NULL, seq INTEGER NOT NULL, tag TEXT NOT NULL,
    PRIMARY KEY (disk_id, gen, seq, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS point_tags_tag ON point_tags (disk_id, tag);
"""

APP_KINDS = ("app", "group-app")  # app-consistent: the application's hooks ran around the freeze
GROUP_KINDS = ("group-app", "group-crash")  # multi-machine: the CS's two-phase bookmark
MAX_TAGS_LISTED = 64


def tag_text(tag: bytes) -> str:
    """A batch tag as the catalog keeps it (text; bytes that are not UTF-8 are replaced)."""
    return bytes(tag).decode("utf-8", errors="replace")


def tag_kind(tag: str) -> str:
    return tag.partition(":")[0] if ":" in tag else ""


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

    def public(self, tags: list[str] | None = None) -> dict[str, object]:
        return {"gen": self.gen, "seq": self.seq, "wnum_hi": self.wnum_hi, "t_first_ns": self.t_first_ns,
                "t_last_ns": self.t_last_ns, "received_ns": self.received_ns, "applied_ns": self.applied_ns,
                "accuracy": self.accuracy_name, "data_bytes": self.data_bytes, "flags": self.flags,
                "tags": list(tags or [])}


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


FORMAT = 1  # PRAGMA user_version; 0 (a catalog written before it was set) is version 1


class Catalog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._check_format()
        self._db.executescript(SCHEMA)

    def _check_format(self) -> None:
        """Refuse a catalog of a newer format before touching it; mark an older one as ``FORMAT``."""
        found = int(self._db.execute("PRAGMA user_version").fetchone()[0]) or 1
        try:
            formats.check(f"recovery-point catalog {self.path}", found, FORMAT)
        except formats.FormatTooNew:
            self._db.close()
            raise
        self._db.execute(f"PRAGMA user_version={FORMAT}")

    def __repr__(self) -> str:
        return f"Catalog({self.path})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, args: Iterable[object] = ()) -> list[Point]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM points {sql}", tuple(args)).fetchall()
        return [_point(r) for r in rows]

    def insert(self, point: Point, tags: Iterable[bytes] = ()) -> None:
        """Add (or rewrite) a point, and its batch's tags, in one transaction (a rewrite keeps the
        tags the point already has)."""
        texts = sorted({tag_text(t) for t in tags})
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(f"INSERT OR REPLACE INTO points ({_COLUMNS}) VALUES ({_PLACEHOLDERS})", astuple(point))
            self._db.executemany("INSERT OR IGNORE INTO point_tags (disk_id, gen, seq, tag) VALUES (?, ?, ?, ?)",
                                 [(point.disk_id, point.gen, point.seq, t) for t in texts])
            self._db.execute("COMMIT")

    def add_tags(self, disk_id: str, gen: int, seq: int, tags: Iterable[bytes]) -> None:
        """Tags of an existing point (the reconcile restores them from a staged batch)."""
        with self._lock:
            self._db.executemany("INSERT OR IGNORE INTO point_tags (disk_id, gen, seq, tag) VALUES (?, ?, ?, ?)",
                                 [(disk_id, gen, seq, tag_text(t)) for t in tags])

    def delete(self, disk_id: str, keys: Iterable[tuple[int, int]]) -> None:
        """Drop points, and their tags with them."""
        rows = [(disk_id, g, s) for g, s in keys]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM points WHERE disk_id = ? AND gen = ? AND seq = ?", rows)
            self._db.executemany("DELETE FROM point_tags WHERE disk_id = ? AND gen = ? AND seq = ?", rows)
            self._db.execute("COMMIT")

    def all(self, disk_id: str) -> list[Point]:
        return self._query("WHERE disk_id = ? ORDER BY gen, seq", (disk_id,))

    def get(self, disk_id: str, gen: int, seq: int) -> Point | None:
        rows = self._query("WHERE disk_id = ? AND gen = ? AND seq = ?", (disk_id, gen, seq))
        return rows[0] if rows else None

    def latest(self, disk_id: str) -> Point | None:
        rows = self._query("WHERE disk_id = ? ORDER BY gen DESC, seq DESC LIMIT 1", (disk_id,))
        return rows[0] if rows else None

    def has_valid(self, disk_id: str) -> bool:
        """Whether the disk has a valid point (accuracy not NONE): one a failover could roll back to."""
        return bool(self._query("WHERE disk_id = ? AND accuracy != ? LIMIT 1", (disk_id, int(Accuracy.NONE))))

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

    def segment_times(self, disk_id: str) -> dict[int, int]:
        """{journal segment: t_last_ns of its newest point} (retention, mt/pruner.py)."""
        with self._lock:
            rows = self._db.execute("SELECT segno, MAX(t_last_ns) FROM points WHERE disk_id = ? GROUP BY segno",
                                    (disk_id,)).fetchall()
        return {int(segno): int(t) for segno, t in rows}

    def in_segments_through(self, disk_id: str, segno: int) -> list[Point]:
        """The points whose commit record is in segment ``segno`` or older, oldest first."""
        return self._query("WHERE disk_id = ? AND segno <= ? ORDER BY gen, seq", (disk_id, segno))

    def _first(self, disk_id: str, where: str, args: tuple[int, ...]) -> Point | None:
        rows = self._query(f"WHERE disk_id = ? AND {where} LIMIT 1", (disk_id, *args))
        return rows[0] if rows else None

    def newest_below_wnum(self, disk_id: str, bound: int) -> Point | None:
        """The newest point with ``wnum_hi < bound`` (machine points): the highest ``wnum_hi``, the
        newest batch among equals. Not simply the newest batch: a resync by an agent restarted after a
        crash knows no write number, so its batches carry ``wnum_hi`` 0 (accuracy none / approximate)
        after points with higher ones, and hold writes above every earlier boundary."""
        return self._first(disk_id, "wnum_hi < ? ORDER BY wnum_hi DESC, gen DESC, seq DESC", (bound,))

    def next_after(self, disk_id: str, gen: int, seq: int) -> Point | None:
        """The point right after (gen, seq)."""
        return self._first(disk_id, "(gen > ? OR (gen = ? AND seq > ?)) ORDER BY gen, seq", (gen, gen, seq))

    def next_write_after(self, disk_id: str, gen: int, seq: int) -> Point | None:
        """The first point after (gen, seq) holding a client write (``wnum_first`` > 0)."""
        return self._first(disk_id, "wnum_first > 0 AND (gen > ? OR (gen = ? AND seq > ?)) ORDER BY gen, seq",
                           (gen, gen, seq))

    def first_write_after(self, disk_id: str, t_ns: int) -> Point | None:
        """The first point holding a client write whose last write is later than ``t_ns``."""
        return self._first(disk_id, "wnum_first > 0 AND t_last_ns > ? ORDER BY gen, seq", (t_ns,))

    # -- tags --------------------------------------------------------------------------------

    def tags_of(self, disk_id: str, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], list[str]]:
        """{(gen, seq): [tag, ...]} for those of ``keys`` that have tags."""
        wanted = set(keys)
        if not wanted:
            return {}
        lo, hi = min(wanted), max(wanted)
        with self._lock:
            rows = self._db.execute(
                "SELECT gen, seq, tag FROM point_tags WHERE disk_id = ? AND (gen > ? OR (gen = ? AND seq >= ?)) "
                "AND (gen < ? OR (gen = ? AND seq <= ?)) ORDER BY gen, seq, tag",
                (disk_id, lo[0], lo[0], lo[1], hi[0], hi[0], hi[1])).fetchall()
        out: dict[tuple[int, int], list[str]] = {}
        for gen, seq, tag in rows:
            if (gen, seq) in wanted:
                out.setdefault((gen, seq), []).append(str(tag))
        return out

    def listing(self, disk_id: str, limit: int, tag: str | None = None) -> list[dict[str, object]]:
        """The newest ``limit`` points (only those carrying ``tag`` if given), oldest first, each
        with its tags (PROTOCOL.md, MT control API)."""
        if tag is None:
            rows = self.recent(disk_id, limit)
        else:
            rows = self._query("WHERE disk_id = ? AND EXISTS (SELECT 1 FROM point_tags t WHERE t.disk_id = "
                               "points.disk_id AND t.gen = points.gen AND t.seq = points.seq AND t.tag = ?) "
                               "ORDER BY gen DESC, seq DESC LIMIT ?", (disk_id, tag, limit))
        tags = self.tags_of(disk_id, [p.key for p in rows])
        return [p.public(tags.get(p.key, [])[:MAX_TAGS_LISTED]) for p in reversed(rows)]

    def by_tag(self, disk_id: str, tag: str) -> Point | None:
        """The newest point carrying ``tag``."""
        rows = self._query("WHERE disk_id = ? AND EXISTS (SELECT 1 FROM point_tags t WHERE t.disk_id = "
                           "points.disk_id AND t.gen = points.gen AND t.seq = points.seq AND t.tag = ?) "
                           "ORDER BY gen DESC, seq DESC LIMIT 1", (disk_id, tag))
        return rows[0] if rows else None

    def latest_tagged(self, disk_id: str, kinds: Iterable[str]) -> Point | None:
        """The newest valid point (accuracy not NONE) carrying a tag of one of ``kinds``."""
        likes = [f"{k}:*" for k in kinds if k.replace("-", "").isalnum()]  # GLOB: case-sensitive
        if not likes:
            return None
        match = " OR ".join("t.tag GLOB ?" for _ in likes)
        rows = self._query("WHERE disk_id = ? AND accuracy != ? AND EXISTS (SELECT 1 FROM point_tags t WHERE "
                           "t.disk_id = points.disk_id AND t.gen = points.gen AND t.seq = points.seq AND "
                           f"({match})) ORDER BY gen DESC, seq DESC LIMIT 1",
                           (disk_id, int(Accuracy.NONE), *likes))
        return rows[0] if rows else None

    # -- listings (recovery points as an operator chooses them; mt/failover.py probe) ------------

    def oldest(self, disk_id: str) -> Point | None:
        """The oldest point the disk keeps (the retention window's lower bound)."""
        return self._first(disk_id, "1 = 1 ORDER BY gen, seq", ())

    def tagged(self, disk_id: str, kinds: Iterable[str], limit: int) -> list[Point]:
        """The newest ``limit`` valid points (accuracy not NONE) carrying a tag of one of ``kinds``,
        newest first."""
        likes = [f"{k}:*" for k in kinds if k.replace("-", "").isalnum()]  # GLOB: case-sensitive
        if not likes:
            return []
        match = " OR ".join("t.tag GLOB ?" for _ in likes)
        return self._query("WHERE disk_id = ? AND accuracy != ? AND EXISTS (SELECT 1 FROM point_tags t WHERE "
                           "t.disk_id = points.disk_id AND t.gen = points.gen AND t.seq = points.seq AND "
                           f"({match})) ORDER BY gen DESC, seq DESC LIMIT ?",
                           (disk_id, int(Accuracy.NONE), *likes, limit))
