"""The MT's apply log (mt/applylog.py): a view over the journal's commit records plus pruned-segment
summaries. It counts every applied batch, survives pruning, flags a batch committed twice, and
stays clean after a kill at every named MT crash point (DRLAB_CRASH_AT, a child process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mtbatches import DISK_SIZE, BatchMaker, run_apply_child

from common import crashpoints
from common.wire import journal as wj
from mt import applylog
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.pruner import Policy, Pruner, Volume

DISK = "a7" * 16
REPO = Path(__file__).resolve().parents[2]
NS = 1_000_000_000
pytestmark = pytest.mark.timeout(90)


def open_store(data_dir: Path, segment_max_bytes: int = 1 << 30) -> DiskStore:
    store = DiskStore(DISK, data_dir, Catalog(data_dir / "catalog.db"), DISK_SIZE, segment_max_bytes)
    store.open()
    return store


def apply(store: DiskStore, maker: BatchMaker, n: int) -> list[bytes]:
    sent = []
    for _ in range(n):
        sent.append(maker.make())
        assert store.receive(maker.gen, maker.seq, sent[-1])
        assert store.apply_next() is not None
        maker.t_ns += 10 * NS
    return sent


def test_every_applied_batch_is_in_the_log_once(tmp_path: Path) -> None:
    store = open_store(tmp_path / "mt")
    sent = apply(store, BatchMaker(bytes.fromhex(DISK), seed=4), 6)
    assert not store.receive(1, 3, sent[2])  # a re-send (e.g. after a PS crash) is not applied again
    assert store.apply_next() is None
    store.close()
    report = applylog.check_apply_log(tmp_path / "mt")
    assert report.to_doc() == {"ok": True, "disks": 1, "batches": 6, "live": 6, "pruned": 0,
                               "duplicates": [], "regressions": []}


def test_a_batch_committed_twice_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(tmp_path / "mt")
    apply(store, BatchMaker(bytes.fromhex(DISK), seed=4), 3)
    store.journal.append_commit(wj.CommitInfo(1, 2, 0, 0, 0, 0, 0, 1, 0, 0))  # what a double apply leaves
    store.journal.append_commit(wj.CommitInfo(1, 1, 0, 0, 0, 0, 0, 1, 0, 0))
    store.journal.sync()
    store.close()
    report = applylog.check_apply_log(tmp_path / "mt")
    assert not report.ok and report.duplicates == [(DISK, 1, 2), (DISK, 1, 1)]
    assert applylog.main([str(tmp_path / "mt")]) == 1
    assert '"ok": false' in capsys.readouterr().out
    assert applylog.main([]) == 2


def test_pruned_segments_stay_counted_and_a_reapplied_pruned_batch_is_a_regression(tmp_path: Path) -> None:
    store = open_store(tmp_path / "mt", segment_max_bytes=30_000)
    apply(store, BatchMaker(bytes.fromhex(DISK), seed=17), 24)
    now = store.catalog.latest(DISK).t_last_ns  # type: ignore[union-attr]
    decision = Pruner(store, Volume(tmp_path / "mt", max_bytes=1 << 30), lambda: Policy(window_s=95)).run(now_ns=now)
    assert decision.through is not None and store.journal.segments()[0] > 1, "something was pruned"
    summaries = applylog.read_pruned(store.journal.directory)
    assert sorted(summaries) == list(range(1, decision.through + 1))
    report = applylog.check_apply_log(tmp_path / "mt")
    assert report.ok and report.batches == 24 and report.pruned == sum(s.commits for s in summaries.values()) > 0
    store.journal.append_commit(wj.CommitInfo(1, 2, 0, 0, 0, 0, 0, 1, 0, 0))  # (1, 2) lives only in a summary
    store.journal.sync()
    store.close()
    assert applylog.check_apply_log(tmp_path / "mt").regressions == [(DISK, 1, 2)]


def test_a_summary_of_a_segment_that_still_exists_is_not_counted_twice(tmp_path: Path) -> None:
    """A crash after the summary line, before the floor moved: the segment is still there."""
    store = open_store(tmp_path / "mt", segment_max_bytes=30_000)
    apply(store, BatchMaker(bytes.fromhex(DISK), seed=17), 12)
    store.close()
    journal_dir = tmp_path / "mt" / "journal" / DISK
    assert applylog.note_pruned(journal_dir, DISK, 3) == 2
    assert applylog.note_pruned(journal_dir, DISK, 3) == 0, "idempotent"
    with open(journal_dir / applylog.PRUNED, "a") as f:
        f.write('{"segno": 9, "comm')  # a torn last line
    report = applylog.check_apply_log(tmp_path / "mt")
    assert report.ok and (report.batches, report.live, report.pruned) == (12, 12, 0)


def run_child(data_dir: Path, name: str, count: int = 1) -> int:
    return run_apply_child(data_dir, DISK, crashpoints.env_for("mt", name, count))


@pytest.mark.parametrize("point", ["after_journal_fsync", "after_replica_write", "before_commit", "mid_rollback"])
def test_kill_at_each_mt_point_then_recovery_applies_every_batch_once(tmp_path: Path, point: str) -> None:
    data_dir = tmp_path / "mt"
    maker = BatchMaker(bytes.fromhex(DISK), seed=23)
    store = open_store(data_dir)
    apply(store, maker, 3)
    for _ in range(4):  # staged, not applied: the child applies them and dies in the 2nd
        assert store.receive(maker.gen, maker.seq + 1, maker.make(nrecords=6))
    store.close()
    if point == "mid_rollback":  # interrupt a batch, then die again while rolling it back on open
        assert run_child(data_dir, "after_replica_write", 2) == crashpoints.EXIT_CODE
        assert run_child(data_dir, point) == crashpoints.EXIT_CODE
    else:
        assert run_child(data_dir, point, 2) == crashpoints.EXIT_CODE
    assert applylog.check_apply_log(data_dir).live == 4, "the interrupted batch is not in the log"
    store = open_store(data_dir)
    while store.apply_next() is not None:
        pass
    assert (data_dir / "replicas" / f"{DISK}.img").read_bytes() == maker.images[(1, 7)]
    store.close()
    report = applylog.check_apply_log(data_dir)
    assert report.ok and report.batches == 7, report.to_doc()
