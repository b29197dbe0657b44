"""Dirty-region bookkeeping for the tracker and the activity log (pure: no I/O).

- :class:`Bitmap`: one bit per block of a disk; set and clear byte ranges, hand out dirty runs
  in offset order. Bitmap mode keeps its dirty blocks here; the activity log keeps its hot
  extents in one with large blocks.
- :func:`merge`: coalesce (offset, length) extents into sorted, disjoint ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def merge(extents: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint (offset, length) extents covering exactly the same bytes."""
    out: list[list[int]] = []
    for off, length in sorted(e for e in extents if e[1] > 0):
        end = off + length
        if out and off <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([off, end])
    return [(start, end - start) for start, end in out]


def total(extents: Iterable[tuple[int, int]]) -> int:
    return sum(length for _, length in extents)


class Bitmap:
    """A set of blocks of a ``size_bytes`` disk, ``block_bytes`` each (the last may be short)."""

    def __init__(self, size_bytes: int, block_bytes: int) -> None:
        if block_bytes <= 0 or size_bytes < 0:
            raise ValueError("block_bytes must be > 0 and size_bytes >= 0")
        self.size_bytes = size_bytes
        self.block_bytes = block_bytes
        self.nbits = -(-size_bytes // block_bytes)
        self.bits = bytearray(-(-self.nbits // 8))
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def blocks_of(self, offset: int, length: int) -> range:
        if length <= 0:
            return range(0)
        first = max(0, offset) // self.block_bytes
        last = min(self.nbits, -(-(offset + length) // self.block_bytes))
        return range(first, last)

    def test(self, block: int) -> bool:
        return bool(self.bits[block >> 3] & (1 << (block & 7)))

    def set_block(self, block: int) -> bool:
        """Set one block; True if it was clear."""
        byte, mask = block >> 3, 1 << (block & 7)
        if self.bits[byte] & mask:
            return False
        self.bits[byte] |= mask
        self.count += 1
        return True

    def clear_block(self, block: int) -> bool:
        byte, mask = block >> 3, 1 << (block & 7)
        if not self.bits[byte] & mask:
            return False
        self.bits[byte] &= ~mask & 0xFF
        self.count -= 1
        return True

    def set_range(self, offset: int, length: int) -> list[int]:
        """Mark every block touching [offset, offset+length); the blocks that were clear."""
        return [b for b in self.blocks_of(offset, length) if self.set_block(b)]

    def clear_range(self, offset: int, length: int) -> None:
        for b in self.blocks_of(offset, length):
            self.clear_block(b)

    def any_in(self, offset: int, length: int) -> bool:
        return any(self.test(b) for b in self.blocks_of(offset, length))

    def blocks(self) -> Iterator[int]:
        """Set blocks in ascending order (skips clear bytes quickly)."""
        for byte_index, value in enumerate(self.bits):
            if value:
                for bit in range(8):
                    if value & (1 << bit):
                        yield byte_index * 8 + bit

    def extents(self) -> list[tuple[int, int]]:
        """The set blocks as sorted, disjoint byte extents (clipped to the disk)."""
        out: list[tuple[int, int]] = []
        for block in self.blocks():
            off = block * self.block_bytes
            length = min(self.block_bytes, self.size_bytes - off)
            if out and out[-1][0] + out[-1][1] == off:
                out[-1] = (out[-1][0], out[-1][1] + length)
            else:
                out.append((off, length))
        return out

    def take(self, limit_bytes: int) -> list[tuple[int, int]]:
        """Clear and return dirty extents in offset order, about ``limit_bytes`` in all (at least
        one block when any is set)."""
        taken: list[tuple[int, int]] = []
        size = 0
        for block in list(self._first_blocks(limit_bytes)):
            self.clear_block(block)
            off = block * self.block_bytes
            length = min(self.block_bytes, self.size_bytes - off)
            size += length
            if taken and taken[-1][0] + taken[-1][1] == off:
                taken[-1] = (taken[-1][0], taken[-1][1] + length)
            else:
                taken.append((off, length))
        return taken

    def _first_blocks(self, limit_bytes: int) -> Iterator[int]:
        size = 0
        for block in self.blocks():
            if size and size + self.block_bytes > limit_bytes:
                return
            size += self.block_bytes
            yield block

    def to_bytes(self) -> bytes:
        return bytes(self.bits)

    @classmethod
    def from_bytes(cls, size_bytes: int, block_bytes: int, raw: bytes) -> Bitmap:
        bm = cls(size_bytes, block_bytes)
        if len(raw) != len(bm.bits):
            raise ValueError(f"bitmap of {len(raw)} bytes for {bm.nbits} blocks")
        bm.bits[:] = raw
        if bm.nbits % 8:
            bm.bits[-1] &= (1 << (bm.nbits % 8)) - 1
        bm.count = sum(bin(b).count("1") for b in bm.bits)
        return bm
