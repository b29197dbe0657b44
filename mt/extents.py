"""An extent map (pure): disjoint, sorted disk ranges, each mapped to a place in a source — what a
failover view (mt/view.py) reads instead of the replica: undo records in journal segments, or its
overlay."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator

Piece = tuple[int, int, int | None, int]  # (start, end, source or None for a gap, offset in the source)


class ExtentMap:
    """Disjoint, sorted intervals ``[start, end) -> (source, offset in the source)``."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._items: list[tuple[int, int, int, int]] = []

    def __len__(self) -> int:
        return len(self._items)

    def _span(self, start: int, end: int) -> tuple[int, int]:
        """Index range of the items overlapping ``[start, end)``."""
        lo = bisect_right(self._starts, start) - 1
        if lo < 0 or self._items[lo][1] <= start:
            lo += 1
        return lo, max(lo, bisect_left(self._starts, end))

    def _splice(self, lo: int, hi: int, items: list[tuple[int, int, int, int]]) -> None:
        self._items[lo:hi] = items
        self._starts[lo:hi] = [i[0] for i in items]

    def put(self, start: int, end: int, src: int, src_off: int) -> None:
        """Map ``[start, end)`` to ``src`` at ``src_off``, replacing what was there."""
        if start >= end:
            return
        lo, hi = self._span(start, end)
        new: list[tuple[int, int, int, int]] = []
        if lo < hi and self._items[lo][0] < start:
            s, _, sr, so = self._items[lo]
            new.append((s, start, sr, so))
        new.append((start, end, src, src_off))
        if lo < hi and self._items[hi - 1][1] > end:
            s, e, sr, so = self._items[hi - 1]
            new.append((end, e, sr, so + end - s))
        self._splice(lo, hi, new)

    def fill(self, start: int, end: int, src: int, src_off: int) -> None:
        """Map only the parts of ``[start, end)`` nothing maps yet (older entries win)."""
        if start >= end:
            return
        lo, hi = self._span(start, end)
        new: list[tuple[int, int, int, int]] = []
        for s, e, sr, _ in self.lookup(start, end):
            if sr is None:
                new.append((s, e, src, src_off + s - start))
        if not new:
            return
        merged = sorted(self._items[lo:hi] + new)
        self._splice(lo, hi, merged)

    def lookup(self, start: int, end: int) -> Iterator[Piece]:
        """Pieces covering ``[start, end)`` in order; gaps have source None."""
        lo, hi = self._span(start, end)
        pos = start
        for s, e, src, so in self._items[lo:hi]:
            if s > pos:
                yield pos, s, None, pos
            a = max(s, pos)
            b = min(e, end)
            yield a, b, src, so + a - s
            pos = b
        if pos < end:
            yield pos, end, None, pos

    def items(self) -> list[tuple[int, int, int, int]]:
        """(start, end, source, offset in the source) of every entry, in order."""
        return list(self._items)

    def extents(self) -> list[tuple[int, int]]:
        return [(s, e) for s, e, _, _ in self._items]
