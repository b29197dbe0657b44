"""The MT back after a restart: the uploads retry at once instead of sleeping out a backoff that
grew while it was down; a backoff the MT asked for (Retry-After) is still honoured."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from psbatches import make_batch
from psfakemt import FakeMT, identities

from common import errors, tls
from common.daemon import bind_socket
from common.http import ApiClient
from ps import uploader
from ps.cache import BatchCache
from ps.state import Registry
from ps.uploader import Clients, SealerBook, Uploaders

DISK = "ef" * 16
KEY = os.urandom(32)
LONG_S = 30.0  # every computed backoff: far beyond the tests' waits


@dataclass
class Rig:
    mt: FakeMT
    port: int
    registry: Registry
    cache: BatchCache
    uploaders: Uploaders
    mt_files: tls.IdentityFiles

    async def put(self, seq: int) -> None:
        await self.cache.store(DISK, 1, seq, make_batch(DISK, 1, seq))
        self.registry.progress_of(DISK).stored(1, seq)
        self.uploaders.notify(DISK)


async def until(pred: object, timeout_s: float) -> float:
    """Seconds until ``pred()`` holds; fails after ``timeout_s``."""
    started = time.monotonic()
    while not pred():  # type: ignore[operator]
        assert time.monotonic() - started < timeout_s, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
async def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    monkeypatch.setattr(uploader, "backoff_s", lambda attempt, max_s=5.0: LONG_S)
    mt_files, ps_files, _ = identities(tmp_path)
    sock = bind_socket("127.0.0.1", 0)
    port = int(sock.getsockname()[1])
    mt = FakeMT(KEY)
    url = await mt.start(mt_files, sock)
    pool = ThreadPoolExecutor(2)
    registry = Registry()
    cache = BatchCache(tmp_path / "cache", 1 << 30, pool)
    cache.load()
    clients = Clients(lambda u: ApiClient(u, tls.client_context(ps_files), timeout_s=2.0))
    uploaders = Uploaders(registry, cache, SealerBook(b"\x22" * 16), clients, pool, window=3,
                          max_backoff_s=LONG_S, poll_interval_s=0.1)
    registry.apply_document({"disks": [{"disk_id": DISK, "machine_id": "33" * 16, "generation": 1,
                                        "size_bytes": 1 << 20, "mt_url": url, "mt_control_url": url,
                                        "key_epoch": 1, "key_b64": base64.b64encode(KEY).decode()}]})
    await uploaders.sync()
    rig = Rig(mt, port, registry, cache, uploaders, mt_files)
    try:
        yield rig
    finally:
        await uploaders.stop()
        await clients.close()
        await rig.mt.stop()
        pool.shutdown()


async def restart_mt(rig: Rig) -> None:
    rig.mt = FakeMT(KEY)
    await rig.mt.start(rig.mt_files, bind_socket("127.0.0.1", rig.port))


async def test_uploads_resume_promptly_once_the_mt_is_back(rig: Rig) -> None:
    await rig.put(1)
    await until(lambda: (1, 1) in rig.mt.received, 5)
    await rig.mt.stop()  # the MT dies: every upload now fails and backs off LONG_S
    for seq in (2, 3, 4, 5):
        await rig.put(seq)
    await asyncio.sleep(0.5)
    assert rig.cache.backlog(DISK)[0] == 4, "nothing is uploaded while the MT is down"
    await restart_mt(rig)
    took = await until(lambda: rig.cache.backlog(DISK) == (0, 0), 10)
    assert took < 3.0, f"the uploads waited {took:.1f} s for the MT that was back"
    assert sorted(rig.mt.received) == [(1, s) for s in (2, 3, 4, 5)]
    pipeline = rig.uploaders.pipelines[DISK]
    assert pipeline._backing_off == 0  # noqa: SLF001 - every backoff ended


async def test_a_retry_after_the_mt_asked_for_is_kept(rig: Rig) -> None:
    rig.mt.refuse = [errors.Throttled("full", retry_after_s=1.5)]
    started = time.monotonic()
    await rig.put(1)  # refused: waits the 1.5 s the MT asked for
    await until(lambda: rig.mt.requests >= 1, 5)
    await rig.put(2)  # taken: the MT answers, yet batch 1 keeps its Retry-After
    await until(lambda: (1, 2) in rig.mt.received, 5)
    await asyncio.sleep(0.5)
    assert (1, 1) not in rig.mt.received
    await until(lambda: (1, 1) in rig.mt.received, 5)
    assert time.monotonic() - started >= 1.4


async def test_a_refused_batch_keeps_its_long_wait(rig: Rig) -> None:
    rig.mt.refuse = [errors.Forbidden("not yours")]
    await rig.put(1)
    await until(lambda: rig.mt.requests >= 1, 5)
    await rig.put(2)
    await until(lambda: (1, 2) in rig.mt.received, 5)
    await asyncio.sleep(0.5)
    assert (1, 1) not in rig.mt.received and rig.mt.requests == 2, "a refusal is not retried early"
