"""Tracker and batcher: write order, cuts by time and size, wnum_hi, seq, resync interleaving."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.batcher import Batcher, DiskStream
from agent.tracker import Tracker, WnumError
from common.wire import batch as wb

SIZE = 64 * 1024


def apply(image: bytearray, batches: list[wb.ChangeBatch]) -> bytearray:
    for b in batches:
        for r in b.records:
            image[r.offset:r.offset + len(r.data)] = bytes(r.data)
    return image


def stream(index: int = 0, gen: int = 1, resyncing: bool = False) -> DiskStream:
    return DiskStream(index=index, disk_id=bytes([index]) * 16, generation=gen, resyncing=resyncing)


def test_writes_stay_in_order_and_overlap_correctly() -> None:
    t = Tracker()
    b = Batcher(t, 1 << 20)
    b.open(stream())
    t.record_write(0, 1, 0, b"aaaa", 10)
    t.record_write(0, 2, 2, b"bb", 20)
    t.record_write(0, 3, 1, b"c", 30)
    [batch] = b.cut_all(40)
    assert [(r.offset, bytes(r.data)) for r in batch.records] == [(0, b"aaaa"), (2, b"bb"), (1, b"c")]
    assert bytes(apply(bytearray(4), [batch])) == b"acbb"
    assert (batch.wnum_first, batch.wnum_hi, batch.t_first_ns, batch.t_last_ns) == (1, 3, 10, 30)
    assert (batch.mode, batch.accuracy, batch.flags) == (wb.Mode.DATA, wb.Accuracy.EXACT, 0)


def test_non_increasing_wnum_is_refused_across_disks() -> None:
    t = Tracker()
    t.watch(0)
    t.record_write(1, 5, 0, b"x", 1)  # disk 1 is not watched but advances the counter
    with pytest.raises(WnumError):
        t.record_write(0, 5, 0, b"y", 2)
    with pytest.raises(WnumError):
        t.record_write(0, 4, 0, b"y", 2)
    assert t.pending_bytes(0) == 0 and t.last_wnum == 5


def test_empty_interval_yields_no_batch_and_seq_has_no_gaps() -> None:
    t = Tracker()
    b = Batcher(t, 1 << 20)
    b.open(stream())
    seqs = []
    for i in range(1, 30):
        if i % 3 == 0:
            t.record_write(0, i, i, b"z", i)
        seqs += [x.seq for x in b.cut_all(i)]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == 9


def test_size_bound_is_reported_when_reached() -> None:
    t = Tracker()
    b = Batcher(t, 100)
    b.open(stream())
    t.record_write(0, 1, 0, b"x" * 60, 1)
    assert not b.size_due()
    t.record_write(0, 2, 0, b"x" * 40, 2)
    assert b.size_due()
    [batch] = b.cut_all(3)
    assert wb.total_data_bytes(batch) == 100 and not b.size_due()


def test_all_disks_cut_at_the_same_boundary_with_machine_wnum_hi() -> None:
    t = Tracker()
    b = Batcher(t, 1 << 20)
    b.open(stream(0))
    b.open(stream(1))
    t.record_write(0, 1, 0, b"a", 1)
    t.record_write(1, 2, 0, b"b", 2)
    t.record_write(0, 3, 0, b"c", 3)
    t.record_write(2, 4, 0, b"d", 4)  # an unprotected disk still counts for wnum_hi
    b0, b1 = b.cut_all(5)
    assert (b0.wnum_first, b0.wnum_hi) == (1, 4)
    assert (b1.wnum_first, b1.wnum_hi) == (2, 4)


def test_resync_flags_start_done_then_data() -> None:
    t = Tracker()
    b = Batcher(t, 1 << 20)
    s = stream(resyncing=True)
    b.open(s)
    t.record_resync(0, 0, b"r" * 8, 1)
    first = b.cut_all(2)[0]
    t.record_write(0, 1, 0, b"w", 3)
    t.record_resync(0, 8, b"s" * 8, 4)
    t.mark_resync_done(0, 4)
    t.record_write(0, 2, 9, b"v", 5)
    done = b.cut_all(6)[0]
    t.record_write(0, 3, 0, b"q", 7)
    data = b.cut_all(8)[0]
    assert (first.mode, first.accuracy, first.flags) == (wb.Mode.RESYNC, wb.Accuracy.NONE, wb.Flags.RESYNC_START)
    assert (done.mode, done.flags, done.seq) == (wb.Mode.RESYNC, wb.Flags.RESYNC_DONE, 2)
    assert s.resync_done_seq == 2 and not s.resyncing
    assert (data.mode, data.accuracy, data.flags) == (wb.Mode.DATA, wb.Accuracy.EXACT, 0)


def test_resync_with_nothing_to_copy_sends_one_empty_batch() -> None:
    t = Tracker()
    b = Batcher(t, 1 << 20)
    b.open(stream(resyncing=True))
    t.mark_resync_done(0, 7)
    [batch] = b.cut_all(9)
    assert batch.records == [] and batch.flags == wb.Flags.RESYNC_START | wb.Flags.RESYNC_DONE
    assert (batch.t_first_ns, batch.t_last_ns) == (7, 7)
    assert b.cut_all(10) == []
    wb.decode(wb.encode(batch))  # an empty batch is a valid batch


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nwrites=st.integers(0, 80), chunk=st.sampled_from([512, 4096, 16384]))
def test_replaying_batches_rebuilds_the_source_with_interleaved_resync(seed: int, nwrites: int, chunk: int) -> None:
    rng = random.Random(seed)
    source = bytearray(rng.randbytes(SIZE // 2) + bytes(SIZE // 2))  # pre-existing data to copy
    t = Tracker()
    b = Batcher(t, rng.choice([1000, 8000, 1 << 20]))
    b.open(stream(resyncing=True))
    batches: list[wb.ChangeBatch] = []
    pos, wnum, now = 0, 0, 0
    steps = ["w"] * nwrites + ["r"] * (SIZE // chunk) + ["c"] * rng.randrange(1, 20)
    rng.shuffle(steps)
    for step in steps:
        now += 1
        if step == "w":
            wnum += 1
            off = rng.randrange(SIZE - 1)
            data = rng.randbytes(rng.randrange(1, min(3000, SIZE - off) + 1))
            source[off:off + len(data)] = data
            t.record_write(0, wnum, off, data, now)
        elif step == "r" and pos < SIZE:
            piece = bytes(source[pos:pos + chunk])
            if any(piece):  # all-zero chunks are skipped: the replica starts zero-filled
                t.record_resync(0, pos, piece, now)
            pos += chunk
            if pos >= SIZE:
                t.mark_resync_done(0, now)
        elif step == "c" or b.size_due():
            batches += b.cut_all(now)
    batches += b.cut_all(now + 1)
    assert [x.seq for x in batches] == list(range(1, len(batches) + 1))
    assert apply(bytearray(SIZE), batches) == source
    assert sum(1 for x in batches if x.flags & wb.Flags.RESYNC_DONE) == 1
    assert batches[0].flags & wb.Flags.RESYNC_START
    done_at = next(i for i, x in enumerate(batches) if x.flags & wb.Flags.RESYNC_DONE)
    assert all(x.mode == wb.Mode.DATA for x in batches[done_at + 1:])
    assert all(x.mode == wb.Mode.RESYNC for x in batches[:done_at + 1])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_point_after_each_batch_holds_exactly_the_writes_up_to_wnum_hi(seed: int) -> None:
    rng = random.Random(seed)
    t = Tracker()
    b = Batcher(t, 1 << 20)
    b.open(stream(0))
    writes: list[tuple[int, int, int, bytes]] = []  # (wnum, disk, offset, data)
    batches: list[wb.ChangeBatch] = []
    for wnum in range(1, 120):
        disk = rng.choice([0, 1])  # disk 1 is another, unprotected disk of the machine
        off = rng.randrange(SIZE - 100)
        data = rng.randbytes(rng.randrange(1, 100))
        writes.append((wnum, disk, off, data))
        t.record_write(disk, wnum, off, data, wnum)
        if rng.random() < 0.15:
            batches += b.cut_all(wnum)
    batches += b.cut_all(1000)
    for i, batch in enumerate(batches):
        expected = bytearray(SIZE)
        for wnum, disk, off, data in writes:
            if disk == 0 and wnum <= batch.wnum_hi:
                expected[off:off + len(data)] = data
        assert apply(bytearray(SIZE), batches[:i + 1]) == expected
