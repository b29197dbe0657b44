"""Activity log file: the agent's persisted set of hot extents, one bitmap per disk.

An extent is hot while writes to it may not be applied at the MT yet; after a crash of the
agent or its machine only hot extents may differ between the disk and the replica.

The file holds two fixed-size slots written alternately (slot = counter % 2), each::

    header   HEADER (24 bytes): magic b"DRAL", version u16 = 1, ndisks u16, counter u64,
             extent_bytes u32, reserved u32 (0)
    disks    ndisks x (DISK (16 bytes): disk index u16, reserved u16 (0), nbits u32,
             size_bytes u64; then ceil(nbits / 8) bitmap bytes, bit i = extent i)
    trailer  xxh3-64 (8 bytes) over everything before it in the slot

A slot is written with one pwrite + fdatasync; a torn or stale slot fails its checksum or has
the lower counter, so :func:`pick` always finds the last complete write (or nothing).
Parsers cap counts and sizes before allocating and raise :class:`ActLogError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import xxhash

from common import formats

MAGIC = b"DRAL"
VERSION = 1
HEADER = struct.Struct("<4sHHQII")
DISK = struct.Struct("<HHIQ")
TRAILER = struct.Struct("<Q")
assert HEADER.size == 24
assert DISK.size == 16
assert TRAILER.size == 8

MAX_DISKS = 256
MAX_BITS = 1 << 26  # 64 Mi extents per disk (64 TiB at 1 MiB extents)
ALIGN = 4096


class ActLogError(ValueError):
    """A slot that is not a complete, valid activity-log record."""


class ActLogTooNew(ActLogError, formats.FormatTooNew):
    """A slot of a newer format version: :func:`pick` raises it rather than skipping the slot."""


@dataclass(frozen=True)
class DiskBits:
    index: int
    size_bytes: int
    nbits: int
    bits: bytes


@dataclass(frozen=True)
class Snapshot:
    counter: int
    extent_bytes: int
    disks: tuple[DiskBits, ...]

    def disk(self, index: int) -> DiskBits | None:
        return next((d for d in self.disks if d.index == index), None)


def encoded_size(disks: list[tuple[int, int]], extent_bytes: int) -> int:
    """Bytes one slot needs for disks given as (index, size_bytes)."""
    body = sum(DISK.size + _ceil(_ceil(size, extent_bytes), 8) for _, size in disks)
    return HEADER.size + body + TRAILER.size


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def slot_size(disks: list[tuple[int, int]], extent_bytes: int) -> int:
    need = encoded_size(disks, extent_bytes)
    return -(-need // ALIGN) * ALIGN


def encode(snapshot: Snapshot) -> bytes:
    if not 0 < snapshot.extent_bytes < 1 << 32:
        raise ActLogError("extent_bytes out of range")
    if len(snapshot.disks) > MAX_DISKS:
        raise ActLogError("too many disks")
    parts = [HEADER.pack(MAGIC, VERSION, len(snapshot.disks), snapshot.counter, snapshot.extent_bytes, 0)]
    for d in snapshot.disks:
        if len(d.bits) != -(-d.nbits // 8):
            raise ActLogError(f"disk {d.index}: {len(d.bits)} bitmap bytes for {d.nbits} extents")
        parts.append(DISK.pack(d.index, 0, d.nbits, d.size_bytes))
        parts.append(bytes(d.bits))
    body = b"".join(parts)
    return body + TRAILER.pack(xxhash.xxh3_64_intdigest(body))


def decode(buf: bytes | memoryview) -> Snapshot:
    """Parse one slot (trailing padding allowed)."""
    view = memoryview(buf)
    if len(view) < HEADER.size + TRAILER.size:
        raise ActLogError("slot too short")
    magic, version, ndisks, counter, extent_bytes, reserved = HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise ActLogError("bad magic")
    if version > VERSION:  # a newer drlab's slot (the header is never torn): refused, not skipped
        raise ActLogTooNew(formats.message("activity log", version, VERSION))
    if version != VERSION or reserved or not extent_bytes or ndisks > MAX_DISKS:
        raise ActLogError("bad header")
    pos = HEADER.size
    disks = []
    for _ in range(ndisks):
        if pos + DISK.size > len(view):
            raise ActLogError("truncated disk entry")
        index, res, nbits, size_bytes = DISK.unpack_from(view, pos)
        nbytes = -(-nbits // 8)
        if res or nbits > MAX_BITS or nbits != -(-size_bytes // extent_bytes):
            raise ActLogError("bad disk entry")
        pos += DISK.size
        if pos + nbytes + TRAILER.size > len(view):
            raise ActLogError("truncated bitmap")
        disks.append(DiskBits(index, size_bytes, nbits, bytes(view[pos:pos + nbytes])))
        pos += nbytes
    (digest,) = TRAILER.unpack_from(view, pos)
    if digest != xxhash.xxh3_64_intdigest(view[:pos]):
        raise ActLogError("checksum mismatch")
    return Snapshot(counter, extent_bytes, tuple(disks))


def pick(slots: list[bytes]) -> Snapshot | None:
    """The valid slot with the highest counter, or None when no slot is valid; a slot of a newer
    format version raises :class:`common.formats.FormatTooNew`."""
    best: Snapshot | None = None
    for raw in slots:
        try:
            snap = decode(raw)
        except ActLogTooNew:
            raise
        except ActLogError:
            continue
        if best is None or snap.counter > best.counter:
            best = snap
    return best
