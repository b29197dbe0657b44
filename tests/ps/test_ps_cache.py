from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from psbatches import make_batch

from common import errors
from common.wire import batch as wbatch
from ps.cache import BatchCache, file_name, parse_name

DISK = "ab" * 16
OTHER = "cd" * 16


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def open_cache(root: Path, pool: ThreadPoolExecutor, max_bytes: int = 1 << 30) -> BatchCache:
    cache = BatchCache(root, max_bytes, pool)
    cache.load()
    return cache


def files_of(root: Path, disk: str = DISK) -> list[str]:
    d = root / disk
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_names_round_trip() -> None:
    assert file_name(3, 17) == "00000003-000000000017.batch"
    assert parse_name(file_name(3, 17)) == (3, 17)
    assert parse_name("00000003-000000000017.batch.1234.tmp") is None
    assert parse_name("junk.batch") is None


async def test_store_is_durable_and_exact(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    cache = open_cache(tmp_path, pool)
    data = make_batch(DISK, 1, 1)
    assert await cache.store(DISK, 1, 1, data) is True
    assert (tmp_path / DISK / file_name(1, 1)).read_bytes() == data
    assert files_of(tmp_path) == [file_name(1, 1)]
    assert cache.used_bytes == len(data)
    assert cache.backlog(DISK) == (1, len(data))
    entry = cache.lookup(DISK, 1, 1)
    assert entry is not None and entry.checksum == wbatch.checksum(data)
    assert cache.read(DISK, entry) == data


async def test_same_batch_again_is_a_no_op(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    cache = open_cache(tmp_path, pool)
    data = make_batch(DISK, 1, 1)
    assert await cache.store(DISK, 1, 1, data) is True
    mtime = (tmp_path / DISK / file_name(1, 1)).stat().st_mtime_ns
    assert await cache.store(DISK, 1, 1, data) is False
    assert (tmp_path / DISK / file_name(1, 1)).stat().st_mtime_ns == mtime
    assert cache.used_bytes == len(data)


async def test_same_identity_other_checksum_is_refused(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    cache = open_cache(tmp_path, pool)
    first = make_batch(DISK, 1, 1, data=b"a" * 512)
    await cache.store(DISK, 1, 1, first)
    with pytest.raises(errors.ChecksumMismatch):
        await cache.store(DISK, 1, 1, make_batch(DISK, 1, 1, data=b"b" * 512))
    assert (tmp_path / DISK / file_name(1, 1)).read_bytes() == first
    assert files_of(tmp_path) == [file_name(1, 1)]


async def test_identity_remembered_after_delete(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    cache = open_cache(tmp_path, pool)
    data = make_batch(DISK, 1, 1)
    await cache.store(DISK, 1, 1, data)
    await cache.delete(DISK, 1, 1)
    assert files_of(tmp_path) == [] and cache.used_bytes == 0
    assert await cache.store(DISK, 1, 1, data) is False
    assert files_of(tmp_path) == []
    with pytest.raises(errors.ChecksumMismatch):
        await cache.store(DISK, 1, 1, make_batch(DISK, 1, 1, data=b"z" * 10))


async def test_concurrent_stores_of_one_identity(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    cache = open_cache(tmp_path, pool)
    data = make_batch(DISK, 2, 5, data=os.urandom(256 * 1024))
    results = await asyncio.gather(*(cache.store(DISK, 2, 5, data) for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    assert files_of(tmp_path) == [file_name(2, 5)]


async def test_pending_in_generation_then_seq_order(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    cache = open_cache(tmp_path, pool)
    for gen, seq in [(2, 1), (1, 10), (1, 2), (2, 3), (1, 9)]:
        await cache.store(DISK, gen, seq, make_batch(DISK, gen, seq))
    await cache.store(OTHER, 1, 1, make_batch(OTHER, 1, 1))
    assert [(e.gen, e.seq) for e in cache.pending(DISK)] == [(1, 2), (1, 9), (1, 10), (2, 1), (2, 3)]
    await cache.delete(DISK, 1, 9)
    assert [(e.gen, e.seq) for e in cache.pending(DISK)] == [(1, 2), (1, 10), (2, 1), (2, 3)]
    assert cache.disks() == sorted([DISK, OTHER])


async def test_full_cache_throttles_and_writes_nothing(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    one = make_batch(DISK, 1, 1)
    cache = open_cache(tmp_path, pool, max_bytes=len(one) + 100)
    await cache.store(DISK, 1, 1, one)
    with pytest.raises(errors.Throttled) as info:
        await cache.store(DISK, 1, 2, make_batch(DISK, 1, 2))
    assert info.value.retriable and info.value.retry_after_s is not None and info.value.retry_after_s > 0
    assert files_of(tmp_path) == [file_name(1, 1)]
    await cache.delete(DISK, 1, 1)
    assert await cache.store(DISK, 1, 2, make_batch(DISK, 1, 2)) is True
    assert 0.0 <= cache.free_fraction < 0.1


async def test_restart_rebuilds_index_and_removes_tmp(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    cache = open_cache(tmp_path, pool)
    batches = {(1, s): make_batch(DISK, 1, s, data=bytes([s]) * 1000) for s in (1, 2, 3)}
    for (gen, seq), data in batches.items():
        await cache.store(DISK, gen, seq, data)
    await cache.delete(DISK, 1, 2)
    leftover = tmp_path / DISK / (file_name(1, 4) + ".dead.tmp")
    leftover.write_bytes(b"half a batch")

    again = open_cache(tmp_path, pool)
    assert not leftover.exists()
    assert [(e.gen, e.seq) for e in again.pending(DISK)] == [(1, 1), (1, 3)]
    assert again.used_bytes == len(batches[(1, 1)]) + len(batches[(1, 3)])
    with pytest.raises(errors.ChecksumMismatch):
        await again.store(DISK, 1, 3, make_batch(DISK, 1, 3, data=b"other"))
    assert await again.store(DISK, 1, 3, batches[(1, 3)]) is False


async def test_failed_write_leaves_nothing(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    cache = open_cache(tmp_path, pool)
    (tmp_path / DISK).mkdir()
    (tmp_path / DISK / file_name(1, 1)).mkdir()  # rename onto a directory fails
    with pytest.raises(OSError):
        await cache.store(DISK, 1, 1, make_batch(DISK, 1, 1))
    assert [p.name for p in (tmp_path / DISK).iterdir()] == [file_name(1, 1)]
    assert cache.used_bytes == 0 and cache.lookup(DISK, 1, 1) is None
