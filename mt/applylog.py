"""The MT's apply log: which batches were applied, to prove that none was applied twice.

Design. A batch is applied exactly when its commit record is durable in the disk's undo journal
(mt/journal.py rule 2): the record carries (generation, seq), the segment header the disk, and
(segment, offset) locate it. An interrupted batch leaves no commit record (it is rolled back on
open), a retried one writes its first. So the apply log of a disk is a *view* over the commit
records — no extra write, no extra fsync on the apply path — plus, for what retention removed,
a pruning-safe summary ``journal/{disk}/applied-pruned.jsonl``: one line per pruned segment
(its commits' count, first and last key, any key repeated inside it), appended and fsynced by the
pruner (mt/pruner.py) *before* the floor is moved. A line whose segment still exists (a crash
between the line and the floor) is ignored: the segment's own records win; the newest line of a
segment wins.

The rule checked (:func:`check_apply_log`): every (disk, generation, seq) is applied at most
once. Since the MT applies strictly in key order (mt/apply.py ``next_key``), keys must also be
strictly increasing in journal order: a key at or below an earlier one (e.g. a pruned batch
applied again, known only through its segment's first/last keys) is a *regression*. A failover
commit (mt/view.py) truncates the journal after its point: the batches after it were rolled back
out of the replica, so they leave the log. Run the check on a stopped MT (or accept that a
segment pruned while scanning is missed, never double-counted).

``python -m mt.applylog DATA_DIR`` prints the report as JSON and exits 1 if the rule is broken.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import logging as dlog
from common.wire import journal as wj

log = dlog.get("drlab.mt.applylog")

PRUNED = "applied-pruned.jsonl"
FORMAT = 1

Key = tuple[int, int]


@dataclass(frozen=True)
class Applied:
    """One applied batch: its commit record is at ``commit_off`` of segment ``segno``."""

    disk_id: str
    gen: int
    seq: int
    segno: int
    commit_off: int


@dataclass(frozen=True)
class PrunedSegment:
    """What a pruned segment held: ``commits`` commit records, keys ``first``..``last``."""

    segno: int
    commits: int
    first: Key | None
    last: Key | None
    repeated: tuple[Key, ...] = ()
    keys_sha256: str = ""


@dataclass
class ApplyLogReport:
    disks: int = 0
    batches: int = 0  # applied batches known: live commit records + pruned summaries
    live: int = 0
    pruned: int = 0
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)
    regressions: list[tuple[str, int, int]] = field(default_factory=list)  # key <= an earlier key

    @property
    def ok(self) -> bool:
        return not self.duplicates and not self.regressions

    def to_doc(self) -> dict[str, Any]:
        return {"ok": self.ok, "disks": self.disks, "batches": self.batches, "live": self.live,
                "pruned": self.pruned, "duplicates": [list(d) for d in self.duplicates],
                "regressions": [list(r) for r in self.regressions]}


# -- the view over the journal ---------------------------------------------------------------------

def segment_commits(path: Path, disk_id: str) -> list[Applied]:
    """The commit records of one segment file, in file order (a torn tail ends the scan)."""
    result = wj.scan_segment(path)
    segno = int(path.stem)
    return [Applied(disk_id, rec.gen, rec.seq, segno, off) for off, rec in result.records
            if isinstance(rec, wj.CommitInfo)]


def live_segments(journal_dir: Path) -> list[int]:
    return sorted(int(p.stem) for p in journal_dir.glob("*.seg") if p.stem.isdigit())


def read_pruned(journal_dir: Path) -> dict[int, PrunedSegment]:
    """The pruned-segment summaries, newest line per segment (a torn last line is skipped)."""
    out: dict[int, PrunedSegment] = {}
    path = journal_dir / PRUNED
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            log.warning("apply_log_torn_line", path=str(path))
            continue
        first, last = doc.get("first"), doc.get("last")
        out[int(doc["segno"])] = PrunedSegment(
            int(doc["segno"]), int(doc["commits"]), tuple(first) if first else None,  # type: ignore[arg-type]
            tuple(last) if last else None, tuple(tuple(k) for k in doc.get("repeated", ())),  # type: ignore[arg-type]
            str(doc.get("keys_sha256", "")))
    return out


def summarize(commits: list[Applied], segno: int) -> PrunedSegment:
    keys = [(c.gen, c.seq) for c in commits]
    seen: set[Key] = set()
    repeated = []
    for k in keys:
        if k in seen:
            repeated.append(k)
        seen.add(k)
    digest = hashlib.sha256(b"".join(g.to_bytes(8, "little") + s.to_bytes(8, "little") for g, s in keys))
    return PrunedSegment(segno, len(keys), keys[0] if keys else None, keys[-1] if keys else None,
                         tuple(repeated), digest.hexdigest())


def note_pruned(journal_dir: Path, disk_id: str, floor: int) -> int:
    """Append (and fsync) the summary of every live segment below ``floor`` not yet summarized;
    the pruner calls this before it moves the floor. Returns how many lines were appended."""
    done = read_pruned(journal_dir)
    lines = []
    for segno in live_segments(journal_dir):
        if segno >= floor or segno in done:
            continue
        s = summarize(segment_commits(journal_dir / f"{segno:08d}.seg", disk_id), segno)
        lines.append(json.dumps({"format": FORMAT, "segno": s.segno, "commits": s.commits,
                                 "first": s.first, "last": s.last, "repeated": s.repeated,
                                 "keys_sha256": s.keys_sha256}) + "\n")
    if lines:
        fd = os.open(journal_dir / PRUNED, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, "".join(lines).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return len(lines)


# -- the check ---------------------------------------------------------------------------------------

def check_disk(journal_dir: Path, report: ApplyLogReport) -> None:
    """Add one disk's apply log to ``report`` (segments in number order, pruned ones by summary)."""
    disk_id = journal_dir.name
    pruned = read_pruned(journal_dir)
    live = {segno: journal_dir / f"{segno:08d}.seg" for segno in live_segments(journal_dir)}
    seen: set[Key] = set()
    newest: Key | None = None
    for segno in sorted(set(pruned) | set(live)):
        if segno in live:
            try:
                commits = segment_commits(live[segno], disk_id)
            except FileNotFoundError:  # pruned while scanning
                continue
            keys = [(c.gen, c.seq) for c in commits]
            report.live += len(keys)
            report.batches += len(keys)
        else:
            s = pruned[segno]
            keys = [k for k in dict.fromkeys((s.first, s.last)) if k is not None]  # its ends: enough for the order
            report.pruned += s.commits
            report.batches += s.commits
            report.duplicates += [(disk_id, *k) for k in s.repeated]
        for key in keys:
            if key in seen:
                report.duplicates.append((disk_id, *key))
            elif newest is not None and key <= newest:
                report.regressions.append((disk_id, *key))
            seen.add(key)
            newest = key if newest is None else max(newest, key)


def check_apply_log(data_dir: Path) -> ApplyLogReport:
    """Check the apply log of every disk under an MT data directory: each (disk, generation, seq)
    applied at most once, in increasing order (see the module docstring)."""
    report = ApplyLogReport()
    root = Path(data_dir) / "journal"
    for journal_dir in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        report.disks += 1
        check_disk(journal_dir, report)
    if not report.ok:
        log.error("apply_log_violation", duplicates=report.duplicates[:20], regressions=report.regressions[:20])
    return report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mt.applylog MT_DATA_DIR", file=sys.stderr)
        return 2
    report = check_apply_log(Path(args[0]))
    print(json.dumps(report.to_doc(), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
