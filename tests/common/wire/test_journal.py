"""Undo-journal segment codec: round trips, torn tails, bounded memory."""

from __future__ import annotations

import io
import os
import tracemalloc
import zlib
from pathlib import Path

import pytest

from common.errors import MalformedBatch
from common.wire import journal as wj

DISK = b"D" * 16


def commit(gen: int = 1, seq: int = 1, nundo: int = 2) -> wj.CommitInfo:
    return wj.CommitInfo(gen=gen, seq=seq, wnum_first=10, wnum_hi=20, t_first_ns=100, t_last_ns=200,
                         received_ns=300, accuracy=1, flags=2, nundo=nundo)


def segment(extra: bytes = b"") -> tuple[bytes, list[int]]:
    """A segment with two committed batches; returns it and the offsets of its records."""
    parts = [wj.encode_segment_header(DISK, 7),
             wj.encode_undo(1, 1, 0, b"a" * 100), wj.encode_undo(1, 1, 4096, b"b" * 10), wj.encode_commit(commit()),
             wj.encode_undo(1, 2, 512, b"c" * 3), wj.encode_commit(commit(seq=2, nundo=1))]
    offsets, pos = [], len(parts[0])
    for p in parts[1:]:
        offsets.append(pos)
        pos += len(p)
    return b"".join(parts) + extra, offsets


def test_struct_sizes() -> None:
    assert (wj.SEGMENT_HEADER.size, wj.UNDO_HEAD.size, wj.COMMIT.size) == (32, 32, 68)
    assert wj.COMMIT_SIZE == 72 and wj.undo_size(10) == 46 == len(wj.encode_undo(1, 1, 0, b"x" * 10))


def test_segment_header_round_trip() -> None:
    raw = wj.encode_segment_header(DISK, 2**64 - 1)
    assert len(raw) == wj.SEGMENT_HEADER_SIZE
    assert wj.decode_segment_header(raw) == wj.SegmentHeader(DISK, 2**64 - 1)


@pytest.mark.parametrize("patch", [(0, b"DRUX"), (4, b"\x02\x00"), (6, b"\x01\x00")])
def test_bad_segment_header(patch: tuple[int, bytes]) -> None:
    raw = bytearray(wj.encode_segment_header(DISK, 1))
    raw[patch[0]:patch[0] + len(patch[1])] = patch[1]
    with pytest.raises(MalformedBatch):
        wj.decode_segment_header(bytes(raw))
    with pytest.raises(MalformedBatch):
        wj.decode_segment_header(raw[:31])


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        wj.encode_undo(1, 1, 0, b"")
    with pytest.raises(ValueError):
        wj.encode_undo(1, -1, 0, b"x")
    with pytest.raises(ValueError):
        wj.encode_commit(commit(nundo=1 << 32))
    with pytest.raises(ValueError):
        wj.encode_segment_header(b"short", 1)


def test_scan_round_trip_in_memory() -> None:
    buf, offsets = segment()
    scanner = wj.scan(buf)
    got = list(scanner)
    assert [off for off, _ in got] == offsets
    assert scanner.valid_end == len(buf) and scanner.tail is None
    kinds = [type(r) for _, r in got]
    assert kinds == [wj.UndoRecord, wj.UndoRecord, wj.CommitRecord, wj.UndoRecord, wj.CommitRecord]
    first = got[0][1]
    assert isinstance(first, wj.UndoRecord)
    assert (first.gen, first.seq, first.offset, first.length) == (1, 1, 0, 100)
    assert buf[first.data_offset:first.data_offset + first.length] == b"a" * 100
    assert got[2][1] == commit() and got[4][1] == commit(seq=2, nundo=1)


def test_scan_from_offset_and_file(tmp_path: Path) -> None:
    buf, offsets = segment()
    path = tmp_path / "seg"
    path.write_bytes(buf)
    with open(path, "rb") as f:
        got = list(wj.scan(f, offsets[3]))
    assert [off for off, _ in got] == offsets[3:]
    result = wj.scan_segment(path)
    assert result.header == wj.SegmentHeader(DISK, 7)
    assert [off for off, _ in result.records] == offsets
    assert (result.valid_end, result.tail, result.file_size) == (len(buf), None, len(buf))


def test_read_undo_data(tmp_path: Path) -> None:
    buf, _ = segment()
    path = tmp_path / "seg"
    path.write_bytes(buf)
    undo = [r for _, r in wj.scan_segment(path).records if isinstance(r, wj.UndoRecord)]
    with open(path, "rb") as f:
        assert [wj.read_undo_data(f, r) for r in undo] == [b"a" * 100, b"b" * 10, b"c" * 3]
    fd = os.open(path, os.O_RDONLY)
    try:
        assert wj.read_undo_data(fd, undo[1]) == b"b" * 10
    finally:
        os.close(fd)
    with open(path, "r+b") as f:
        f.seek(undo[0].data_offset + 5)
        f.write(b"Z")
    with open(path, "rb") as f:
        with pytest.raises(MalformedBatch):
            wj.read_undo_data(f, undo[0])
        assert wj.read_undo_data(f, undo[0], verify=False)[5:6] == b"Z"
    os.truncate(path, undo[2].data_offset + 1)
    with open(path, "rb") as f, pytest.raises(MalformedBatch, match="truncated"):
        wj.read_undo_data(f, undo[2])


def test_undo_parts_writev(tmp_path: Path) -> None:
    old = os.urandom(5000)
    head, trailer = wj.encode_undo_parts(3, 4, 8192, memoryview(old))
    path = tmp_path / "w"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.writev(fd, [head, old, trailer])
    finally:
        os.close(fd)
    assert path.read_bytes() == wj.encode_undo(3, 4, 8192, old)


def test_torn_tail_at_every_length() -> None:
    buf, offsets = segment()
    boundaries = set(offsets) | {len(buf)}
    for n in range(wj.SEGMENT_HEADER_SIZE, len(buf) + 1):
        scanner = wj.scan(buf[:n])
        list(scanner)
        expected = max(b for b in boundaries | {wj.SEGMENT_HEADER_SIZE} if b <= n)
        assert scanner.valid_end == expected, n
        assert (scanner.tail is None) == (n == expected)


@pytest.mark.parametrize(
    "garbage",
    [b"\0" * 4096, b"\xff" * 100, os.urandom(1000), b"\x01", b"\x01\0\0\0" + b"\0" * 16,
     b"\x03" + b"\0" * 100, b"\x01\x01\0\0" + b"\0" * 100],
)
def test_garbage_tail(garbage: bytes) -> None:
    buf, _ = segment()
    scanner = wj.scan(buf + garbage)
    assert len(list(scanner)) == 5
    assert scanner.valid_end == len(buf) and scanner.tail is not None


def test_bad_crc_in_last_undo_and_commit() -> None:
    buf, offsets = segment()
    for target in (offsets[3] + wj.UNDO_HEAD.size + 1, offsets[4] + 10, len(buf) - 1, offsets[3] + 9):
        bad = bytearray(buf)
        bad[target] ^= 0x10
        scanner = wj.scan(bytes(bad))
        records = list(scanner)
        assert scanner.valid_end == max(off for off in offsets if off <= target)
        assert len(records) == offsets.index(scanner.valid_end)
        assert scanner.tail is not None


def test_scan_stops_at_first_bad_record_even_if_later_ones_are_good() -> None:
    buf, offsets = segment()
    bad = bytearray(buf)
    bad[offsets[1] + wj.UNDO_HEAD.size] ^= 1
    scanner = wj.scan(bytes(bad))
    assert [off for off, _ in scanner] == offsets[:1]
    assert scanner.valid_end == offsets[1] and "crc" in (scanner.tail or "")


@pytest.mark.parametrize("length", [0, wj.MAX_UNDO_LEN + 1, (1 << 32) - 1])
def test_bad_undo_length_fails_fast(length: int) -> None:
    buf, _ = segment()
    head = wj.UNDO_HEAD.pack(wj.KIND_UNDO, b"\0\0\0", 1, 3, 0, length)
    tracemalloc.start()
    try:
        scanner = wj.scan(buf + head + b"x" * 64)
        assert len(list(scanner)) == 5
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scanner.valid_end == len(buf) and "length" in (scanner.tail or "")
    assert peak < 256 * 1024


def test_commit_reserved_field() -> None:
    body = bytearray(wj.encode_commit(commit())[:-4])
    body[-6] = 1
    buf, _ = segment()
    record = bytes(body) + wj.CRC.pack(zlib.crc32(bytes(body)))
    scanner = wj.scan(buf + record)
    list(scanner)
    assert scanner.valid_end == len(buf) and "reserved" in (scanner.tail or "")


def test_scan_segment_short_and_foreign_files(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(wj.encode_segment_header(DISK, 1)[:10])
    result = wj.scan_segment(short)
    assert (result.header, result.valid_end, result.records) == (None, 0, [])
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"X" * 100)
    with pytest.raises(MalformedBatch):
        wj.scan_segment(foreign)
    empty = tmp_path / "empty"
    empty.write_bytes(wj.encode_segment_header(DISK, 1))
    result = wj.scan_segment(empty)
    assert (result.valid_end, result.tail, result.records) == (32, None, [])


def _write_sparse_undo(f: io.BufferedRandom, length: int) -> None:
    """Append an UNDO record of ``length`` zero bytes without writing (or holding) the zeros."""
    head = wj.UNDO_HEAD.pack(wj.KIND_UNDO, b"\0\0\0", 1, 1, 0, length)
    crc, zeros, left = zlib.crc32(head), bytes(1 << 20), length
    while left:
        n = min(left, len(zeros))
        crc = zlib.crc32(zeros[:n], crc)
        left -= n
    f.write(head)
    f.truncate(f.tell() + length)
    f.seek(0, os.SEEK_END)
    f.write(wj.CRC.pack(crc))


def test_large_segment_scans_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big"
    with open(path, "w+b") as f:
        f.write(wj.encode_segment_header(DISK, 1))
        _write_sparse_undo(f, wj.MAX_UNDO_LEN)
        _write_sparse_undo(f, 3 << 20)
        f.write(wj.encode_commit(commit(nundo=2)))
    tracemalloc.start()
    try:
        result = wj.scan_segment(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [type(r) for _, r in result.records] == [wj.UndoRecord, wj.UndoRecord, wj.CommitRecord]
    assert result.valid_end == result.file_size == path.stat().st_size
    assert peak < 4 << 20
