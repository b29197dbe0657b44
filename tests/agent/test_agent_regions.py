"""Dirty-region bookkeeping: merged extents and the block bitmap, checked against plain sets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.regions import Bitmap, merge, total

extents = st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 700)), max_size=30)


def covered(exts: list[tuple[int, int]]) -> set[int]:
    return {b for off, n in exts for b in range(off, off + n)}


@settings(max_examples=200, deadline=None)
@given(extents)
def test_merge_covers_the_same_bytes_sorted_and_disjoint(exts: list[tuple[int, int]]) -> None:
    out = merge(exts)
    assert covered(out) == covered(exts)
    assert all(a[0] + a[1] < b[0] for a, b in zip(out, out[1:], strict=False))
    assert total(out) == len(covered(exts))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 20_000), st.sampled_from([512, 4096]), extents, extents)
def test_bitmap_set_clear_and_take(size: int, block: int, setting: list[tuple[int, int]],
                                   clearing: list[tuple[int, int]]) -> None:
    bm = Bitmap(size, block)
    want: set[int] = set()
    for off, n in setting:
        bm.set_range(off, n)
        want |= {b for b in range(off // block, -(-(off + n) // block)) if b < bm.nbits} if n else set()
    for off, n in clearing:
        bm.clear_range(off, n)
        want -= {b for b in range(off // block, -(-(off + n) // block))} if n else set()
    assert set(bm.blocks()) == want and len(bm) == len(want)
    assert covered(bm.extents()) == {x for b in want for x in range(b * block, min(size, (b + 1) * block))}
    again = Bitmap.from_bytes(size, block, bm.to_bytes())
    assert set(again.blocks()) == want
    taken: set[int] = set()
    while bm:
        chunk = bm.take(3 * block)
        assert 0 < total(chunk) <= 3 * block
        taken |= covered(chunk)
    assert taken == covered(Bitmap.from_bytes(size, block, again.to_bytes()).extents())


def test_bitmap_refuses_a_wrong_sized_image_and_bad_shapes() -> None:
    with pytest.raises(ValueError):
        Bitmap.from_bytes(100_000, 4096, b"\0")
    with pytest.raises(ValueError):
        Bitmap(100, 0)


def test_set_range_reports_only_newly_set_blocks() -> None:
    bm = Bitmap(1 << 20, 4096)
    assert bm.set_range(0, 8193) == [0, 1, 2]
    assert bm.set_range(4096, 10) == []
    assert bm.any_in(8192, 1) and not bm.any_in(12288, 4096)
