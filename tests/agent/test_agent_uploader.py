"""Per-disk uploader against a stand-in PS over real TLS: order, window, retries, stale."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agentfakes import FakePS, issue, wait_until

from agent.uploader import DiskUploader
from common import errors, tls
from common.http import ApiClient
from common.wire import batch as wb

DISK = "cd" * 16


def batch(seq: int, gen: int = 1) -> bytes:
    return wb.encode(wb.ChangeBatch(bytes.fromhex(DISK), gen, seq, seq, seq, seq, seq, wb.Mode.DATA,
                                    wb.Accuracy.EXACT, records=[wb.Record(seq * 512, bytes([seq % 256]) * 512)]))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[FakePS, ApiClient]]:
    ps = FakePS()
    url = await ps.start(issue(tmp_path / "ps", "11" * 16, "ps"))
    client = ApiClient(url, tls.client_context(issue(tmp_path / "agent", "22" * 16, "agent")), timeout_s=5)
    try:
        yield ps, client
    finally:
        await client.close()
        await ps.stop()


def uploader(client: ApiClient, *, window: int = 4, timeout_s: float = 5, gen: int = 1,
             stale: list[int] | None = None) -> DiskUploader:
    def on_stale() -> None:
        if stale is not None:
            stale.append(1)
    up = DiskUploader(client, disk_id=DISK, generation=gen, first_seq=1, window=window, timeout_s=timeout_s,
                      max_backoff_s=0.2, on_change=lambda: None, on_stale=on_stale)
    up.start()
    return up


async def test_batches_are_delivered_and_bytes_dropped_after_ack(world: tuple[FakePS, ApiClient]) -> None:
    ps, client = world
    up = uploader(client)
    for seq in range(1, 21):
        up.submit(seq, batch(seq))
    assert up.unacked_bytes > 0
    assert await up.drain(10)
    assert up.acked_seq == 20 and up.unacked_bytes == 0 and up.unacked_batches == 0
    assert up.mt_applied == 20  # the stand-in applies at once and says so in its replies
    assert ps.contiguous(DISK, 1) == 20
    await up.stop()


async def test_window_bounds_batches_in_flight(world: tuple[FakePS, ApiClient]) -> None:
    ps, client = world
    ps.delays = [0.1] * 12
    up = uploader(client, window=3)
    for seq in range(1, 13):
        up.submit(seq, batch(seq))
    assert await up.drain(10)
    assert ps.max_inflight == 3
    await up.stop()


async def test_retriable_failures_are_retried_with_the_same_bytes(world: tuple[FakePS, ApiClient]) -> None:
    ps, client = world
    ps.fail = [errors.Unavailable("busy"), errors.Throttled("cache full", retry_after_s=1)]
    ps.delays = [0.0, 0.0, 2.0]  # the third request is stored after the client gave up on it
    up = uploader(client, window=1, timeout_s=1.0)
    for seq in (1, 2):
        up.submit(seq, batch(seq))
    assert await up.drain(15)
    assert up.acked_seq == 2 and up.failures >= 3
    assert ps.arrivals.count((DISK, 1, 1)) == 2  # stored once, re-sent once: the PS answered 200
    assert ps.batches[(DISK, 1, 1)] == batch(1)
    await up.stop()


async def test_gaps_are_refused() -> None:
    up = DiskUploader(ApiClient("https://127.0.0.1:1", tls.client_context(None)), disk_id=DISK, generation=1,
                      first_seq=5, window=1, timeout_s=1, max_backoff_s=0.1, on_change=lambda: None,
                      on_stale=lambda: None)
    up.submit(5, b"x")
    with pytest.raises(ValueError):
        up.submit(7, b"y")


async def test_stale_generation_stops_the_pipeline(world: tuple[FakePS, ApiClient]) -> None:
    ps, client = world
    ps.generation[DISK] = 2
    stale: list[int] = []
    up = uploader(client, gen=1, stale=stale)
    up.submit(1, batch(1, gen=1))
    await wait_until(lambda: up.stale, 10, "stale")
    assert stale == [1]
    assert not await up.drain(1)
    assert ps.batches == {}
    await up.stop()


async def test_unreachable_ps_keeps_the_batch(tmp_path: Path) -> None:
    client = ApiClient("https://127.0.0.1:9", tls.client_context(issue(tmp_path / "a", "33" * 16, "agent")),
                       timeout_s=1)
    up = uploader(client, timeout_s=1)
    up.submit(1, batch(1))
    await asyncio.sleep(0.5)
    assert up.failures >= 1 and up.unacked_batches == 1 and up.acked_seq == 0
    await up.stop()
    await client.close()
