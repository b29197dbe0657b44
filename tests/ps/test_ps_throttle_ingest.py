"""Throttling at the PS data app over real HTTPS, in-process: the ingest app in front of a small
cache, and the real upload pipelines draining it into a stand-in MT.

- under 20 % free, a NEW batch gets 507 ``throttled`` + Retry-After; a re-send of a cached batch
  still gets 200; the throttle lifts by itself once the uploader drained the cache to 25 % free;
- a disk whose backlog passes its limit is throttled alone;
- the filesystem's real free space counts, not only the configured limit.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from psbatches import make_batch
from psfakemt import FakeMT

from common import tls
from common.config import PSConfig
from common.http import ApiClient
from ps import cache as cache_module
from ps.cache import BatchCache
from ps.ingest import IngestContext, build_app
from ps.state import Registry
from ps.throttle import ThrottlePolicy
from ps.uploader import Clients, SealerBook, Uploaders

A, B = "ab" * 16, "cd" * 16
MACHINE, PS_ID = "a1" * 16, "22" * 16
KEY = os.urandom(32)
BATCH = len(make_batch(A, 1, 1))  # every batch of these tests has this size


@dataclass
class Rig:
    url: str
    ctx: ssl.SSLContext
    cache: BatchCache
    uploaders: Uploaders
    mt: FakeMT
    fs_free: list[int]

    async def put(self, seq: int, disk: str = A, data: bytes | None = None) -> tuple[int, Any, Any]:
        body = make_batch(disk, 1, seq) if data is None else data
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ctx)) as session:
            async with session.put(f"{self.url}/v1/disks/{disk}/batches/1/{seq}", data=body) as resp:
                return resp.status, await resp.json(content_type=None), resp.headers

    async def status(self, disk: str = A) -> dict[str, Any]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ctx)) as session:
            async with session.get(f"{self.url}/v1/disks/{disk}/status") as resp:
                return dict(await resp.json())


def issue(ca: tuple[bytes, bytes], tmp: Path, name: str, cid: str, role: str) -> tls.IdentityFiles:
    files = tls.IdentityFiles(tmp / name)
    tls.issue_local(*ca, files, component_id=cid, role=role, hosts=["127.0.0.1"], meta={"component_id": cid})
    return files


async def wait_until(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout_s} s"
        await asyncio.sleep(0.02)


RigFactory = Callable[..., Any]


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[RigFactory]:
    """``await make_rig(cache_batches, **policy)``: a PS data app over HTTPS whose cache holds
    ``cache_batches`` batches, serving disks A and B of one machine; the upload pipelines to the
    stand-in MT start only when the test calls ``rig.uploaders.sync()`` (the MT is out of reach
    until then)."""
    stack: list[Callable[[], Any]] = []

    async def make(cache_batches: int, **policy: Any) -> Rig:
        ca = tls.make_ca()
        mt_files, ps_files = issue(ca, tmp_path, "mt", "11" * 16, "mt"), issue(ca, tmp_path, "ps", PS_ID, "ps")
        agent = tls.client_context(issue(ca, tmp_path, "agent", MACHINE, "agent"))
        mt = FakeMT(KEY)
        mt_url = await mt.start(mt_files)
        stack.append(mt.stop)
        registry = Registry()
        registry.apply_document({"disks": [
            {"disk_id": d, "machine_id": MACHINE, "generation": 1, "size_bytes": 1 << 20, "mt_url": mt_url,
             "mt_control_url": mt_url, "key_epoch": 1, "key_b64": base64.b64encode(KEY).decode()} for d in (A, B)]})
        pool = ThreadPoolExecutor(2)
        stack.append(lambda: asyncio.to_thread(pool.shutdown))
        fs_free = [1 << 50]
        cache = BatchCache(tmp_path / "cache", cache_batches * BATCH, pool, policy=ThrottlePolicy(**policy),
                           fs_free=lambda: fs_free[0], fs_check_s=0.0)
        cache.load()
        clients = Clients(lambda u: ApiClient(u, tls.client_context(ps_files), timeout_s=5.0))
        stack.append(clients.close)
        uploaders = Uploaders(registry, cache, SealerBook(bytes.fromhex(PS_ID)), clients, pool, window=2,
                              max_backoff_s=0.2, poll_interval_s=0.1)
        stack.append(uploaders.stop)
        cfg = PSConfig(data_dir=tmp_path, max_batch_bytes=64 * 1024)
        runner = web.AppRunner(build_app(IngestContext(cfg, registry, cache, pool, uploaders.notify)))
        await runner.setup()
        stack.append(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context(ps_files))
        await site.start()
        return Rig(f"https://127.0.0.1:{runner.addresses[0][1]}", agent, cache, uploaders, mt, fs_free)

    try:
        yield make
    finally:
        for close in reversed(stack):
            await close()


@pytest.mark.timeout(30)
async def test_507_with_retry_after_under_20_pct_free_resend_200_and_clears_after_drain(
        make_rig: RigFactory) -> None:
    with structlog.testing.capture_logs() as events:
        rig: Rig = await make_rig(10)  # 10 batches fit; 8 cached = 20 % free, 9 cached = 10 % free
        for seq in range(1, 10):
            status, _, _ = await rig.put(seq)
            assert status == 201, seq  # the 9th is still admitted at exactly 20 % free
        assert rig.cache.throttle.cache.active
        status, body, headers = await rig.put(10)
        assert status == 507 and body["code"] == "throttled" and body["message"].startswith("cache_free")
        assert headers["Retry-After"] == "1"
        assert rig.cache.backlog(A) == (9, 9 * BATCH), "nothing is cached for a throttled batch"
        # a re-send of a batch the PS already holds is still answered 200, and a conflict still 409
        status, body, _ = await rig.put(5)
        assert (status, body["ps_durable"]) == (200, 5)
        assert (await rig.put(5, data=make_batch(A, 1, 5, data=b"other")))[0] == 409
        assert (await rig.put(1, disk=B))[0] == 507, "the cache-wide throttle holds for every disk"
        status_a = await rig.status()
        assert (status_a["throttled"], status_a["throttle_reason"]) == (True, "cache_free")
        m = rig.cache.throttle_metrics()
        assert (m["active"], m["reason"], m["refusals"], m["refusals_total"]) == (True, "cache_free", 2, 2)
        assert m["since_ns"] > 0 and m["free_pct"] == pytest.approx(10.0)

        await rig.uploaders.sync()  # the MT is reachable again: the pipelines drain the cache
        await wait_until(lambda: not rig.cache.throttle.cache.active, 10, "the throttle lifted")
        assert rig.cache.throttle_metrics()["free_pct"] >= 25.0
        assert (await rig.put(10))[0] == 201
        await wait_until(lambda: rig.cache.backlog(A) == (0, 0), 10, "the cache drained")
        assert sorted(rig.mt.received) == [(1, s) for s in range(1, 11)]
    started = [e for e in events if e["event"] == "throttle_started"]
    stopped = [e for e in events if e["event"] == "throttle_stopped"]
    assert [(e["scope"], e["reason"]) for e in started] == [("cache", "cache_free")]
    assert [(e["scope"], e["reason"]) for e in stopped] == [("cache", "cache_free")]
    assert stopped[0]["free_pct"] >= 25.0 and stopped[0]["lasted_s"] > 0
    refused = [e for e in events if e["event"] == "request_refused" and e["status"] == 507]
    assert len(refused) == 2


@pytest.mark.timeout(30)
async def test_hysteresis_holds_the_throttle_from_20_until_25_pct_free(make_rig: RigFactory) -> None:
    rig: Rig = await make_rig(20)
    for seq in range(1, 18):  # 17 of 20 cached: 15 % free
        assert (await rig.put(seq))[0] == 201
    assert (await rig.put(18))[0] == 507
    await rig.cache.delete(A, 1, 1)  # what the uploader does after the MT's receipt: 20 % free ...
    assert (await rig.put(18))[0] == 507, "... no longer under 20 %, but not yet 25 % free"
    await rig.cache.delete(A, 1, 2)  # 25 % free: lifted
    assert (await rig.put(18))[0] == 201
    m = rig.cache.throttle_metrics()
    assert not m["active"] and m["refusals"] == 2 and m["since_ns"] > 0


@pytest.mark.timeout(30)
async def test_disk_backlog_over_its_limit_throttles_that_disk_only(make_rig: RigFactory) -> None:
    rig: Rig = await make_rig(100, disk_backlog_max_bytes=4 * BATCH)
    for seq in range(1, 6):  # the 5th takes A's backlog over 4 batches
        assert (await rig.put(seq))[0] == 201
    status, body, headers = await rig.put(6)
    assert status == 507 and body["message"].startswith("disk_backlog") and headers["Retry-After"] == "1"
    assert (await rig.put(1, disk=B))[0] == 201, "another disk is not throttled"
    assert (await rig.put(3))[0] == 200, "a re-send is"
    st = await rig.status()
    assert (st["throttled"], st["throttle_reason"]) == (True, "disk_backlog")
    assert rig.cache.throttle.metrics()["throttled_disks"] == [A] and not rig.cache.throttle.cache.active
    assert rig.cache.throttle.disk_metrics(A)["refusals"] == 1
    await rig.uploaders.sync()
    await wait_until(lambda: not rig.cache.throttle.disk_metrics(A)["active"], 10, "disk A's throttle lifted")
    assert (await rig.put(6))[0] == 201


@pytest.mark.timeout(30)
async def test_a_full_filesystem_throttles_a_cache_far_under_its_limit(make_rig: RigFactory) -> None:
    rig: Rig = await make_rig(1000)
    assert (await rig.put(1))[0] == 201
    rig.fs_free[0] = BATCH // 8  # the filesystem fills up for other reasons: 11 % of (used + free)
    status, body, _ = await rig.put(2)
    assert status == 507 and body["message"].startswith("cache_free")
    rig.fs_free[0] = BATCH // 2  # 33 % free: the throttle lifts, but the batch does not fit
    status, body, _ = await rig.put(2)
    assert status == 507 and body["message"].startswith("cache_full")
    assert rig.cache.backlog(A) == (1, BATCH) and rig.cache.refused_total == 2
    rig.fs_free[0] = 1 << 40
    assert (await rig.put(2))[0] == 201


@pytest.mark.timeout(30)
async def test_enospc_while_writing_is_a_507_and_leaves_nothing(make_rig: RigFactory,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rig: Rig = await make_rig(1000)

    def no_space(*_args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "write_durable", no_space)
    status, body, headers = await rig.put(1)
    assert status == 507 and body["message"].startswith("cache_full") and headers["Retry-After"] == "1"
    assert rig.cache.backlog(A) == (0, 0) and rig.cache.sample().used_bytes == 0
    monkeypatch.undo()
    assert (await rig.put(1))[0] == 201


@pytest.mark.timeout(30)
async def test_a_batch_larger_than_the_whole_cache_is_507_and_says_so(make_rig: RigFactory) -> None:
    rig: Rig = await make_rig(2)
    big = make_batch(A, 1, 1, data=b"y" * (3 * BATCH))
    status, body, headers = await rig.put(1, data=big)
    assert status == 507 and body["message"].startswith("cache_full")
    assert "larger than the whole cache" in body["message"]
    assert headers["Retry-After"] == "1" and rig.cache.backlog(A) == (0, 0)
    rig.cache.max_bytes = 10 * BATCH  # the cache grows (a PS restarted with a larger limit)
    assert (await rig.put(1, data=big))[0] == 201
