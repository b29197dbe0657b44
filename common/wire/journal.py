"""Undo-journal segment codec (the MT's retention journal; the journal logic lives in mt/).

Layout (little-endian)::

    segment header  SEGMENT_HEADER (32 bytes): magic b"DRUJ", version u16 = 1, reserved u16 (0),
                    disk_id 16s, segment_no u64
    records, appended one after the other:
      UNDO    UNDO_HEAD (32 bytes): kind u8 = 1, reserved 3 bytes (0), gen u64, seq u64,
              offset u64, length u32;  then ``length`` bytes of old replica data;
              then crc32 u32 (zlib.crc32 over head + data)
      COMMIT  COMMIT (68 bytes): kind u8 = 2, reserved 3 bytes (0), gen u64, seq u64,
              wnum_first u64, wnum_hi u64, t_first_ns u64, t_last_ns u64, received_ns u64,
              accuracy u8, flags u8, reserved u16 (0), nundo u32;  then crc32 u32 over those 68 bytes

Scanning never trusts the file: an unknown kind, non-zero reserved bytes, an UNDO length of 0
or above :data:`MAX_UNDO_LEN`, a short read or a bad crc ends the scan. ``valid_end`` is then the
offset just after the last good record and :attr:`Scanner.tail` says why the scan stopped
(``None`` at a clean end of file); everything from ``valid_end`` on is a torn tail for the
caller to roll back and truncate.

Memory: the scan reads through the file object and verifies undo data in chunks of
:data:`CHUNK` bytes, so a segment of any size needs about one chunk of memory. Scanned
:class:`UndoRecord` objects do **not** carry the old data: they carry ``data_offset`` and
``length``; read the data with :func:`read_undo_data` (which re-verifies the crc) or, for an
in-memory segment, slice ``buf[rec.data_offset:rec.data_offset + rec.length]``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from common import formats
from common.errors import MalformedBatch

MAGIC = b"DRUJ"
VERSION = 1
SEGMENT_HEADER = struct.Struct("<4sHH16sQ")
RECORD_PREFIX = struct.Struct("<B3sQQ")
UNDO_HEAD = struct.Struct("<B3sQQQI")
COMMIT = struct.Struct("<B3sQQQQQQQBBHI")
CRC = struct.Struct("<I")
assert SEGMENT_HEADER.size == 32
assert RECORD_PREFIX.size == 20
assert UNDO_HEAD.size == 32
assert COMMIT.size == 68
assert CRC.size == 4

SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size
COMMIT_SIZE = COMMIT.size + CRC.size
KIND_UNDO = 1
KIND_COMMIT = 2
MAX_UNDO_LEN = 64 << 20
CHUNK = 1 << 20
_ZERO3 = b"\0\0\0"
_CORRUPT = "journal_corrupt"


@dataclass(frozen=True)
class SegmentHeader:
    disk_id: bytes
    segment_no: int


@dataclass(frozen=True)
class UndoRecord:
    """Old bytes of ``[offset, offset + length)`` of the replica, stored at ``data_offset``."""

    gen: int
    seq: int
    offset: int
    length: int
    data_offset: int
    crc: int

    @property
    def end(self) -> int:
        """File offset just after this record."""
        return self.data_offset + self.length + CRC.size


@dataclass(frozen=True)
class CommitInfo:
    """The commit record of batch (gen, seq): its metadata and how many undo records it wrote."""

    gen: int
    seq: int
    wnum_first: int
    wnum_hi: int
    t_first_ns: int
    t_last_ns: int
    received_ns: int
    accuracy: int
    flags: int
    nundo: int


CommitRecord = CommitInfo
JournalRecord = UndoRecord | CommitRecord


def undo_size(length: int) -> int:
    """Bytes an UNDO record of ``length`` data bytes takes in a segment."""
    return UNDO_HEAD.size + length + CRC.size


# ---------------------------------------------------------------- encode


def encode_segment_header(disk_id: bytes, segment_no: int) -> bytes:
    if len(disk_id) != 16:
        raise ValueError("disk_id must be 16 bytes")
    return _pack(SEGMENT_HEADER, MAGIC, VERSION, 0, disk_id, segment_no)


def encode_undo_parts(gen: int, seq: int, offset: int, old: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    """(head, crc trailer) of an UNDO record, for ``os.writev([head, old, trailer])`` without a copy."""
    if not 0 < len(old) <= MAX_UNDO_LEN:
        raise ValueError(f"undo length must be 1..{MAX_UNDO_LEN}")
    head = _pack(UNDO_HEAD, KIND_UNDO, _ZERO3, gen, seq, offset, len(old))
    return head, CRC.pack(zlib.crc32(old, zlib.crc32(head)))


def encode_undo(gen: int, seq: int, offset: int, old: bytes | bytearray | memoryview) -> bytes:
    head, trailer = encode_undo_parts(gen, seq, offset, old)
    return b"".join((head, old, trailer))


def encode_commit(info: CommitInfo) -> bytes:
    body = _pack(COMMIT, KIND_COMMIT, _ZERO3, info.gen, info.seq, info.wnum_first, info.wnum_hi,
                 info.t_first_ns, info.t_last_ns, info.received_ns, info.accuracy, info.flags, 0, info.nundo)
    return body + CRC.pack(zlib.crc32(body))


def _pack(layout: struct.Struct, *values: object) -> bytes:
    try:
        return layout.pack(*values)
    except struct.error as exc:
        raise ValueError(f"journal field out of range: {exc}") from exc


# ---------------------------------------------------------------- decode


def decode_segment_header(buf: bytes | bytearray | memoryview) -> SegmentHeader:
    if len(buf) < SEGMENT_HEADER_SIZE:
        raise MalformedBatch("journal segment header truncated", code=_CORRUPT)
    magic, version, reserved, disk_id, segment_no = SEGMENT_HEADER.unpack_from(buf, 0)
    if magic != MAGIC or reserved:
        raise MalformedBatch("not a journal segment", code=_CORRUPT)
    if version > VERSION:  # written by a newer drlab: refused, never misread nor repaired
        raise MalformedBatch(formats.message("undo journal segment", version, VERSION), code="format_too_new")
    formats.check("undo journal segment", version, VERSION, MalformedBatch)
    return SegmentHeader(bytes(disk_id), segment_no)


class _Torn(Exception):
    """The scan reached a torn or garbage tail (message: why)."""


class Scanner(Iterator[tuple[int, JournalRecord]]):
    """Iterates over (file offset, record) from ``start_offset``; stops at the first bad record.

    After the iteration, ``valid_end`` is the offset just after the last good record and
    ``tail`` is ``None`` (clean end of file) or why the rest is a torn tail.
    """

    def __init__(self, f: BinaryIO, start_offset: int = SEGMENT_HEADER_SIZE):
        self._f = f
        self.valid_end = start_offset
        self.tail: str | None = None
        self._done = False

    def __iter__(self) -> Scanner:
        return self

    def __next__(self) -> tuple[int, JournalRecord]:
        if self._done:
            raise StopIteration
        pos = self.valid_end
        self._f.seek(pos)
        try:
            rec = self._read_record(pos)
        except _Torn as torn:
            self.tail, rec = str(torn), None
        if rec is None:
            self._done = True
            raise StopIteration
        self.valid_end = rec.end if isinstance(rec, UndoRecord) else pos + COMMIT_SIZE
        return pos, rec

    def _read_record(self, pos: int) -> JournalRecord | None:
        prefix = _read_exact(self._f, RECORD_PREFIX.size)
        if not prefix:
            return None
        if len(prefix) < RECORD_PREFIX.size:
            raise _Torn("truncated record header")
        kind, reserved = prefix[0], prefix[1:4]
        if reserved != _ZERO3 or kind not in (KIND_UNDO, KIND_COMMIT):
            raise _Torn(f"garbage at {pos} (kind {kind})")
        if kind == KIND_UNDO:
            return self._read_undo(prefix, pos)
        return self._read_commit(prefix)

    def _read_undo(self, prefix: bytes, pos: int) -> UndoRecord:
        rest = _read_exact(self._f, UNDO_HEAD.size - RECORD_PREFIX.size)
        if len(rest) < UNDO_HEAD.size - RECORD_PREFIX.size:
            raise _Torn("truncated undo header")
        head = prefix + rest
        _, _, gen, seq, offset, length = UNDO_HEAD.unpack(head)
        if not 0 < length <= MAX_UNDO_LEN:
            raise _Torn(f"undo length {length} out of bounds")
        crc = _crc_of_next(self._f, length, zlib.crc32(head))
        stored = _read_exact(self._f, CRC.size)
        if crc is None or len(stored) < CRC.size:
            raise _Torn("truncated undo record")
        if CRC.unpack(stored)[0] != crc:
            raise _Torn("undo record crc mismatch")
        return UndoRecord(gen, seq, offset, length, pos + UNDO_HEAD.size, crc)

    def _read_commit(self, prefix: bytes) -> CommitInfo:
        rest = _read_exact(self._f, COMMIT_SIZE - RECORD_PREFIX.size)
        if len(rest) < COMMIT_SIZE - RECORD_PREFIX.size:
            raise _Torn("truncated commit record")
        body = prefix + rest[:-CRC.size]
        if CRC.unpack(rest[-CRC.size:])[0] != zlib.crc32(body):
            raise _Torn("commit record crc mismatch")
        (_, _, gen, seq, wnum_first, wnum_hi, t_first, t_last, received, accuracy, flags, reserved,
         nundo) = COMMIT.unpack(body)
        if reserved:
            raise _Torn("commit record reserved field set")
        return CommitInfo(gen, seq, wnum_first, wnum_hi, t_first, t_last, received, accuracy, flags, nundo)


def scan(source: BinaryIO | bytes | bytearray | memoryview, start_offset: int = SEGMENT_HEADER_SIZE) -> Scanner:
    """A :class:`Scanner` over a file object (read in place) or an in-memory segment."""
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    return Scanner(source, start_offset)


@dataclass
class ScanResult:
    header: SegmentHeader | None
    records: list[tuple[int, JournalRecord]] = field(default_factory=list)
    valid_end: int = 0
    tail: str | None = None
    file_size: int = 0


def scan_segment(path: str | os.PathLike[str]) -> ScanResult:
    """Scan a whole segment file.

    A file shorter than the segment header (a crash while creating it) gives ``header=None``,
    ``valid_end=0``; a full header that is not a v1 journal header raises MalformedBatch.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        raw = _read_exact(f, SEGMENT_HEADER_SIZE)
        if len(raw) < SEGMENT_HEADER_SIZE:
            return ScanResult(None, [], 0, "truncated segment header", size)
        header = decode_segment_header(raw)
        scanner = Scanner(f, SEGMENT_HEADER_SIZE)
        records = list(scanner)
    return ScanResult(header, records, scanner.valid_end, scanner.tail, size)


def read_undo_data(f: BinaryIO | int, rec: UndoRecord, *, verify: bool = True) -> bytes:
    """The old bytes of a scanned UNDO record, re-checked against its crc unless ``verify=False``."""
    if isinstance(f, int):
        data = os.pread(f, rec.length, rec.data_offset)
    else:
        f.seek(rec.data_offset)
        data = _read_exact(f, rec.length)
    if len(data) != rec.length:
        raise MalformedBatch(f"undo data at {rec.data_offset} truncated", code=_CORRUPT)
    if verify:
        head = UNDO_HEAD.pack(KIND_UNDO, _ZERO3, rec.gen, rec.seq, rec.offset, rec.length)
        if zlib.crc32(data, zlib.crc32(head)) != rec.crc:
            raise MalformedBatch(f"undo data at {rec.data_offset} fails its crc", code=_CORRUPT)
    return data


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes; fewer only at end of file."""
    data = f.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _crc_of_next(f: BinaryIO, length: int, crc: int) -> int | None:
    """crc32 of the next ``length`` bytes read in CHUNK pieces; None if the file ends first."""
    remaining = length
    while remaining:
        chunk = f.read(min(remaining, CHUNK))
        if not chunk:
            return None
        crc = zlib.crc32(chunk, crc)
        remaining -= len(chunk)
    return crc
