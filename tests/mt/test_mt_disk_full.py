"""A full MT volume (tmpfs of a few MiB): an apply that hits ENOSPC is refused and rolled back,
the replica, journal and catalog stay consistent (with or without a restart), staging refuses
with a retriable 507 and leaves nothing, and freeing space lets applying go on — every point
still rebuilds exactly. Also the failures at each step, injected, and a torn journal tail at
every offset of the last batch, repaired on open."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mtbatches import DISK_SIZE, BatchMaker

from common import errors
from common.wire import journal as wj
from common.wire.batch import Accuracy
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.failover import make_image
from tests.sizedfs import fill, sized_dir

DISK = "ab" * 16


def open_store(data_dir: Path, catalog: Path) -> DiskStore:
    store = DiskStore(DISK, data_dir, Catalog(catalog), DISK_SIZE, 1 << 30)
    store.open()
    return store


def replica_bytes(store: DiskStore) -> bytes:
    return store.replica.path.read_bytes()


def rows(store: DiskStore) -> list[tuple[int, int, int, int, int]]:
    return [(p.gen, p.seq, p.segno, p.undo_off, p.commit_off) for p in store.catalog.all(DISK)]


def assert_consistent(store: DiskStore, maker: BatchMaker, tmp: Path) -> None:
    """Replica = image of the last applied batch; the catalog lists exactly the batches up to it;
    the journal file ends where appending continues; every valid point rebuilds exactly."""
    assert store.broken is None
    assert replica_bytes(store) == maker.images[store.applied]
    keys = sorted(maker.images)
    assert [p.key for p in store.catalog.all(DISK)] == keys[:keys.index(store.applied) + 1]
    assert store.journal.path(store.journal.segno).stat().st_size == store.journal.pos
    for p in store.catalog.all(DISK):
        if p.accuracy != Accuracy.NONE:
            result = make_image(store, p, tmp / "images" / f"{p.gen}-{p.seq}.img")
            assert Path(result["image_path"]).read_bytes() == maker.images[p.key], f"point {p.key}"


def apply_all(store: DiskStore) -> int:
    n = 0
    while store.apply_next() is not None:
        n += 1
    return n


@pytest.mark.timeout(120)
@pytest.mark.parametrize("restart", [False, True], ids=["in-process", "restart"])
@pytest.mark.parametrize("keep_pages", [0, 1, 2, 4, 6])
def test_full_volume_refuses_the_apply_and_goes_on_once_space_is_freed(
        tmp_path: Path, seed: int, keep_pages: int, restart: bool) -> None:
    with sized_dir(tmp_path, "3m") as vol:
        maker = BatchMaker(bytes.fromhex(DISK), seed=seed)
        store = open_store(vol, tmp_path / "catalog.db")
        for _ in range(3):
            assert store.receive(maker.gen, maker.seq + 1, maker.make(nrecords=6))
            assert store.apply_next() is not None
        for _ in range(4):
            assert store.receive(maker.gen, maker.seq + 1, maker.make(nrecords=6))
        filler = fill(vol, keep_pages * 4096)
        failures = 0
        for _ in range(6):
            try:
                if store.apply_next() is None:
                    break
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                failures += 1
        assert failures > 0 or store.applied == (1, 7)
        assert store.staging.keys() == [(1, s) for s in range(store.applied[1] + 1, 8)]
        assert_consistent(store, maker, tmp_path)
        eighth, more = maker.make(nrecords=6), fill(vol, 0, name="more")
        with pytest.raises(errors.Throttled, match="mt_staging_full"):
            store.receive(1, 8, eighth)
        assert not [p for p in store.staging.directory.iterdir() if p.name.endswith(".tmp")]
        more.unlink()
        if restart:
            store.close()
            store = open_store(vol, tmp_path / "catalog.db")
            assert_consistent(store, maker, tmp_path)
        filler.unlink()
        assert store.receive(1, 8, eighth)  # the PS re-sends after the 507
        apply_all(store)
        assert store.applied == (1, 8)
        assert_consistent(store, maker, tmp_path)
        before = rows(store)
        store.close()
        store = open_store(vol, tmp_path / "catalog.db")
        assert rows(store) == before, "the journal and the catalog agree: nothing restored on open"
        assert_consistent(store, maker, tmp_path)
        store.close()


def enospc_after(calls: int, real: Callable[..., Any]) -> Callable[..., Any]:
    """``real`` that raises ENOSPC from its ``calls``-th call on (once)."""
    count = [0]

    def wrapper(*args: Any) -> Any:
        count[0] += 1
        if count[0] == calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)
    return wrapper


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["undo", "replica_write", "replica_sync", "commit", "commit_sync"])
@pytest.mark.parametrize("retries", [1, 2])
def test_enospc_at_each_step_is_rolled_back_and_retried(tmp_path: Path, where: str, retries: int) -> None:
    maker = BatchMaker(bytes.fromhex(DISK), seed=11)
    store = open_store(tmp_path / "mt", tmp_path / "catalog.db")
    for _ in range(3):
        assert store.receive(maker.gen, maker.seq + 1, maker.make())
    assert store.apply_next() is not None
    j, r = store.journal, store.replica
    for _ in range(retries):
        saved = {"undo": (j, "append_undo"), "replica_write": (r, "write"), "replica_sync": (r, "sync"),
                 "commit": (j, "append_commit"), "commit_sync": (j, "sync")}[where]
        real = getattr(*saved)
        nth = 2 if where == "commit_sync" else 1  # the journal's first sync is the undo records'
        setattr(saved[0], saved[1], enospc_after(nth, real))
        with pytest.raises(OSError):
            store.apply_next()
        setattr(saved[0], saved[1], real)
        assert store.applied == (1, 1) and store.staging.keys() == [(1, 2), (1, 3)]
        assert_consistent(store, maker, tmp_path)
    assert apply_all(store) == 2
    assert_consistent(store, maker, tmp_path)
    before = rows(store)
    store.close()
    store = open_store(tmp_path / "mt", tmp_path / "catalog.db")
    assert rows(store) == before
    assert_consistent(store, maker, tmp_path)
    store.close()


@pytest.mark.timeout(60)
def test_a_failed_rollback_stops_applying_until_a_restart_recovers(tmp_path: Path) -> None:
    maker = BatchMaker(bytes.fromhex(DISK), seed=5)
    store = open_store(tmp_path / "mt", tmp_path / "catalog.db")
    for _ in range(2):
        assert store.receive(maker.gen, maker.seq + 1, maker.make())
    assert store.apply_next() is not None
    real_write = store.replica.write
    store.replica.write = enospc_after(2, real_write)  # type: ignore[method-assign]
    store.replica.sync = enospc_after(1, store.replica.sync)  # type: ignore[method-assign]
    with pytest.raises(OSError):
        store.apply_next()
    assert store.broken is not None
    with pytest.raises(errors.Unavailable, match="until the MT restarts"):
        store.apply_next()
    store.close()
    store = open_store(tmp_path / "mt", tmp_path / "catalog.db")  # open() rolls the tail back
    assert store.applied == (1, 1)
    assert_consistent(store, maker, tmp_path)
    assert apply_all(store) == 1
    assert_consistent(store, maker, tmp_path)
    store.close()


@pytest.mark.timeout(120)
def test_torn_or_garbage_tail_at_every_offset_of_the_last_batch_is_repaired_on_open(
        tmp_path: Path, seed: int) -> None:
    """Cut the segment at every offset inside the last batch (its undo records, then its commit
    record), optionally followed by garbage, with the replica as a crash there leaves it (before
    the undo records are durable: untouched; after: the batch written); open rolls back and
    truncates to the previous commit, and every point rebuilds exactly."""
    data_dir, catalog = tmp_path / "mt", tmp_path / "catalog.db"
    maker = BatchMaker(bytes.fromhex(DISK), seed=seed)
    store = open_store(data_dir, catalog)
    for _ in range(3):
        assert store.receive(maker.gen, maker.seq + 1, maker.make(nrecords=3))
        assert store.apply_next() is not None
    last = store.catalog.get(DISK, 1, 3)
    prev = store.catalog.get(DISK, 1, 2)
    assert last is not None and prev is not None
    segment = store.journal.path(last.segno)
    whole, replica_after = segment.read_bytes(), replica_bytes(store)
    store.close()
    del maker.images[(1, 3)]
    end = last.commit_off + wj.COMMIT_SIZE
    undo_cuts = sorted({last.undo_off, last.undo_off + 1, last.undo_off + wj.UNDO_HEAD.size - 1,
                        last.undo_off + wj.UNDO_HEAD.size, last.commit_off - 4, last.commit_off - 1})
    cuts = undo_cuts + list(range(last.commit_off, end))  # every byte of the commit record
    garbage = [b"", b"\0" * 100, bytes([wj.KIND_COMMIT]) + b"\0" * 3 + os.urandom(80), os.urandom(33)]
    for i, cut in enumerate(cuts):
        tail = garbage[i % len(garbage)]
        segment.write_bytes(whole[:cut] + tail)
        image = maker.images[(1, 2)] if cut < last.commit_off else replica_after
        store.replica.path.write_bytes(image)
        store = open_store(data_dir, catalog)
        assert segment.stat().st_size == prev.commit_off + wj.COMMIT_SIZE, f"cut {cut} + {len(tail)} garbage"
        assert store.applied == (1, 2)
        assert_consistent(store, maker, tmp_path)
        store.close()
    segment.write_bytes(whole + os.urandom(50))  # garbage after the last whole batch: only it goes
    store.replica.path.write_bytes(replica_after)
    store = open_store(data_dir, catalog)
    assert segment.read_bytes() == whole and store.applied == (1, 3)
    store.close()
