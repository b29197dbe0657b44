from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from psbatches import make_batch
from psfakemt import FakeMT, identities

from common import errors, tls
from common.http import ApiClient
from ps.cache import BatchCache
from ps.state import Registry
from ps.uploader import Clients, SealerBook, Uploaders

DISK = "ab" * 16
KEY = os.urandom(32)


@dataclass
class Rig:
    mt: FakeMT
    url: str
    registry: Registry
    cache: BatchCache
    uploaders: Uploaders
    sealers: SealerBook

    def settings(self, gen: int = 1, url: str | None = None) -> dict[str, object]:
        return {"disks": [{"disk_id": DISK, "machine_id": "33" * 16, "generation": gen, "size_bytes": 1 << 20,
                           "mt_url": url or self.url, "mt_control_url": url or self.url, "key_epoch": 1,
                           "key_b64": base64.b64encode(KEY).decode()}]}

    async def serve(self, gen: int = 1, url: str | None = None) -> None:
        self.registry.apply_document(self.settings(gen, url))
        await self.uploaders.sync()

    async def put(self, gen: int, seq: int, **kw: object) -> bytes:
        data = make_batch(DISK, gen, seq, **kw)  # type: ignore[arg-type]
        await self.cache.store(DISK, gen, seq, data)
        self.registry.progress_of(DISK).stored(gen, seq)
        self.uploaders.notify(DISK)
        return data


async def wait_until(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    mt_files, ps_files, ps_id = identities(tmp_path)
    mt = FakeMT(KEY)
    url = await mt.start(mt_files)
    pool = ThreadPoolExecutor(2)
    registry = Registry()
    cache = BatchCache(tmp_path / "cache", 1 << 30, pool)
    cache.load()
    clients = Clients(lambda u: ApiClient(u, tls.client_context(ps_files), timeout_s=5.0))
    sealers = SealerBook(bytes.fromhex(ps_id))
    uploaders = Uploaders(registry, cache, sealers, clients, pool, window=3, max_backoff_s=0.2,
                          poll_interval_s=0.1)
    try:
        yield Rig(mt, url, registry, cache, uploaders, sealers)
    finally:
        await uploaders.stop()
        await clients.close()
        await mt.stop()
        pool.shutdown()


async def test_uploads_every_batch_then_deletes_it(rig: Rig) -> None:
    await rig.serve()
    sent = {seq: await rig.put(1, seq, data=os.urandom(8192)) for seq in range(1, 21)}
    await wait_until(lambda: len(rig.mt.received) == 20 and rig.cache.backlog(DISK) == (0, 0))
    assert {seq: rig.mt.received[(1, seq)] for seq in sent} == sent
    assert not list((rig.cache.root / DISK).iterdir())
    progress = rig.registry.progress_of(DISK)
    assert progress.mt_of(1) == (20, 20) and progress.uploaded_batches == 20
    assert [sid for sid, _ in rig.mt.senders] == [bytes.fromhex("22" * 16)]


async def test_window_bounds_batches_in_flight(rig: Rig) -> None:
    rig.mt.delay_s = 0.05
    await rig.serve()
    for seq in range(1, 13):
        await rig.put(1, seq)
    await wait_until(lambda: rig.cache.backlog(DISK) == (0, 0))
    assert rig.mt.max_concurrent == 3


async def test_applied_progress_comes_from_status_polls(rig: Rig) -> None:
    rig.mt.applied_lag = 2
    await rig.serve()
    for seq in (1, 2, 3):
        await rig.put(1, seq)
    await wait_until(lambda: rig.registry.progress_of(DISK).mt_of(1) == (3, 1))
    rig.mt.applied_lag = 0
    await wait_until(lambda: rig.registry.progress_of(DISK).mt_of(1) == (3, 3))
    assert rig.mt.status_calls >= 1
    calls = rig.mt.status_calls
    await asyncio.sleep(0.4)
    assert rig.mt.status_calls == calls, "no polling once everything is applied"


async def test_retriable_errors_are_retried_without_skipping(rig: Rig) -> None:
    rig.mt.refuse = [errors.Unavailable("busy"), errors.Throttled("full", retry_after_s=0.1),
                     errors.Unavailable("busy")]
    await rig.serve()
    for seq in (1, 2, 3, 4):
        await rig.put(1, seq)
    await wait_until(lambda: rig.cache.backlog(DISK) == (0, 0))
    assert sorted(rig.mt.received) == [(1, s) for s in (1, 2, 3, 4)]
    assert rig.mt.requests >= 7


async def test_refused_batch_is_kept_and_retried(rig: Rig) -> None:
    rig.mt.refuse = [errors.Forbidden("not yours"), errors.ChecksumMismatch("other"), errors.NotFound("who")]
    await rig.serve()
    await rig.put(1, 1)
    await wait_until(lambda: rig.mt.requests >= 2)
    assert rig.cache.backlog(DISK)[0] == 1 and rig.mt.received == {}
    await wait_until(lambda: (1, 1) in rig.mt.received and rig.cache.backlog(DISK) == (0, 0))


async def test_stale_generation_drops_the_batch(rig: Rig) -> None:
    rig.mt.generation = 2
    await rig.serve()
    await rig.put(1, 1)
    await wait_until(lambda: rig.cache.backlog(DISK) == (0, 0))
    assert rig.mt.received == {}
    await rig.put(2, 1)
    await wait_until(lambda: (2, 1) in rig.mt.received)


async def test_settings_generation_supersedes_cached_batches(rig: Rig) -> None:
    await rig.serve(url="https://127.0.0.1:9")  # nothing listens there: uploads keep retrying
    await rig.put(1, 1)
    await rig.put(1, 2)
    await asyncio.sleep(0.3)
    assert rig.cache.backlog(DISK)[0] == 2
    await rig.put(2, 1)
    await rig.serve(gen=2)
    await wait_until(lambda: rig.cache.backlog(DISK) == (0, 0))
    assert list(rig.mt.received) == [(2, 1)]


async def test_new_mt_url_from_settings(rig: Rig, tmp_path: Path) -> None:
    await rig.serve(url="https://127.0.0.1:9")
    await rig.put(1, 1)
    await asyncio.sleep(0.3)
    assert rig.mt.received == {}
    await rig.serve()
    await wait_until(lambda: (1, 1) in rig.mt.received and rig.cache.backlog(DISK) == (0, 0))


async def test_removed_disk_stops_its_pipeline_and_keeps_the_cache(rig: Rig) -> None:
    await rig.serve(url="https://127.0.0.1:9")
    await rig.put(1, 1)
    rig.registry.apply_document({"disks": []})
    await rig.uploaders.sync()
    assert DISK not in rig.uploaders.pipelines
    assert rig.cache.backlog(DISK)[0] == 1
    await rig.serve()
    await wait_until(lambda: (1, 1) in rig.mt.received)


async def test_stop_is_never_lost_when_a_wake_races_it(rig: Rig) -> None:
    rig.mt.applied_lag = 1  # keeps the pipeline busy: it waits with a timeout (the racy path)
    await rig.serve()
    await rig.put(1, 1)
    await wait_until(lambda: (1, 1) in rig.mt.received)
    pipeline = rig.uploaders.pipelines[DISK]
    for turn in range(40):
        await asyncio.sleep(0.005)
        pipeline.wake()
        for _ in range(turn % 4):
            await asyncio.sleep(0)
        async with asyncio.timeout(2.0):
            await pipeline.stop()
        assert pipeline._task is not None and pipeline._task.done()
        pipeline.start()


@pytest.mark.timeout(60)
async def test_a_cached_batch_that_fails_its_checksum_is_dropped_not_sent(rig: Rig) -> None:
    """Bit rot in a cache file (same size, so loading keeps it): the upload reads it, sees the
    checksum fail, drops it without sending and without remembering it, so the agent's re-send
    (agent/psloss.py sees the gap) is stored again; the batches around it go on."""
    sent = {}
    for seq in (1, 2, 3):
        sent[seq] = make_batch(DISK, 1, seq, data=os.urandom(8192))
        await rig.cache.store(DISK, 1, seq, sent[seq])
    path = rig.cache.path(DISK, 1, 2)
    raw = bytearray(path.read_bytes())
    raw[200] ^= 0x40
    path.write_bytes(bytes(raw))
    rig.cache.recent.pop((DISK, 1, 2))  # as after a restart: read from the file, not the memory copy
    await rig.serve()
    for seq in (1, 2, 3):
        rig.registry.progress_of(DISK).stored(1, seq)
    rig.uploaders.notify(DISK)
    await wait_until(lambda: len(rig.mt.received) == 2 and rig.cache.backlog(DISK) == (0, 0))
    assert set(rig.mt.received) == {(1, 1), (1, 3)}
    assert await rig.cache.store(DISK, 1, 2, sent[2]) is True


async def test_a_batch_stored_lately_is_uploaded_from_memory_and_forgotten_when_deleted(rig: Rig) -> None:
    """The cache keeps the newest stored batches in memory (common/recent.py): their upload does
    not read the file back — here the file is even gone — and the copy goes with the batch."""
    sent = {seq: make_batch(DISK, 1, seq, data=os.urandom(8192)) for seq in (1, 2)}
    for seq, data in sent.items():
        await rig.cache.store(DISK, 1, seq, data)
    rig.cache.path(DISK, 1, 1).unlink()
    assert len(rig.cache.recent) == 2
    await rig.serve()
    for seq in sent:
        rig.registry.progress_of(DISK).stored(1, seq)
    rig.uploaders.notify(DISK)
    await wait_until(lambda: len(rig.mt.received) == 2 and rig.cache.backlog(DISK) == (0, 0))
    assert set(rig.mt.received) == {(1, 1), (1, 2)}
    assert len(rig.cache.recent) == 0 and rig.cache.recent.bytes == 0 and rig.cache.recent.hits == 2
