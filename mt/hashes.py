"""Block hashes of a replica range (pure: reads come through a ``read(offset, length)`` callable).

Rules (shared with the agent, docs/PROTOCOL.md "Block hashes"):
- a range ``[offset, offset + length)`` is cut into pieces of ``block`` bytes from ``offset``;
  the last piece may be short; piece i is ``[offset + i*block, min(offset + length, ...))``;
- the hash of a piece is xxh3-128 of its bytes, sent as 32 lowercase hex characters;
- ``block`` is a power of two in [4 KiB, 64 MiB]; the range lies inside the disk;
- one answer covers at most ``max_bytes`` (and at most MAX_BLOCKS pieces): a longer request is
  answered for its first whole pieces only, and the answer says which ``length`` it covers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import xxhash

from common import errors
from common.http import query_u64

MIN_BLOCK = 4096
MAX_BLOCK = 64 << 20
MAX_BLOCKS = 4096
PARAMS = frozenset({"generation", "offset", "length", "block"})

Read = Callable[[int, int], bytes]


@dataclass(frozen=True)
class HashQuery:
    generation: int
    offset: int
    length: int  # what the answer covers (the request's length, capped)
    block: int

    @property
    def count(self) -> int:
        return blocks_in(self.length, self.block)


def block_hash(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def blocks_in(length: int, block: int) -> int:
    return -(-length // block)


def pieces(offset: int, length: int, block: int) -> list[tuple[int, int]]:
    """The (offset, length) pieces a range is hashed in."""
    end = offset + length
    return [(pos, min(block, end - pos)) for pos in range(offset, end, block)]


def hash_range(read: Read, offset: int, length: int, block: int) -> list[str]:
    return [block_hash(read(pos, n)) for pos, n in pieces(offset, length, block)]


def parse_query(query: Mapping[str, str], size_bytes: int, max_bytes: int) -> HashQuery:
    """Validate ``generation, offset, length, block`` against the disk size and cap the length."""
    unknown = sorted(set(query) - PARAMS)
    if unknown:
        raise errors.BadRequest(f"unknown query parameters: {', '.join(k[:32] for k in unknown[:4])}")
    generation = query_u64(query, "generation", 1)
    offset = query_u64(query, "offset", 0)
    length = query_u64(query, "length", 1)
    block = query_u64(query, "block", 1)
    if block & (block - 1) or not MIN_BLOCK <= block <= MAX_BLOCK:
        raise errors.BadRequest(f"block must be a power of two in [{MIN_BLOCK}, {MAX_BLOCK}]")
    if offset >= size_bytes or length > size_bytes - offset:
        raise errors.BadRequest(f"range [{offset}, +{length}) is outside the disk ({size_bytes} bytes)")
    return HashQuery(generation, offset, cap_length(length, block, max_bytes), block)


def cap_length(length: int, block: int, max_bytes: int) -> int:
    """The part of a request one answer covers: whole pieces up to the caps (at least one)."""
    most = max(1, min(MAX_BLOCKS, max_bytes // block)) * block
    return length if length <= most else most

