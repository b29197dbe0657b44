"""mt/failover.py make_image pins the journal segments it reads after releasing the store's lock:
retention (mt/pruner.py) pruning meanwhile keeps them, and the image stays exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mtbatches import DISK_SIZE, BatchMaker

from common import errors
from mt import failover, retention
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.pruner import Policy, Pruner, Volume

DISK = "6f" * 16
NS = 1_000_000_000


def replicated(tmp_path: Path, n: int = 24) -> tuple[DiskStore, BatchMaker]:
    maker = BatchMaker(bytes.fromhex(DISK), seed=23)
    store = DiskStore(DISK, tmp_path / "mt", Catalog(tmp_path / "mt" / "catalog.db"), DISK_SIZE, 30_000)
    store.open()
    for _ in range(n):
        assert store.receive(maker.gen, maker.seq + 1, maker.make())
        assert store.apply_next() is not None
        maker.t_ns += 10 * NS
    assert len(store.journal.segments()) >= n // 4, "tiny segments must rotate"
    return store, maker


def test_pruning_while_the_image_is_built_keeps_the_segments_it_reads(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store, maker = replicated(tmp_path)
    oldest = store.catalog.all(DISK)[0]
    now = store.catalog.latest(DISK).t_last_ns  # type: ignore[union-attr]
    pruner = Pruner(store, Volume(tmp_path / "mt", max_bytes=1 << 30), lambda: Policy(window_s=95))
    first = store.journal.segments()[0]
    real = failover.read_undo_range
    decisions: list[retention.Decision] = []

    def prune_then_read(path: Path, start: int, end: int) -> Any:
        if not decisions:  # retention runs once, between the copy and the first undo read
            decisions.append(pruner.run(now_ns=now))
        return real(path, start, end)

    monkeypatch.setattr(failover, "read_undo_range", prune_then_read)
    img = failover.make_image(store, oldest, tmp_path / "img" / "oldest.img")
    assert Path(img["image_path"]).read_bytes() == maker.images[oldest.key]
    assert decisions and decisions[0].prune == (), "every segment after the point was pinned"
    assert store.journal.segments()[0] == first
    assert store.journal.pinned_from() is None, "unpinned once the image is built"
    assert pruner.run(now_ns=now).prune, "unpinned: the old segments may go now"
    store.close()


def test_a_point_pruned_before_the_pin_is_refused_and_nothing_is_left_pinned(tmp_path: Path) -> None:
    store, _ = replicated(tmp_path)
    oldest = store.catalog.all(DISK)[0]
    now = store.catalog.latest(DISK).t_last_ns  # type: ignore[union-attr]
    assert Pruner(store, Volume(tmp_path / "mt", max_bytes=1 << 30), lambda: Policy(window_s=95)).run(now_ns=now).prune
    with pytest.raises(errors.NotFound):
        failover.make_image(store, oldest, tmp_path / "img" / "gone.img")
    assert store.journal.pinned_from() is None
    assert not list((tmp_path / "img").glob("*")), "no partial image left behind"
    store.close()
