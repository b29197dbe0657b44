"""A failover view is ready in a time that does not grow with the disk's size (ARCHITECTURE.md §6):
the same journal (a fixed number of batches, spread over the disk) on 1, 4 and 16 GiB sparse disks."""

from __future__ import annotations

import random
import time
from pathlib import Path

from common.wire import batch as wbatch
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.view import DiskView

DISK = "ef" * 16
GIB = 1 << 30
BATCHES = 40
RECORDS = 8


def build(data_dir: Path, size: int, seed: int) -> DiskStore:
    store = DiskStore(DISK, data_dir, Catalog(data_dir / "catalog.db"), size, 1 << 20)
    store.open()
    rng = random.Random(seed)
    for seq in range(1, BATCHES + 1):
        slots = rng.sample(range(size // 8192), RECORDS)  # spread over the disk, never adjacent
        records = [wbatch.Record(slot * 8192, rng.randbytes(4096)) for slot in slots]
        store.apply_batch(wbatch.ChangeBatch(bytes.fromhex(DISK), 1, seq, seq, seq, seq, seq, wbatch.Mode.DATA,
                                             wbatch.Accuracy.EXACT, 0, [], records), seq, None)
    return store


def creation_s(store: DiskStore, views: Path) -> float:
    """The best of three view creations at the oldest point (every batch's undo is indexed)."""
    point = store.catalog.get(DISK, 1, 1)
    assert point is not None
    best = float("inf")
    for i in range(3):
        t0 = time.perf_counter()
        view = DiskView.create(store, point, views / f"v{i}")
        best = min(best, time.perf_counter() - t0)
        assert view.index.undo_records == (BATCHES - 1) * RECORDS
        view.drop()
    return best


def test_view_creation_time_is_flat_across_disk_sizes(tmp_path: Path, seed: int) -> None:
    times: dict[int, float] = {}
    for gib in (1, 4, 16):
        store = build(tmp_path / f"mt{gib}", gib * GIB, seed)
        assert store.replica.size_bytes == gib * GIB
        times[gib] = creation_s(store, tmp_path / f"views{gib}")
        store.close()
    print("view creation:", ", ".join(f"{g} GiB {t * 1000:.1f} ms" for g, t in times.items()))
    assert times[16] <= 3 * times[1] + 0.05, times
