"""Activity-log slots: round trip, the newest valid slot wins, torn or hostile slots are refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.wire import actlog as wal


def snapshot(counter: int, bits: bytes = b"\x05\x80") -> wal.Snapshot:
    return wal.Snapshot(counter, 1 << 20, (wal.DiskBits(0, 16 << 20, 16, bits), wal.DiskBits(3, 5 << 20, 5, b"\x1f")))


def test_round_trip_with_padding() -> None:
    raw = wal.encode(snapshot(7)).ljust(4096, b"\0")
    assert wal.decode(raw) == snapshot(7)
    assert len(raw) == wal.slot_size([(0, 16 << 20), (3, 5 << 20)], 1 << 20)


def test_the_newest_complete_slot_wins() -> None:
    a, b = wal.encode(snapshot(8)), wal.encode(snapshot(9, b"\xff\xff"))
    assert wal.pick([a, b]).counter == 9  # type: ignore[union-attr]
    torn = b[:-3] + b"\0\0\0"  # the newer write was torn: the older slot stands
    assert wal.pick([a, torn]).counter == 8  # type: ignore[union-attr]
    assert wal.pick([b"\0" * 64, b"garbage" * 9]) is None


@pytest.mark.parametrize("mutate", [
    lambda r: b"XXXX" + r[4:],
    lambda r: r[:4] + b"\x09\x00" + r[6:],  # version
    lambda r: r[:40],  # truncated
    lambda r: r[:30] + bytes([r[30] ^ 1]) + r[31:],  # a flipped bit
])
def test_bad_slots_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(wal.ActLogError):
        wal.decode(mutate(wal.encode(snapshot(1))))


def test_encode_refuses_inconsistent_bitmaps() -> None:
    with pytest.raises(wal.ActLogError):
        wal.encode(wal.Snapshot(1, 1 << 20, (wal.DiskBits(0, 16 << 20, 16, b"\x00"),)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_hostile_bytes_only_raise_the_codec_error(data: bytes) -> None:
    try:
        wal.decode(data)
    except wal.ActLogError:
        pass
    header = wal.HEADER.pack(wal.MAGIC, wal.VERSION, 1, 1, 4096, 0)
    try:  # a valid header with a hostile body: huge counts are refused before allocating
        wal.decode(header + data)
    except wal.ActLogError:
        pass
