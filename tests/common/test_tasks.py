"""common/tasks.py: owned tasks are cancelled and waited for, within a bound."""

from __future__ import annotations

import asyncio
import time

from common.tasks import cancel_and_wait


async def test_cancel_and_wait_waits_for_cancelled_tasks() -> None:
    done: list[str] = []

    async def cleans_up() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.05)
            done.append("cleaned")

    task = asyncio.create_task(cleans_up())
    await asyncio.sleep(0)
    await cancel_and_wait([task, None])
    assert task.done() and done == ["cleaned"]


async def test_a_task_that_does_not_stop_is_left_behind_after_the_timeout() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                continue  # ignores cancellation (e.g. a child it waits for never reported)

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    started = time.monotonic()
    await cancel_and_wait([task], timeout_s=0.2)
    assert time.monotonic() - started < 5 and not task.done()
    release.set()
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.done()
