"""Changing a failover view's recovery point before commit, and committing a view into the replica
in place (mt/view.py change_point / commit), checked byte for byte and across a restart."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mtbatches import DISK_SIZE, BatchMaker
from test_view import DISK as MODEL_DISK  # the disk the model's batches name
from test_view import SMALL, apply, clip

from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.failover import make_image
from mt.view import COMMITTING, DiskView, change_point, commit

DISK = "9a" * 16
REPO = Path(__file__).resolve().parents[2]


def open_store(data_dir: Path) -> DiskStore:
    store = DiskStore(DISK, data_dir, Catalog(data_dir / "catalog.db"), DISK_SIZE, 30_000)
    store.open()
    return store


def replicated(tmp_path: Path, n: int = 8, seed: int = 3) -> tuple[DiskStore, BatchMaker]:
    maker = BatchMaker(bytes.fromhex(DISK), seed=seed)
    store = open_store(tmp_path / "mt")
    for _ in range(n):
        assert store.receive(maker.gen, maker.seq + 1, maker.make())
        assert store.apply_next() is not None
    return store, maker


def test_changing_the_point_rebuilds_the_view_and_drops_its_overlay(tmp_path: Path) -> None:
    store, maker = replicated(tmp_path)
    p3, p6 = store.catalog.get(DISK, 1, 3), store.catalog.get(DISK, 1, 6)
    assert p3 is not None and p6 is not None
    view = DiskView.create(store, p3, tmp_path / "views" / "v")
    view.write(0, b"y" * 4096)
    view = change_point(view, p6)
    assert view.point.key == (1, 6)
    assert view.read(0, DISK_SIZE) == maker.images[(1, 6)]
    assert list(store.journal.pins) == [view.owner] and len(store.undo_listeners) == 1
    view.drop()
    store.close()


def test_commit_without_overlay_rolls_the_replica_back_and_keeps_the_older_points(tmp_path: Path) -> None:
    store, maker = replicated(tmp_path)
    assert len(store.journal.segments()) > 2
    p4 = store.catalog.get(DISK, 1, 4)
    assert p4 is not None
    staged = maker.make()
    assert store.receive(maker.gen, maker.seq, staged)  # staged, not applied: discarded by the commit
    view = DiskView.create(store, p4, tmp_path / "views" / "v")
    result = commit(view)
    assert result["dropped_points"] == 4 and result["kept_points"]
    assert store.replica.read(0, DISK_SIZE) == maker.images[(1, 4)]
    assert [p.seq for p in store.catalog.all(DISK)] == [1, 2, 3, 4]
    assert store.apply_next() is None and store.staging.keys() == []
    assert not (tmp_path / "views" / "v").exists() and store.journal.pins == {}
    store.close()
    store = open_store(tmp_path / "mt")  # the journal agrees: the newer points stay gone
    assert [p.seq for p in store.catalog.all(DISK)] == [1, 2, 3, 4]
    assert store.replica.read(0, DISK_SIZE) == maker.images[(1, 4)]
    for p in store.catalog.all(DISK):
        img = make_image(store, p, tmp_path / f"p{p.seq}.img")
        assert Path(img["image_path"]).read_bytes() == maker.images[p.key]
    store.close()


def test_commit_with_overlay_makes_the_replica_the_machines_disk_and_drops_every_point(tmp_path: Path) -> None:
    store, maker = replicated(tmp_path)
    p5 = store.catalog.get(DISK, 1, 5)
    assert p5 is not None
    view = DiskView.create(store, p5, tmp_path / "views" / "v")
    view.write(1000, b"z" * 70_000)
    expected = bytearray(maker.images[(1, 5)])
    expected[1000:71_000] = b"z" * 70_000
    result = commit(view)
    assert result["dropped_points"] == 8 and not result["kept_points"]
    assert store.replica.read(0, DISK_SIZE) == bytes(expected)
    assert store.catalog.all(DISK) == []
    store.close()
    store = open_store(tmp_path / "mt")
    assert store.catalog.all(DISK) == [] and len(store.journal.segments()) == 1
    assert store.replica.read(0, DISK_SIZE) == bytes(expected)
    store.close()


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mt.apply import DiskStore
    from mt.catalog import Catalog
    from mt.view import DiskView, commit
    data_dir, views = Path(sys.argv[1]), Path(sys.argv[2])
    store = DiskStore(sys.argv[3], data_dir, Catalog(data_dir / "catalog.db"), int(sys.argv[4]), 30_000)
    store.open()
    view = DiskView.create(store, store.catalog.get(sys.argv[3], 1, 3), views)
    if sys.argv[5] == "overlay":
        view.write(4096, b"o" * 9000)
    commit(view)
    sys.exit(3)
""")


@pytest.mark.parametrize("overlay", [False, True])
@pytest.mark.parametrize("crash_at", ["mid_commit", "before_commit_truncate"])
def test_a_commit_killed_midway_is_finished_by_committing_again(tmp_path: Path, crash_at: str, overlay: bool) -> None:
    store, maker = replicated(tmp_path, n=8, seed=4)
    store.close()
    env = dict(os.environ, DRLAB_MT_CRASH_AT=crash_at, PYTHONPATH=str(REPO))
    views = tmp_path / "views" / "v"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "mt"), str(views), DISK, str(DISK_SIZE),
                           "overlay" if overlay else "none"], env=env, capture_output=True, text=True, timeout=50,
                          check=False)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert (views / COMMITTING).exists()
    store = open_store(tmp_path / "mt")
    assert [p.seq for p in store.catalog.all(DISK)] == list(range(1, 9)), "nothing dropped before the replica"
    view = DiskView.open(store, views)
    expected = bytearray(maker.images[(1, 3)])
    if overlay:
        expected[4096:13_096] = b"o" * 9000
    assert view.read(0, DISK_SIZE) == bytes(expected)
    commit(view)
    assert store.replica.read(0, DISK_SIZE) == bytes(expected)
    assert [p.seq for p in store.catalog.all(DISK)] == ([] if overlay else [1, 2, 3])
    store.close()
    store = open_store(tmp_path / "mt")
    assert store.replica.read(0, DISK_SIZE) == bytes(expected)
    assert [p.seq for p in store.catalog.all(DISK)] == ([] if overlay else [1, 2, 3])
    store.close()


write = st.tuples(st.integers(0, SMALL - 1), st.integers(1, 5000), st.integers(0, 255))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(write, min_size=1, max_size=4), min_size=1, max_size=8), pick=st.integers(0, 7),
       overlay=st.lists(write, max_size=3))
def test_commit_matches_the_model_and_keeps_older_points_exact(batches: list[list[tuple[int, int, int]]], pick: int,
                                                              overlay: list[tuple[int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = DiskStore(MODEL_DISK, Path(tmp) / "mt", Catalog(Path(tmp) / "mt" / "catalog.db"), SMALL, 4000)
        store.open()
        image, images = bytearray(SMALL), {}
        for seq, writes in enumerate(batches, 1):
            apply(store, seq, writes, image)
            images[seq] = bytes(image)
        seq = pick % len(batches) + 1
        point = store.catalog.get(MODEL_DISK, 1, seq)
        assert point is not None
        view = DiskView.create(store, point, Path(tmp) / "views" / "v")
        expected = bytearray(images[seq])
        for offset, length, fill in overlay:
            offset, length = clip(offset, length)
            view.write(offset, bytes([fill]) * length)
            expected[offset:offset + length] = bytes([fill]) * length
        commit(view)
        assert store.replica.read(0, SMALL) == bytes(expected)
        kept = store.catalog.all(MODEL_DISK)
        assert [p.seq for p in kept] == ([] if overlay else list(range(1, seq + 1)))
        for p in kept:
            img = make_image(store, p, Path(tmp) / f"p{p.seq}.img")
            assert Path(img["image_path"]).read_bytes() == images[p.seq]
        store.close()
