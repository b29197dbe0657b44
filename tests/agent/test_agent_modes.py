"""Tracking modes: the pure policy, the tracker in each mode, the batcher's stamps, and the
promise behind them: replaying the batches in order rebuilds the disk at every DATA or
METADATA boundary and at the end of every bitmap drain."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.batcher import Batcher, DiskStream
from agent.modes import Measure, ModePolicy, next_mode
from agent.tracker import Tracker, TrackMode
from common.wire import batch as wb

SIZE = 256 * 1024
INF = float("inf")
POLICY = ModePolicy(memory_bytes=1000, metadata_max_bytes=500, calm_s=2.0)


def measure(mode: TrackMode, held: int = 0, meta: int = 0, bitmap: int = 0, since: float = INF) -> Measure:
    return Measure(mode=mode, held_bytes=held, metadata_bytes=meta, bitmap_bytes=bitmap, since_throttle_s=since)


@pytest.mark.parametrize(("m", "want"), [
    (measure(TrackMode.DATA), (TrackMode.DATA, "")),
    (measure(TrackMode.DATA, held=1001), (TrackMode.METADATA, "memory-bound")),
    (measure(TrackMode.DATA, since=0.5), (TrackMode.METADATA, "ps-throttled")),
    (measure(TrackMode.METADATA, meta=501), (TrackMode.BITMAP, "metadata-bound")),
    (measure(TrackMode.METADATA, meta=0, held=100), (TrackMode.DATA, "drained")),
    (measure(TrackMode.METADATA, meta=0, held=600), (TrackMode.METADATA, "")),  # not under half the bound
    (measure(TrackMode.METADATA, meta=0, since=1.0), (TrackMode.METADATA, "")),  # throttled recently
    (measure(TrackMode.METADATA, meta=0, since=3.0), (TrackMode.METADATA, "")),  # calm, not twice as long
    (measure(TrackMode.METADATA, meta=10), (TrackMode.METADATA, "")),  # regions still waiting
    (measure(TrackMode.BITMAP, bitmap=4096), (TrackMode.BITMAP, "")),
    (measure(TrackMode.BITMAP, bitmap=0, since=0.1), (TrackMode.METADATA, "bitmap-drained")),
])
def test_policy(m: Measure, want: tuple[TrackMode, str]) -> None:
    assert next_mode(POLICY, m) == want


class Disk:
    """A disk image in memory with its tracker and batcher, as the agent's shell wires them."""

    def __init__(self, drain: int = 16 * 1024) -> None:
        self.image = bytearray(SIZE)
        self.tracker = Tracker(block_bytes=4096)
        self.batcher = Batcher(self.tracker, drain, reader=lambda _i: self.read)
        self.stream = DiskStream(index=0, disk_id=b"\1" * 16, generation=1)
        self.batcher.open(self.stream, SIZE)
        self.batches: list[wb.ChangeBatch] = []
        self.wnum = 0

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.image[offset:offset + length])

    def write(self, offset: int, data: bytes) -> None:
        self.wnum += 1
        self.image[offset:offset + len(data)] = data
        self.tracker.record_write(0, self.wnum, offset, data, self.wnum)

    def cut(self) -> list[wb.ChangeBatch]:
        out = self.batcher.cut_all(self.wnum * 10)
        self.batches += out
        return out


def replay(batches: list[wb.ChangeBatch]) -> bytearray:
    image = bytearray(SIZE)
    for b in batches:
        for r in b.records:
            image[r.offset:r.offset + len(r.data)] = bytes(r.data)
    return image


def test_metadata_mode_reads_back_at_the_cut_and_the_boundary_is_exact() -> None:
    d = Disk()
    d.write(0, b"a" * 100)
    d.tracker.set_mode(0, TrackMode.METADATA)
    d.write(50, b"b" * 100)
    d.write(4096, b"c" * 10)
    assert d.tracker.held_bytes(0) == 100 and d.tracker.pending_bytes(0) == 210
    d.write(60, b"d" * 5)  # after the metadata write, before the cut: the read sees it
    [batch] = d.cut()
    assert batch.mode == wb.Mode.METADATA and batch.accuracy == wb.Accuracy.APPROXIMATE
    assert batch.wnum_hi == 4
    assert replay(d.batches) == d.image


def test_bitmap_drains_in_chunks_between_resync_flags_then_climbs_back() -> None:
    d = Disk(drain=8192)
    d.write(0, b"x" * 10)
    [first] = d.cut()
    assert first.mode == wb.Mode.DATA and first.accuracy == wb.Accuracy.EXACT
    d.tracker.set_mode(0, TrackMode.METADATA)
    d.write(20000, b"m" * 9000)
    d.tracker.set_mode(0, TrackMode.BITMAP)  # the metadata regions fold into the bitmap
    for i in range(6):
        d.write(40000 + i * 10000, bytes([i]) * 3000)
    assert d.tracker.bitmap_dirty_bytes(0) > 8192
    drains = []
    while True:
        out = d.cut()
        drains += out
        if any(b.flags & wb.Flags.RESYNC_DONE for b in out):
            break
        d.write(100 + len(drains), b"w")  # writes go on during the drain (into the bitmap)
        assert len(drains) < 50
    assert len(drains) >= 3
    assert all(b.mode == wb.Mode.BITMAP and b.accuracy == wb.Accuracy.NONE for b in drains)
    assert drains[0].flags & wb.Flags.RESYNC_START and not drains[-1].flags & wb.Flags.RESYNC_START
    assert replay(d.batches) == d.image  # the drain's end is a boundary again
    d.tracker.set_mode(0, TrackMode.METADATA)
    d.tracker.set_mode(0, TrackMode.DATA)
    d.write(7, b"z")
    [last] = d.cut()
    assert last.mode == wb.Mode.DATA and last.flags == 0
    assert replay(d.batches) == d.image
    assert [b.seq for b in d.batches] == list(range(1, len(d.batches) + 1))


def test_leaving_bitmap_mode_needs_a_drained_bitmap() -> None:
    d = Disk()
    d.tracker.set_mode(0, TrackMode.BITMAP)
    d.write(0, b"x")
    with pytest.raises(ValueError, match="drained"):
        d.tracker.set_mode(0, TrackMode.METADATA)


def test_an_idle_disk_gets_an_empty_batch_at_the_common_boundary() -> None:
    t = Tracker()
    b = Batcher(t, 1 << 20, idle_mark_ns=100)
    for i in (0, 1):
        b.open(DiskStream(index=i, disk_id=bytes([i + 1]) * 16, generation=1))
    t.record_write(0, 1, 0, b"a", 0)
    first = b.cut_all(1000)
    assert [x.disk_id[0] for x in first] == [1, 2]  # disk 1 idle, marked at the same wnum_hi
    assert first[1].records == [] and first[1].wnum_hi == first[0].wnum_hi == 1
    t.record_write(0, 2, 0, b"b", 0)
    assert [x.disk_id[0] for x in b.cut_all(1050)] == [1]  # marked 50 ns ago: not yet again
    t.record_write(0, 3, 0, b"c", 0)
    assert [x.disk_id[0] for x in b.cut_all(1200)] == [1, 2]
    assert b.cut_all(5000) == []  # nothing changed anywhere: no batch at all


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 8))
def test_any_mode_sequence_replays_to_the_disk(seed: int, drain_blocks: int) -> None:
    """Random writes, random legal mode switches, random cuts: every cut that leaves the stream
    complete (not inside a bitmap drain) replays to exactly the disk at that moment."""
    rng = random.Random(seed)
    d = Disk(drain=drain_blocks * 4096)
    for _ in range(120):
        step = rng.random()
        if step < 0.6:
            off = rng.randrange(SIZE - 1)
            d.write(off, rng.randbytes(rng.randrange(1, min(9000, SIZE - off) + 1)))
        elif step < 0.7:
            mode = d.tracker.mode(0)
            if mode is TrackMode.DATA:
                d.tracker.set_mode(0, TrackMode.METADATA)
            elif mode is TrackMode.METADATA:
                d.tracker.set_mode(0, rng.choice([TrackMode.DATA, TrackMode.BITMAP]))
        else:
            d.cut()
            if d.tracker.mode(0) is TrackMode.BITMAP and d.tracker.bitmap_dirty_bytes(0) == 0:
                d.tracker.set_mode(0, TrackMode.METADATA)
            if not d.stream.incomplete:
                assert replay(d.batches) == d.image
    while d.cut():
        pass
    assert not d.stream.incomplete and replay(d.batches) == d.image


def test_a_bookmark_cuts_every_disk_at_one_boundary_even_idle_ones() -> None:
    t = Tracker()
    b = Batcher(t, 1 << 20, idle_mark_ns=10**12)
    for i in (0, 1):
        b.open(DiskStream(index=i, disk_id=bytes([i + 1]) * 16, generation=1))
    t.record_write(0, 1, 0, b"a", 0)
    for i in (0, 1):
        t.add_tag(i, b"app:nightly", 5)
    out = b.cut_all(10)
    assert [x.tags for x in out] == [[b"app:nightly"], [b"app:nightly"]]
    assert {x.wnum_hi for x in out} == {1}
    decoded = wb.decode(wb.encode(out[1]))
    assert decoded.tags == [b"app:nightly"] and decoded.records == []
    t.record_write(0, 2, 0, b"b", 20)
    assert [x.tags for x in b.cut_all(30)] == [[]]  # a tag goes out once


def test_no_metadata_cut_outgrows_the_batch_bound_the_rest_goes_to_the_bitmap() -> None:
    d = Disk(drain=16 * 1024)
    d.write(0, b"a")
    d.cut()
    d.tracker.set_mode(0, TrackMode.METADATA)
    for i in range(10):
        d.write(i * 20000, bytes([i + 1]) * 9000)  # 90 KB of regions, far above one 16 KiB batch
    out = d.cut()
    assert d.tracker.mode(0) is TrackMode.BITMAP
    assert out[0].mode == wb.Mode.BITMAP and out[0].flags & wb.Flags.RESYNC_START
    while not d.batches[-1].flags & wb.Flags.RESYNC_DONE:
        d.cut()
    assert max(wb.total_data_bytes(b) for b in d.batches) <= 16 * 1024
    assert replay(d.batches) == d.image
