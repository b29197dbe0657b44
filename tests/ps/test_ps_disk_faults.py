"""The PS cache on a really full disk (a small tmpfs) and with torn or garbage cache files.

A full filesystem throttles (507, retriable) before or while writing and leaves no file behind;
space given back lifts it. A cache file cut at any offset or with garbage appended (the length
in its header disagrees with its size) is removed when the cache is loaded and logged; the
whole files around it are kept."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from psbatches import make_batch

from common import errors
from common.wire import batch as wbatch
from ps.cache import BatchCache, file_name
from tests.sizedfs import fill, sized_dir

DISK = "ab" * 16


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / DISK).iterdir())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fs_check_s", [0.0, 3600.0], ids=["sampled", "stale-sample"])
async def test_a_really_full_cache_filesystem_throttles_and_lifts_when_space_returns(
        tmp_path: Path, pool: ThreadPoolExecutor, fs_check_s: float) -> None:
    """``stale-sample``: the free space seen last says it fits, so the write itself hits ENOSPC."""
    with sized_dir(tmp_path, "1m") as root:
        cache = BatchCache(root, 1 << 30, pool, fs_check_s=fs_check_s)
        cache.load()
        first = make_batch(DISK, 1, 1, data=os.urandom(64 << 10))
        assert await cache.store(DISK, 1, 1, first)
        filler = fill(root, 8192)
        for seq in (2, 3):
            why = "cache_full: the cache's filesystem is full" if fs_check_s else "cache_(free|full)"
            with pytest.raises(errors.Throttled, match=why) as info:
                await cache.store(DISK, 1, seq, make_batch(DISK, 1, seq, data=os.urandom(64 << 10)))
            assert info.value.retriable and info.value.retry_after_s
        assert names(root) == [file_name(1, 1)]  # no tmp file, no partial batch
        assert cache.used_bytes == len(first) and cache.refused_total == 2
        filler.unlink()
        cache.fs_free_bytes(fresh=True)
        second = make_batch(DISK, 1, 2, data=os.urandom(64 << 10))
        assert await cache.store(DISK, 1, 2, second)
        again = BatchCache(root, 1 << 30, pool)
        again.load()
        assert [(e.gen, e.seq) for e in again.pending(DISK)] == [(1, 1), (1, 2)]
        assert again.read(DISK, again.pending(DISK)[1]) == second


def cuts(size: int) -> list[int]:
    """Every interesting length of a cut batch file: inside the header, at its end, inside the
    body, inside the trailer."""
    h, t = wbatch.HEADER_SIZE, wbatch.TRAILER_SIZE
    return sorted({0, 1, 5, 6, h - 1, h, h + 1, h + 17, size // 2, size - t - 1, size - t, size - t + 1,
                   size - 2, size - 1})


@pytest.mark.timeout(60)
async def test_torn_or_garbage_cache_files_are_removed_on_load_and_the_rest_kept(
        tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    root = tmp_path / "cache"
    cache = BatchCache(root, 1 << 30, pool)
    cache.load()
    good = {seq: make_batch(DISK, 1, seq, data=bytes([seq]) * 3000) for seq in (1, 3)}
    for seq, data in good.items():
        await cache.store(DISK, 1, seq, data)
    torn = make_batch(DISK, 1, 2, data=b"\x02" * 3000)
    variants = [torn[:n] for n in cuts(len(torn))] + [torn + g for g in (b"\0", os.urandom(100), torn)]
    for variant in variants:
        (root / DISK / file_name(1, 2)).write_bytes(variant)
        again = BatchCache(root, 1 << 30, pool)
        again.load()
        assert names(root) == [file_name(1, 1), file_name(1, 3)], f"{len(variant)} of {len(torn)} bytes"
        assert [(e.gen, e.seq) for e in again.pending(DISK)] == [(1, 1), (1, 3)]
        assert [again.read(DISK, e) for e in again.pending(DISK)] == [good[1], good[3]]
        assert await again.store(DISK, 1, 2, torn) is True  # the agent's re-send is stored again
        await again.delete(DISK, 1, 2)
