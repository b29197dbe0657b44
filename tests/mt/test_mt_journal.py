"""Apply through the undo journal, crash at every named point, recover, and check every image."""

from __future__ import annotations

from pathlib import Path

import pytest
from mtbatches import DISK_SIZE, BatchMaker, run_apply_child

from common.wire import journal as wj
from common.wire.batch import Accuracy, Flags, Mode
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.failover import choose_point, make_image
from mt.journal import CRASH_POINTS

DISK = "ab" * 16


def open_store(data_dir: Path, segment_max_bytes: int = 1 << 30) -> DiskStore:
    store = DiskStore(DISK, data_dir, Catalog(data_dir / "catalog.db"), DISK_SIZE, segment_max_bytes)
    store.open()
    return store


def stage_and_apply(store: DiskStore, maker: BatchMaker, n: int) -> None:
    for _ in range(n):
        data = maker.make()
        assert store.receive(maker.gen, maker.seq, data)
        assert store.apply_next() is not None


def replica_bytes(data_dir: Path) -> bytes:
    return (data_dir / "replicas" / f"{DISK}.img").read_bytes()


def assert_every_point(store: DiskStore, maker: BatchMaker, tmp: Path) -> None:
    """Every valid point's image (a failover refuses the others) equals the expected one."""
    points = store.catalog.all(DISK)
    assert [p.key for p in points] == sorted(maker.images)[:len(points)]
    for p in points:
        if p.accuracy == Accuracy.NONE:
            continue
        result = make_image(store, p, tmp / f"img-{p.gen}-{p.seq}.img")
        assert Path(result["image_path"]).read_bytes() == maker.images[p.key], f"point {p.key}"


def test_apply_writes_replica_and_every_point_rolls_back_exactly(tmp_path: Path) -> None:
    maker = BatchMaker(bytes.fromhex(DISK), seed=7)
    store = open_store(tmp_path / "mt", segment_max_bytes=40_000)
    stage_and_apply(store, maker, 12)
    assert replica_bytes(tmp_path / "mt") == maker.images[(1, 12)]
    assert len(store.journal.segments()) > 1, "small segments must rotate"
    assert store.staging.keys() == []
    assert_every_point(store, maker, tmp_path)
    store.close()


def test_point_for_time_is_the_image_after_the_batch_at_that_time(tmp_path: Path) -> None:
    maker = BatchMaker(bytes.fromhex(DISK), seed=3)
    store = open_store(tmp_path / "mt")
    stage_and_apply(store, maker, 6)
    rows = store.catalog.all(DISK)
    target = rows[2]
    for t in (target.t_last_ns, rows[3].t_first_ns - 1):
        point = choose_point(store.catalog, DISK, {"time_ns": t})
        assert point.key == target.key
        result = make_image(store, point, tmp_path / f"t{t}.img")
        assert Path(result["image_path"]).read_bytes() == maker.images[target.key]
        assert result["point"]["wnum_hi"] == target.wnum_hi
    with pytest.raises(Exception, match="no recovery point"):
        choose_point(store.catalog, DISK, {"time_ns": rows[0].t_first_ns - 1})
    store.close()


def run_child(data_dir: Path, crash_at: str) -> int:
    return run_apply_child(data_dir, DISK, {"DRLAB_MT_CRASH_AT": crash_at})  # the MT's own variable


@pytest.mark.parametrize("crash_at", ["after_journal_fsync", "after_replica_write", "before_commit"])
def test_kill_at_crash_point_then_recovery_restores_pre_batch_image(tmp_path: Path, crash_at: str) -> None:
    data_dir = tmp_path / "mt"
    maker = BatchMaker(bytes.fromhex(DISK), seed=11)
    store = open_store(data_dir)
    stage_and_apply(store, maker, 3)
    for _ in range(3):  # staged, not applied: the child applies them and dies in the 2nd
        data = maker.make(nrecords=6)
        store.receive(maker.gen, maker.seq, data)
    store.close()
    assert run_child(data_dir, f"{crash_at}:2") == 137
    segment = data_dir / "journal" / DISK / "00000001.seg"
    scanned = wj.scan_segment(segment)
    assert isinstance(scanned.records[-1][1], wj.UndoRecord), "the crash must leave an uncommitted tail"
    store = open_store(data_dir)
    assert store.applied == (1, 4)
    assert replica_bytes(data_dir) == maker.images[(1, 4)], "replica must equal the pre-batch image"
    assert isinstance(wj.scan_segment(segment).records[-1][1], wj.CommitInfo)
    assert_every_point(store, maker, tmp_path)
    while store.apply_next() is not None:
        pass
    assert replica_bytes(data_dir) == maker.images[(1, 6)]
    assert_every_point(store, maker, tmp_path)
    store.close()


def test_crash_in_the_middle_of_rollback_is_recovered_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "mt"
    maker = BatchMaker(bytes.fromhex(DISK), seed=5)
    store = open_store(data_dir)
    stage_and_apply(store, maker, 2)
    store.receive(1, 3, maker.make(nrecords=8))
    store.close()
    assert run_child(data_dir, "after_replica_write") == 137
    assert run_child(data_dir, "mid_rollback") == 137  # dies while recovering
    store = open_store(data_dir)
    assert replica_bytes(data_dir) == maker.images[(1, 2)]
    assert store.apply_next() is not None
    assert replica_bytes(data_dir) == maker.images[(1, 3)]
    store.close()


def test_torn_tail_is_truncated_and_catalog_reconciled(tmp_path: Path) -> None:
    data_dir = tmp_path / "mt"
    maker = BatchMaker(bytes.fromhex(DISK), seed=9)
    store = open_store(data_dir)
    stage_and_apply(store, maker, 4)
    segment = store.journal.path(1)
    good_size = segment.stat().st_size
    removed = store.catalog.get(DISK, 1, 4)
    assert removed is not None
    store.catalog.delete(DISK, [(1, 4)])
    ghost = removed.__class__(**{**removed.__dict__, "seq": 99})
    store.catalog.insert(ghost)
    store.close()
    with open(segment, "ab") as f:
        f.write(wj.encode_commit(wj.CommitInfo(1, 5, 0, 0, 0, 0, 0, 1, 0, 0))[:30] + b"\xff" * 11)
    store = open_store(data_dir)
    assert segment.stat().st_size == good_size
    assert [p.key for p in store.catalog.all(DISK)] == [(1, 1), (1, 2), (1, 3), (1, 4)]
    restored = store.catalog.get(DISK, 1, 4)
    assert restored is not None and restored.wnum_hi == removed.wnum_hi
    assert restored.commit_off == removed.commit_off
    assert_every_point(store, maker, tmp_path)
    store.close()


def test_constructed_uncommitted_tail_is_rolled_back_in_reverse(tmp_path: Path) -> None:
    data_dir = tmp_path / "mt"
    maker = BatchMaker(bytes.fromhex(DISK), seed=2)
    store = open_store(data_dir)
    stage_and_apply(store, maker, 1)
    before = replica_bytes(data_dir)
    # A half-applied batch logged record by record: write X at [100, 200) then Y at [150, 250);
    # the second undo record holds the bytes after the first write, so only reverse order
    # restores the pre-batch image. No commit record.
    x, y = b"\x01" * 100, b"\x02" * 100
    j = store.journal
    j.append_undo(1, 2, [(100, before[100:200]), (150, x[50:] + before[200:250])])
    j.sync()
    store.replica.write(100, x)
    store.replica.write(150, y)
    store.close()
    store = open_store(data_dir)
    assert replica_bytes(data_dir) == before
    assert store.applied == (1, 1)
    store.close()


def test_crash_points_are_named() -> None:
    assert set(CRASH_POINTS) >= {"after_journal_fsync", "after_replica_write", "before_commit"}


def test_resync_window_points_have_no_accuracy_and_survive_reconcile(tmp_path: Path) -> None:
    data_dir = tmp_path / "mt"
    maker = BatchMaker(bytes.fromhex(DISK), seed=1)
    store = open_store(data_dir)
    batches = [maker.make(flags=Flags.RESYNC_START, mode=Mode.RESYNC, accuracy=Accuracy.NONE),
               maker.make(mode=Mode.RESYNC, accuracy=Accuracy.NONE),
               maker.make(nrecords=0, flags=Flags.RESYNC_DONE, mode=Mode.RESYNC, accuracy=Accuracy.NONE),
               maker.make()]
    for seq, data in enumerate(batches, 1):
        store.receive(1, seq, data)
    while store.apply_next() is not None:
        pass
    expected = ["none", "none", "approximate", "exact"]
    assert [p.accuracy_name for p in store.catalog.all(DISK)] == expected
    store.catalog.delete(DISK, [(1, 2), (1, 3), (1, 4)])
    store.close()
    store = open_store(data_dir)
    assert [p.accuracy_name for p in store.catalog.all(DISK)] == expected
    assert [p.in_resync for p in store.catalog.all(DISK)] == [True, True, False, False]
    assert_every_point(store, maker, tmp_path)
    store.close()


def undo_extents(data_dir: Path) -> dict[int, int]:
    """Per seq, the undo extents its commit record counts."""
    scanned = wj.scan_segment(data_dir / "journal" / DISK / "00000001.seg")
    return {rec.seq: rec.nundo for _, rec in scanned.records if isinstance(rec, wj.CommitInfo)}


def test_before_the_first_valid_point_batches_journal_no_old_bytes(tmp_path: Path) -> None:
    """Initial replication: nothing to roll back to, so no undo data; after the first valid point
    every batch keeps its undo data again (and a later resync's too)."""
    data_dir = tmp_path / "mt"
    maker = BatchMaker(bytes.fromhex(DISK), seed=2)
    store = open_store(data_dir)
    batches = [maker.make(flags=Flags.RESYNC_START, mode=Mode.RESYNC, accuracy=Accuracy.NONE),
               maker.make(mode=Mode.RESYNC, accuracy=Accuracy.NONE),
               maker.make(nrecords=1, flags=Flags.RESYNC_DONE, mode=Mode.RESYNC, accuracy=Accuracy.NONE),
               maker.make(), maker.make(flags=Flags.RESYNC_START, mode=Mode.RESYNC, accuracy=Accuracy.NONE)]
    for seq, data in enumerate(batches, 1):
        store.receive(1, seq, data)
    while store.apply_next() is not None:
        pass
    counts = undo_extents(data_dir)
    assert counts[1] == counts[2] == 0 and counts[3] == 0  # the first valid point is 3 (approximate)
    assert counts[4] > 0 and counts[5] > 0
    assert replica_bytes(data_dir) == maker.images[(1, 5)]
    store.close()


def test_a_crash_inside_initial_replication_applies_the_batch_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "mt"
    maker = BatchMaker(bytes.fromhex(DISK), seed=4)
    store = open_store(data_dir)
    store.receive(1, 1, maker.make(flags=Flags.RESYNC_START, mode=Mode.RESYNC, accuracy=Accuracy.NONE))
    assert store.apply_next() is not None
    store.receive(1, 2, maker.make(nrecords=8, mode=Mode.RESYNC, accuracy=Accuracy.NONE))
    store.close()
    assert run_child(data_dir, "after_replica_write") == 137  # part of batch 2 is in the replica
    store = open_store(data_dir)
    assert store.applied == (1, 1) and (1, 2) in store.staging
    assert store.apply_next() is not None
    assert replica_bytes(data_dir) == maker.images[(1, 2)]
    store.close()
