"""Staging idempotency, apply order and recovery-point accuracy (pure or file-only)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mtbatches import DISK_SIZE, BatchMaker

from common import errors
from common.wire import batch as wbatch
from mt.apply import DiskStore, merge_extents, next_key
from mt.catalog import Catalog, point_accuracy
from mt.staging import DiskStaging

A, E, N = wbatch.Accuracy.APPROXIMATE, wbatch.Accuracy.EXACT, wbatch.Accuracy.NONE
DISK = "cd" * 16


def test_store_is_durable_idempotent_and_refuses_another_checksum(tmp_path: Path) -> None:
    maker = BatchMaker(bytes.fromhex(DISK))
    one, two = maker.make(), maker.make()
    staging = DiskStaging(tmp_path / "s")
    assert staging.store(1, 1, one) is True
    assert staging.store(1, 1, one) is False
    other = BatchMaker(bytes.fromhex(DISK), seed=99).make()
    with pytest.raises(errors.ChecksumMismatch):
        staging.store(1, 1, other)
    assert staging.store(1, 2, two)
    (tmp_path / "s" / ".junk.tmp").write_bytes(b"x")
    again = DiskStaging(tmp_path / "s")
    again.load()
    assert again.keys() == [(1, 1), (1, 2)]
    assert again.checksum((1, 2)) == wbatch.checksum(two)
    assert not (tmp_path / "s" / ".junk.tmp").exists()
    assert again.read(1, 1)[0] == one
    assert again.contiguous_from(1, 0) == 2


def test_concurrent_identical_stores_make_one_file(tmp_path: Path) -> None:
    data = BatchMaker(bytes.fromhex(DISK)).make()
    staging = DiskStaging(tmp_path / "s")
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda _: staging.store(1, 1, data), range(8)))
    assert created.count(True) == 1
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["00000001-000000000001.batch"]


def test_re_send_after_apply_is_a_no_op_and_a_different_one_conflicts(tmp_path: Path) -> None:
    maker = BatchMaker(bytes.fromhex(DISK))
    store = DiskStore(DISK, tmp_path, Catalog(tmp_path / "catalog.db"), DISK_SIZE, 1 << 30)
    store.open()
    data = maker.make()
    assert store.receive(1, 1, data)
    assert store.apply_next() is not None
    assert store.receive(1, 1, data) is False
    assert store.staging.keys() == []
    with pytest.raises(errors.ChecksumMismatch):
        store.receive(1, 1, BatchMaker(bytes.fromhex(DISK), seed=5).make())
    assert store.progress(1) == (1, 1)
    store.close()


def test_next_key_applies_in_order_and_switches_generation_at_seq_1() -> None:
    assert next_key([(1, 2), (1, 3)], (1, 1)) == ((1, 2), [])
    assert next_key([(1, 3)], (1, 1)) == (None, [])
    assert next_key([(1, 1)], (1, 1)) == (None, [(1, 1)])
    key, discard = next_key([(1, 5), (2, 1), (2, 2), (3, 1)], (1, 3))
    assert key == (2, 1) and discard == [(1, 5)]
    assert next_key([(2, 2)], (1, 3)) == (None, [])
    assert next_key([(1, 1)], (0, 0)) == ((1, 1), [])


def test_generation_switch_in_store(tmp_path: Path) -> None:
    maker = BatchMaker(bytes.fromhex(DISK))
    store = DiskStore(DISK, tmp_path, Catalog(tmp_path / "catalog.db"), DISK_SIZE, 1 << 30)
    store.open()
    store.receive(1, 1, maker.make())
    store.receive(1, 2, maker.make())
    store.apply_next()
    orphan = maker.make()  # (1, 3): staged, then generation 2 takes over before (1, 2) applies
    store.receive(1, 3, orphan)
    store.receive(2, 1, maker.make(gen=2))
    assert store.current_generation(1) == 2
    assert store.apply_next() is not None and store.applied == (1, 2)
    assert store.apply_next() is not None and store.applied == (1, 3)
    assert store.apply_next() is not None and store.applied == (2, 1)
    assert store.progress(2) == (1, 1) and store.progress(1) == (0, 0)
    store.close()


def test_merge_extents_unions_overlaps() -> None:
    recs = [wbatch.Record(10, b"a" * 10), wbatch.Record(15, b"b" * 10), wbatch.Record(100, b"c")]
    assert merge_extents(recs) == [(10, 15), (100, 1)]
    assert merge_extents([]) == []


def test_point_accuracy_across_a_resync() -> None:
    D, M, R = wbatch.Mode.DATA, wbatch.Mode.METADATA, wbatch.Mode.RESYNC
    start, done = wbatch.Flags.RESYNC_START, wbatch.Flags.RESYNC_DONE
    assert point_accuracy(False, R, N, start) == (N, True)
    assert point_accuracy(True, D, E, 0) == (N, True)
    assert point_accuracy(True, R, N, done) == (A, False)
    assert point_accuracy(False, R, N, start | done) == (A, False)
    assert point_accuracy(False, D, E, 0) == (E, False)
    assert point_accuracy(False, M, A, 0) == (A, False)
    assert point_accuracy(False, M, E, 0) == (A, False)
    assert point_accuracy(False, D, A, 0) == (A, False)


@pytest.mark.timeout(30)
def test_a_batch_staged_with_its_decoded_form_is_applied_from_memory(tmp_path: Path) -> None:
    """The decoded batch is kept in memory (mt/staging.py): the apply neither reads nor decodes
    the file — here it is even gone — and records the file's mtime as the received time; a batch
    staged without it (as after a restart) is read from its file."""
    maker = BatchMaker(bytes.fromhex(DISK), seed=5)
    store = DiskStore(DISK, tmp_path, Catalog(tmp_path / "catalog.db"), DISK_SIZE, 1 << 30)
    store.open()
    replica = tmp_path / "replicas" / f"{DISK}.img"
    data = maker.make()
    assert store.receive(1, 1, data, wbatch.decode(data, disk_size=DISK_SIZE, max_bytes=len(data)))
    mtime = store.staging.path(1, 1).stat().st_mtime_ns
    store.staging.path(1, 1).unlink()
    done = store.apply_next()
    assert done is not None and done.point.received_ns == mtime
    assert done.point.checksum == wbatch.checksum(data)
    assert replica.read_bytes() == maker.images[(1, 1)]
    assert len(store.staging.recent) == 0 and store.staging.keys() == []
    data = maker.make()
    assert store.receive(1, 2, data) and store.staging.kept(1, 2) is None
    assert store.apply_next() is not None and replica.read_bytes() == maker.images[(1, 2)]
    store.close()
