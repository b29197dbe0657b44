"""Failover views (mt/view.py): the extent map and the read rule against byte-array models, a view
that stays at its point while replication continues under it, and a view reopened after a restart."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mtbatches import DISK_SIZE, BatchMaker

from common.wire import batch as wbatch
from mt.apply import DiskStore
from mt.catalog import Catalog, Point
from mt.extents import ExtentMap
from mt.view import DiskView, laid_out, undo_records

DISK = "cd" * 16
SMALL = 1 << 16


def open_store(data_dir: Path, size: int = DISK_SIZE, segment_max_bytes: int = 1 << 30) -> DiskStore:
    store = DiskStore(DISK, data_dir, Catalog(data_dir / "catalog.db"), size, segment_max_bytes)
    store.open()
    return store


# -- the extent map ------------------------------------------------------------------------------

span = st.tuples(st.integers(0, 200), st.integers(1, 60))
ops = st.lists(st.tuples(st.booleans(), span, st.integers(1, 9)), max_size=40)


@given(ops=ops, probe=span)
def test_extent_map_matches_a_byte_model(ops: list[tuple[bool, tuple[int, int], int]],
                                         probe: tuple[int, int]) -> None:
    m = ExtentMap()
    model: list[tuple[int, int] | None] = [None] * 300  # byte -> (source, offset in the source)
    for overwrite, (start, length), src in ops:
        end = start + length
        (m.put if overwrite else m.fill)(start, end, src, 1000 * src + start)
        for b in range(start, end):
            if overwrite or model[b] is None:
                model[b] = (src, 1000 * src + b)
    start, length = probe
    pieces = list(m.lookup(start, start + length))
    assert pieces[0][0] == start and pieces[-1][1] == start + length
    for (_, e, _, _), (s2, _, _, _) in zip(pieces, pieces[1:], strict=False):
        assert e == s2
    for s, e, source, off in pieces:
        for b in range(s, e):
            assert model[b] == (None if source is None else (source, off + b - s))
    starts = [s for s, _ in m.extents()]
    assert starts == sorted(starts)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(m.extents(), m.extents()[1:], strict=False))


# -- the read rule on a real store -----------------------------------------------------------------

write = st.tuples(st.integers(0, SMALL - 1), st.integers(1, 5000), st.integers(0, 255))
batches = st.lists(st.lists(write, min_size=1, max_size=4), min_size=1, max_size=8)


def clip(offset: int, length: int) -> tuple[int, int]:
    return offset, min(length, SMALL - offset)


def apply(store: DiskStore, seq: int, writes: list[tuple[int, int, int]], image: bytearray) -> None:
    records = []
    for offset, length, fill in writes:
        offset, length = clip(offset, length)
        data = bytes([fill]) * length
        records.append(wbatch.Record(offset, data))
        image[offset:offset + length] = data
    batch = wbatch.ChangeBatch(bytes.fromhex(DISK), 1, seq, seq, seq, seq, seq, wbatch.Mode.DATA,
                               wbatch.Accuracy.EXACT, 0, [], records)
    store.apply_batch(batch, seq, None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches, later=batches, pick=st.integers(0, 7), overlay=st.lists(write, max_size=5),
       segment_max=st.sampled_from([4000, 1 << 30]))
def test_view_reads_equal_the_model_at_every_byte(batches: list[list[tuple[int, int, int]]],
                                                   later: list[list[tuple[int, int, int]]], pick: int,
                                                   overlay: list[tuple[int, int, int]], segment_max: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "mt", SMALL, segment_max)
        image = bytearray(SMALL)
        images = {}
        for seq, writes in enumerate(batches, 1):
            apply(store, seq, writes, image)
            images[seq] = bytes(image)
        seq = pick % len(batches) + 1
        point = store.catalog.get(DISK, 1, seq)
        assert point is not None
        view = DiskView.create(store, point, Path(tmp) / "views" / "v")
        expected = bytearray(images[seq])
        for i, writes in enumerate(later):  # replication continues; the machine writes to the overlay
            apply(store, len(batches) + i + 1, writes, image)
            if i < len(overlay):
                offset, length = clip(*overlay[i][:2])
                view.write(offset, bytes([overlay[i][2] ^ 0x5A]) * length)
                expected[offset:offset + length] = bytes([overlay[i][2] ^ 0x5A]) * length
        assert view.read(0, SMALL) == bytes(expected)
        assert view.read(7, 3001) == bytes(expected[7:3008])
        needed = min(p.segno for p in store.catalog.newer_than(DISK, 1, seq))  # every later batch's undo
        pinned = store.journal.pinned_from()
        assert pinned is not None and pinned <= needed
        view.drop()
        assert store.journal.pinned_from() is None and store.undo_listeners == []
        store.close()


def test_view_stays_at_its_point_while_replication_continues(tmp_path: Path) -> None:
    maker = BatchMaker(bytes.fromhex(DISK), seed=5)
    store = open_store(tmp_path / "mt", segment_max_bytes=40_000)
    for _ in range(6):
        assert store.receive(maker.gen, maker.seq + 1, maker.make())
        assert store.apply_next() is not None
    point = store.catalog.get(DISK, 1, 3)
    assert point is not None
    view = DiskView.create(store, point, tmp_path / "views" / "v")
    assert view.read(0, DISK_SIZE) == maker.images[(1, 3)]
    for _ in range(10):
        assert store.receive(maker.gen, maker.seq + 1, maker.make(nrecords=6))
        assert store.apply_next() is not None
        assert view.read(0, DISK_SIZE) == maker.images[(1, 3)]
    assert len(store.journal.segments()) > 1
    needed = min(p.segno for p in store.catalog.newer_than(DISK, 1, 3))
    assert needed < store.journal.segno and not store.journal.prunable(needed)
    dest = tmp_path / "img"
    view.materialize(dest)
    assert dest.read_bytes() == maker.images[(1, 3)]
    view.close()
    assert store.journal.prunable(needed)


def test_a_view_and_its_overlay_survive_a_restart(tmp_path: Path) -> None:
    maker = BatchMaker(bytes.fromhex(DISK), seed=9)
    store = open_store(tmp_path / "mt")
    for _ in range(4):
        assert store.receive(maker.gen, maker.seq + 1, maker.make())
        assert store.apply_next() is not None
    point = store.catalog.get(DISK, 1, 2)
    assert point is not None
    view = DiskView.create(store, point, tmp_path / "views" / "v")
    view.write(100, b"x" * 5000)
    expected = bytearray(maker.images[(1, 2)])
    expected[100:5100] = b"x" * 5000
    view.close()
    store.close()
    store = open_store(tmp_path / "mt")
    for _ in range(3):
        assert store.receive(maker.gen, maker.seq + 1, maker.make())
        assert store.apply_next() is not None
    view = DiskView.open(store, tmp_path / "views" / "v")
    assert view.read(0, DISK_SIZE) == bytes(expected)
    view.drop()
    assert not (tmp_path / "views" / "v").exists()
    store.close()


def test_the_apply_path_reports_the_undo_layout_the_journal_holds(tmp_path: Path) -> None:
    maker = BatchMaker(bytes.fromhex(DISK), seed=2)
    store = open_store(tmp_path / "mt")
    seen: list[tuple[int, int, list[tuple[int, int]]]] = []
    store.undo_listeners.append(lambda segno, start, spans: seen.append((segno, start, spans)))
    for _ in range(3):
        assert store.receive(maker.gen, maker.seq + 1, maker.make(nrecords=5))
        assert store.apply_next() is not None
    for (segno, start, spans), p in zip(seen, store.catalog.all(DISK), strict=True):
        assert (segno, start) == (p.segno, p.undo_off)
        assert laid_out(start, spans) == undo_records(store.journal.path(segno), p.undo_off, p.commit_off)
    store.close()


def test_a_batch_applied_while_the_view_scans_the_journal_is_indexed_too(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    maker = BatchMaker(bytes.fromhex(DISK), seed=4)
    store = open_store(tmp_path / "mt")
    for _ in range(4):
        assert store.receive(maker.gen, maker.seq + 1, maker.make())
        assert store.apply_next() is not None
    scan = DiskView._scan
    calls = []

    def scan_then_apply(view: DiskView, p: Point) -> list[tuple[int, int, int]]:
        calls.append(p.key)
        if len(calls) == 1:  # replication goes on while the view is being built
            assert store.receive(maker.gen, maker.seq + 1, maker.make(nrecords=8))
            assert store.apply_next() is not None
        return scan(view, p)

    monkeypatch.setattr(DiskView, "_scan", scan_then_apply)
    point = store.catalog.get(DISK, 1, 2)
    assert point is not None
    view = DiskView.create(store, point, tmp_path / "views" / "v")
    assert calls == [(1, 3), (1, 4), (1, 5)]
    assert view.read(0, DISK_SIZE) == maker.images[(1, 2)]
    view.drop()
    store.close()
