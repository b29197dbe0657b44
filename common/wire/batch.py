"""Change batch: what an agent cuts, a PS caches as-is, and an MT checks and applies.

Layout (all little-endian)::

    header   HEADER (92 bytes): magic b"DRCB", version u16 = 1, flags u16, disk_id 16s,
             generation u64, seq u64, wnum_first u64, wnum_hi u64, t_first_ns u64, t_last_ns u64,
             mode u8, accuracy u8, reserved u16 (0), ntags u32, nrecords u32,
             body_len u64 (bytes from the end of the header to the start of the trailer)
    tags     ntags x (length u32, bytes)                 length <= MAX_TAG_LEN, ntags <= MAX_TAGS
    records  nrecords x (offset u64, length u32, reserved u32 (0), data)      length >= 1
    trailer  xxh3-128 digest (16 bytes) over everything before it

Rules checked by :func:`decode`: magic, version, known flags / mode / accuracy, zero reserved
fields, generation and seq >= 1, ``wnum_first <= wnum_hi`` when ``wnum_first`` is set, counts and
lengths capped before anything is allocated, ``body_len`` consistent with the buffer, every
record inside ``[0, disk_size)`` when the disk size is given, nothing left over, the checksum.
Records may overlap: they are in write order and must be applied in that order.

Decoded record data are zero-copy ``memoryview`` slices of the buffer given to :func:`decode`
(keep that buffer alive and unmodified while the batch is in use); tags are copied to ``bytes``.
Every rejection raises :class:`common.errors.MalformedBatch`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

import xxhash

from common import formats
from common.errors import MalformedBatch

MAGIC = b"DRCB"
VERSION = 1
HEADER = struct.Struct("<4sHH16sQQQQQQBBHIIQ")
TAG_LEN = struct.Struct("<I")
RECORD = struct.Struct("<QII")
TRAILER_SIZE = 16
assert HEADER.size == 92
assert TAG_LEN.size == 4
assert RECORD.size == 16

HEADER_SIZE = HEADER.size
MAX_TAGS = 64
MAX_TAG_LEN = 4096
MAX_BYTES = 64 << 20
DISK_ID_LEN = 16
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1


class Mode(IntEnum):
    DATA = 1
    METADATA = 2
    RESYNC = 3
    BITMAP = 4  # a dirty bitmap being drained (no valid point until RESYNC_DONE)


class Accuracy(IntEnum):
    EXACT = 1
    APPROXIMATE = 2
    NONE = 3


class Flags(IntFlag):
    RESYNC_START = 1  # initial replication / resync started in this batch
    RESYNC_DONE = 2  # initial replication / resync completed with this batch


_KNOWN_FLAGS = int(Flags.RESYNC_START | Flags.RESYNC_DONE)


@dataclass(frozen=True)
class Record:
    """One write: ``data`` lands at byte ``offset`` of the disk (length = ``len(data)``)."""

    offset: int
    data: bytes | bytearray | memoryview


@dataclass
class ChangeBatch:
    disk_id: bytes
    generation: int
    seq: int
    wnum_first: int
    wnum_hi: int
    t_first_ns: int
    t_last_ns: int
    mode: Mode
    accuracy: Accuracy
    flags: int = 0
    tags: list[bytes] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)


@dataclass(frozen=True)
class BatchHeader:
    """The fixed header of an encoded batch, checked on its own (no body, no checksum)."""

    flags: int
    disk_id: bytes
    generation: int
    seq: int
    wnum_first: int
    wnum_hi: int
    t_first_ns: int
    t_last_ns: int
    mode: Mode
    accuracy: Accuracy
    ntags: int
    nrecords: int
    body_len: int

    @property
    def total_len(self) -> int:
        """Length of the whole encoded batch this header announces."""
        return HEADER_SIZE + self.body_len + TRAILER_SIZE


# ---------------------------------------------------------------- encode


def total_data_bytes(batch: ChangeBatch) -> int:
    """Sum of the record lengths (the disk bytes the batch carries)."""
    return sum(len(r.data) for r in batch.records)


def encode(batch: ChangeBatch) -> bytes:
    """Encode ``batch``; raises ValueError if it breaks a rule :func:`decode` enforces."""
    _check_batch(batch)
    parts: list[bytes | bytearray | memoryview] = [b""]
    for tag in batch.tags:
        parts += (TAG_LEN.pack(len(tag)), tag)
    for rec in batch.records:
        parts += (RECORD.pack(rec.offset, len(rec.data), 0), rec.data)
    body_len = sum(len(p) for p in parts)
    parts[0] = _pack_header(batch, body_len)
    hasher = xxhash.xxh3_128()
    for p in parts:
        hasher.update(p)
    parts.append(hasher.digest())
    return b"".join(parts)


def _pack_header(batch: ChangeBatch, body_len: int) -> bytes:
    return HEADER.pack(
        MAGIC, VERSION, batch.flags, batch.disk_id, batch.generation, batch.seq,
        batch.wnum_first, batch.wnum_hi, batch.t_first_ns, batch.t_last_ns,
        int(batch.mode), int(batch.accuracy), 0, len(batch.tags), len(batch.records), body_len,
    )


def _check_batch(batch: ChangeBatch) -> None:
    if len(batch.disk_id) != DISK_ID_LEN:
        raise ValueError("disk_id must be 16 bytes")
    for name in ("generation", "seq", "wnum_first", "wnum_hi", "t_first_ns", "t_last_ns"):
        if not 0 <= getattr(batch, name) <= _U64:
            raise ValueError(f"{name} out of u64 range")
    if batch.generation < 1 or batch.seq < 1:
        raise ValueError("generation and seq must be >= 1")
    if batch.wnum_first and batch.wnum_first > batch.wnum_hi:
        raise ValueError("wnum_first > wnum_hi")
    if batch.flags & ~_KNOWN_FLAGS or batch.flags < 0:
        raise ValueError("unknown flags")
    Mode(batch.mode)  # raises ValueError when unknown
    Accuracy(batch.accuracy)
    if len(batch.tags) > MAX_TAGS or any(len(t) > MAX_TAG_LEN for t in batch.tags):
        raise ValueError("too many or too long tags")
    for rec in batch.records:
        if not 0 < len(rec.data) <= _U32 or not 0 <= rec.offset <= _U64 - len(rec.data):
            raise ValueError(f"bad record at offset {rec.offset}")


# ---------------------------------------------------------------- decode


def check_stored(what: str, head: bytes) -> None:
    """A stored batch file (PS cache, MT staging) whose first bytes ``head`` show a newer format
    version is refused with common.formats.FormatTooNew (a downgrade), never taken for garbage."""
    if len(head) >= 6 and head[:4] == MAGIC:
        formats.check(what, int.from_bytes(head[4:6], "little"), VERSION)


def parse_header(buf: bytes | bytearray | memoryview) -> BatchHeader:
    """Parse and check the fixed header (only the first HEADER_SIZE bytes are needed)."""
    if len(buf) < HEADER_SIZE:
        raise MalformedBatch(f"batch shorter than its header ({len(buf)} < {HEADER_SIZE})")
    (magic, version, flags, disk_id, gen, seq, wnum_first, wnum_hi, t_first, t_last,
     mode, accuracy, reserved, ntags, nrecords, body_len) = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise MalformedBatch("bad batch magic")
    formats.check("change batch", version, VERSION, MalformedBatch)  # a newer one: refused, never misread
    if flags & ~_KNOWN_FLAGS or reserved:
        raise MalformedBatch("unknown batch flags or reserved bits set")
    if mode not in Mode._value2member_map_ or accuracy not in Accuracy._value2member_map_:
        raise MalformedBatch(f"bad mode {mode} or accuracy {accuracy}")
    if gen < 1 or seq < 1:
        raise MalformedBatch("generation and seq must be >= 1")
    if wnum_first and wnum_first > wnum_hi:
        raise MalformedBatch("wnum_first > wnum_hi")
    if ntags > MAX_TAGS:
        raise MalformedBatch(f"too many tags ({ntags})")
    if ntags * TAG_LEN.size + nrecords * (RECORD.size + 1) > body_len:
        raise MalformedBatch("counts do not fit in body_len")
    return BatchHeader(flags, bytes(disk_id), gen, seq, wnum_first, wnum_hi, t_first, t_last,
                       Mode(mode), Accuracy(accuracy), ntags, nrecords, body_len)


def checksum(buf: bytes | bytearray | memoryview) -> bytes:
    """The 16-byte trailer (xxh3-128) of an encoded batch, as stored (not verified)."""
    if len(buf) < HEADER_SIZE + TRAILER_SIZE:
        raise MalformedBatch("batch too short to hold a checksum")
    return bytes(buf[len(buf) - TRAILER_SIZE:])


def decode(
    buf: bytes | bytearray | memoryview, *, disk_size: int | None = None, max_bytes: int = MAX_BYTES
) -> ChangeBatch:
    """Check and decode an encoded batch. Record data are memoryview slices of ``buf``."""
    mv = byte_view(buf)
    if len(mv) > max_bytes:
        raise MalformedBatch(f"batch larger than {max_bytes} bytes")
    hdr = parse_header(mv)
    if hdr.total_len != len(mv):
        raise MalformedBatch(f"body_len {hdr.body_len} does not match a {len(mv)}-byte batch")
    end = len(mv) - TRAILER_SIZE
    if xxhash.xxh3_128_digest(mv[:end]) != mv[end:]:
        raise MalformedBatch("batch checksum mismatch")
    pos, tags = _read_tags(mv, HEADER_SIZE, end, hdr.ntags)
    records = list(_read_records(mv, pos, end, hdr.nrecords, disk_size))
    return ChangeBatch(hdr.disk_id, hdr.generation, hdr.seq, hdr.wnum_first, hdr.wnum_hi,
                       hdr.t_first_ns, hdr.t_last_ns, hdr.mode, hdr.accuracy, hdr.flags, tags, records)


def byte_view(buf: bytes | bytearray | memoryview) -> memoryview:
    """A flat unsigned-byte view of ``buf`` (MalformedBatch if it is not contiguous)."""
    mv = memoryview(buf)
    if not mv.c_contiguous:
        raise MalformedBatch("batch buffer is not contiguous")
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def _read_tags(mv: memoryview, pos: int, end: int, ntags: int) -> tuple[int, list[bytes]]:
    tags = []
    for _ in range(ntags):
        if pos + TAG_LEN.size > end:
            raise MalformedBatch("tag header past the end of the body")
        (length,) = TAG_LEN.unpack_from(mv, pos)
        pos += TAG_LEN.size
        if length > MAX_TAG_LEN or pos + length > end:
            raise MalformedBatch(f"bad tag length {length}")
        tags.append(bytes(mv[pos:pos + length]))
        pos += length
    return pos, tags


def _read_records(mv: memoryview, pos: int, end: int, nrecords: int, disk_size: int | None) -> Iterator[Record]:
    for i in range(nrecords):
        if pos + RECORD.size > end:
            raise MalformedBatch(f"record {i} header past the end of the body")
        offset, length, reserved = RECORD.unpack_from(mv, pos)
        pos += RECORD.size
        if length == 0 or reserved or pos + length > end:
            raise MalformedBatch(f"record {i}: bad length {length} or reserved field")
        if disk_size is not None and offset + length > disk_size:
            raise MalformedBatch(f"record {i} [{offset}, +{length}) beyond disk size {disk_size}")
        yield Record(offset, mv[pos:pos + length])
        pos += length
    if pos != end:
        raise MalformedBatch(f"{end - pos} bytes left over after the last record")
