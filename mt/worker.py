"""The asyncio shell around one disk's :class:`DiskStore`: an owned applier task that wakes when a
batch is staged and applies, in a worker thread, everything that can be applied in order."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Executor

from common import logging as dlog
from common.http import backoff_s
from mt.apply import DiskStore

log = dlog.get("drlab.mt.worker")


class DiskWorker:
    def __init__(self, store: DiskStore, executor: Executor, max_backoff_s: float = 5.0) -> None:
        self.store = store
        self._executor = executor
        self._max_backoff_s = max_backoff_s
        self._wake = asyncio.Event()
        self._apply_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        self.log = log.bind(disk=store.disk_id)

    def __repr__(self) -> str:
        return f"DiskWorker({self.store.disk_id})"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mt-apply-{self.store.disk_id}")
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def drain(self) -> int:
        """Apply every batch that can be applied in order now; returns how many."""
        loop = asyncio.get_running_loop()
        count = 0
        async with self._apply_lock:
            while True:
                done = await loop.run_in_executor(self._executor, self.store.apply_next)
                if done is None:
                    return count
                count += 1
                p = done.point
                self.log.debug("batch_applied", gen=p.gen, seq=p.seq, bytes=done.data_bytes,
                               accuracy=p.accuracy_name)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.drain()
                self.failures = 0
            except Exception as exc:  # keep the staged batch; retry after a backoff
                self.failures += 1
                self.log.error("apply_failed", error=str(exc), kind=type(exc).__name__, failures=self.failures)
                await asyncio.sleep(backoff_s(self.failures, max_s=self._max_backoff_s))
                self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # an apply running in its thread finishes before the store closes (it holds the lock)
        async with self._apply_lock:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.store.close)
