"""Retention on a real DiskStore with tiny segments and a small volume (mt/pruner.py): prune by
window, prune or pause on low space, pins respected, crashes between the steps; every point still
listed must roll back to its exact image."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mtbatches import DISK_SIZE, BatchMaker

from common import errors
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.failover import make_image
from mt.journal import FLOOR
from mt.pruner import Policy, Pruner, Volume
from mt.settings import DiskSettings
from mt.view import DiskView, commit
from mt.worker import DiskWorker

DISK = "5e" * 16
NS = 1_000_000_000
SEGMENT = 30_000


def open_store(data_dir: Path) -> DiskStore:
    store = DiskStore(DISK, data_dir, Catalog(data_dir / "catalog.db"), DISK_SIZE, SEGMENT)
    store.open()
    return store


def apply(store: DiskStore, maker: BatchMaker, n: int) -> None:
    """``n`` batches, 10 s of source time apart."""
    for _ in range(n):
        assert store.receive(maker.gen, maker.seq + 1, maker.make())
        assert store.apply_next() is not None
        maker.t_ns += 10 * NS


def replicated(tmp_path: Path, n: int = 24) -> tuple[DiskStore, BatchMaker]:
    maker = BatchMaker(bytes.fromhex(DISK), seed=17)
    store = open_store(tmp_path / "mt")
    apply(store, maker, n)
    assert len(store.journal.segments()) >= n // 4, "tiny segments must rotate"
    return store, maker


def assert_points_valid(store: DiskStore, maker: BatchMaker, tmp: Path) -> list[tuple[int, int]]:
    keys = [p.key for p in store.catalog.all(DISK)]
    assert keys, "retention never drops every point"
    assert keys == sorted(maker.images)[-len(keys):], "the listed points are the newest, without a hole"
    for p in store.catalog.all(DISK):
        img = make_image(store, p, tmp / "img" / f"{p.gen}-{p.seq}.img")
        assert Path(img["image_path"]).read_bytes() == maker.images[p.key], f"point {p.key}"
    return keys


def journal_bytes(store: DiskStore) -> int:
    return sum(store.journal.size_of(s) for s in store.journal.segments())


def test_window_prunes_whole_old_segments_and_keeps_every_point_inside_it(tmp_path: Path) -> None:
    store, maker = replicated(tmp_path)
    now = store.catalog.latest(DISK).t_last_ns  # type: ignore[union-attr]
    before = store.catalog.all(DISK)
    first_seg = store.journal.segments()[0]
    pruner = Pruner(store, Volume(tmp_path / "mt", max_bytes=1 << 30), lambda: Policy(window_s=95))
    decision = pruner.run(now_ns=now)
    assert decision.by_window >= 1 and decision.by_space == 0 and not pruner.paused
    assert store.journal.segments()[0] == decision.through + 1 > first_seg  # type: ignore[operator]
    keys = assert_points_valid(store, maker, tmp_path)
    inside = [p.key for p in before if p.t_last_ns >= now - 95 * NS]
    assert set(inside) <= set(keys) and len(keys) < len(before)
    boundary = store.catalog.all(DISK)[0]
    assert boundary.segno == decision.through and boundary.t_last_ns < now - 95 * NS  # covers the window start
    assert (tmp_path / "mt" / "journal" / DISK / FLOOR).exists()
    assert pruner.metrics()["pruned_points"] == len(before) - len(keys)
    store.close()
    store = open_store(tmp_path / "mt")  # the boundary has no commit record any more: still listed
    assert [p.key for p in store.catalog.all(DISK)] == keys
    assert_points_valid(store, maker, tmp_path)
    apply(store, maker, 6)  # and applying goes on
    Pruner(store, Volume(tmp_path / "mt", max_bytes=1 << 30), lambda: Policy(window_s=95)).run(now_ns=now + 60 * NS)
    assert_points_valid(store, maker, tmp_path)
    store.close()


def test_nothing_is_pruned_inside_the_window_or_without_a_window(tmp_path: Path) -> None:
    store, maker = replicated(tmp_path, n=12)
    segments = store.journal.segments()
    now = store.catalog.latest(DISK).t_last_ns  # type: ignore[union-attr]
    for policy in (Policy(window_s=0), Policy(window_s=10_000)):
        pruner = Pruner(store, Volume(tmp_path / "mt", max_bytes=1 << 30), lambda: policy)  # noqa: B023
        assert pruner.run(now_ns=now + 3600 * NS).prune == ()
    assert store.journal.segments() == segments and len(store.catalog.all(DISK)) == 12
    store.close()


def test_low_space_prune_goes_inside_the_window_until_space_returns(tmp_path: Path) -> None:
    store, maker = replicated(tmp_path)
    used = journal_bytes(store)
    volume = Volume(tmp_path / "mt", max_bytes=used + used // 20, low_pct=10, resume_pct=40)  # ~5 % free
    pruner = Pruner(store, volume, lambda: Policy(window_s=0, action="prune"))
    decision = pruner.run()
    assert decision.by_space >= 1 and not decision.pause and not pruner.paused and pruner.low_space
    free, total = volume.space()
    assert free >= total * 0.40
    assert_points_valid(store, maker, tmp_path)
    assert pruner.run().prune == () and not pruner.low_space  # space returned: nothing more
    store.close()


def test_low_space_pause_stops_applying_until_space_returns_and_loses_nothing(tmp_path: Path) -> None:
    store, maker = replicated(tmp_path, n=12)
    volume = Volume(tmp_path / "mt", max_bytes=journal_bytes(store) + 1000, low_pct=10, resume_pct=20)
    pruner = Pruner(store, volume, lambda: Policy(window_s=0, action="pause"))
    for _ in range(3):
        assert store.receive(maker.gen, maker.seq + 1, maker.make())
    keys = [p.key for p in store.catalog.all(DISK)]

    async def drain() -> int:
        with ThreadPoolExecutor(1) as pool:
            worker = DiskWorker(store, pool, pruner=pruner, retention_interval_s=0.01)
            return await worker.drain()

    assert asyncio.run(drain()) == 0
    assert pruner.paused and pruner.metrics()["paused"] is True
    assert [p.key for p in store.catalog.all(DISK)] == keys and len(store.staging.keys()) == 3  # nothing lost
    volume.max_bytes = 1 << 30  # space returns
    assert asyncio.run(drain()) == 3
    assert not pruner.paused and store.applied == (1, 15)
    assert_points_valid(store, maker, tmp_path)
    store.close()


def test_pins_hold_even_on_low_space_and_the_view_stays_exact(tmp_path: Path) -> None:
    store, maker = replicated(tmp_path)
    points = store.catalog.all(DISK)
    old = points[3]
    view = DiskView.create(store, old, tmp_path / "views" / "v")
    pinned = store.journal.pinned_from()
    assert pinned is not None
    volume = Volume(tmp_path / "mt", max_bytes=journal_bytes(store) + 100, low_pct=10, resume_pct=90)
    pruner = Pruner(store, volume, lambda: Policy(window_s=1, action="prune"))
    decision = pruner.run(now_ns=points[-1].t_last_ns + 3600 * NS)
    assert all(s < pinned for s in decision.prune) and store.journal.segments()[0] == pinned
    assert decision.pause, "pins leave too little to free: applying pauses rather than filling the volume"
    assert view.read(0, DISK_SIZE) == maker.images[old.key]
    assert store.catalog.get(DISK, *old.key) is not None
    assert_points_valid(store, maker, tmp_path)
    view.drop()
    assert pruner.run(now_ns=points[-1].t_last_ns + 3600 * NS).prune, "unpinned: the rest may go"
    assert_points_valid(store, maker, tmp_path)
    store.close()


@pytest.mark.parametrize("crash_after", ["marker", "catalog"])
def test_crash_between_the_steps_leaves_only_garbage_removed_on_open(tmp_path: Path, crash_after: str) -> None:
    store, maker = replicated(tmp_path)
    through = store.journal.segments()[2]
    points = store.catalog.in_segments_through(DISK, through)
    store.journal.mark_pruned(through + 1, points[-1].key)
    if crash_after == "catalog":
        store.catalog.delete(DISK, [p.key for p in points[:-1]])
    store.close()  # "crash": the segments are still there
    assert len([s for s in (tmp_path / "mt" / "journal" / DISK).glob("*.seg") if int(s.stem) <= through]) == 3
    store = open_store(tmp_path / "mt")
    assert store.journal.segments()[0] == through + 1
    assert store.catalog.all(DISK)[0].key == points[-1].key
    assert_points_valid(store, maker, tmp_path)
    store.close()


def test_committing_a_view_at_the_boundary_point(tmp_path: Path) -> None:
    store, maker = replicated(tmp_path)
    now = store.catalog.latest(DISK).t_last_ns  # type: ignore[union-attr]
    Pruner(store, Volume(tmp_path / "mt", max_bytes=1 << 30), lambda: Policy(window_s=95)).run(now_ns=now)
    boundary = store.catalog.all(DISK)[0]
    assert boundary.segno < store.journal.floor
    view = DiskView.create(store, boundary, tmp_path / "views" / "v")
    assert view.read(0, DISK_SIZE) == maker.images[boundary.key]
    commit(view)
    assert (tmp_path / "mt" / "replicas" / f"{DISK}.img").read_bytes() == maker.images[boundary.key]
    store.close()
    store = open_store(tmp_path / "mt")
    assert [p.key for p in store.catalog.all(DISK)] == [boundary.key] and store.applied == boundary.key
    img = make_image(store, boundary, tmp_path / "boundary.img")
    assert Path(img["image_path"]).read_bytes() == maker.images[boundary.key]
    store.close()


def test_disk_settings_carry_the_policy_and_default_to_keep_everything() -> None:
    base = {"disk_id": DISK, "generation": 1, "size_bytes": DISK_SIZE, "key_epoch": 1, "key_b64": "AAAA"}
    plain = DiskSettings.from_doc(base)
    assert Policy.of(plain) == Policy(0, "prune") == Policy.of(None)
    set_ = DiskSettings.from_doc({**base, "retention_window_s": 7200, "low_space_action": "pause"})
    assert Policy.of(set_) == Policy(7200, "pause")
    assert DiskSettings.from_doc({**base, "low_space_action": "panic"}).low_space_action == "prune"
    with pytest.raises(errors.BadRequest):
        DiskSettings.from_doc({**base, "retention_window_s": "a week"})
