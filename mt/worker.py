"""The asyncio shell around one disk's :class:`DiskStore`: an owned applier task that wakes when a
batch is staged and applies, in a worker thread, everything that can be applied in order.

With a :class:`~mt.pruner.Pruner` it also keeps retention: before each apply once the last look is
``retention_interval_s`` old or the journal moved to a new segment, and every interval while idle.
While the pruner says pause (low space), nothing is applied: batches stay staged (the PS throttles
as the MT falls behind) until space returns."""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import Executor

from common import logging as dlog
from common.http import backoff_s
from mt.apply import DiskStore
from mt.pruner import Pruner

log = dlog.get("drlab.mt.worker")


class DiskWorker:
    def __init__(self, store: DiskStore, executor: Executor, max_backoff_s: float = 5.0,
                 pruner: Pruner | None = None, retention_interval_s: float = 5.0) -> None:
        self.store = store
        self.pruner = pruner
        self.retention_interval_s = retention_interval_s
        self._retained_at = (-1.0, -1)  # (monotonic time, journal segment) of the last look
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
                await self._retain(loop)
                if self.pruner is not None and self.pruner.paused:
                    return count
                done = await loop.run_in_executor(self._executor, self.store.apply_next)
                if done is None:
                    return count
                count += 1
                p = done.point
                self.log.debug("batch_applied", gen=p.gen, seq=p.seq, bytes=done.data_bytes,
                               accuracy=p.accuracy_name)

    async def _retain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the pruner in a worker thread when due (interval passed, or a new segment)."""
        if self.pruner is None:
            return
        at, segno = self._retained_at
        now = time.monotonic()
        if now - at < self.retention_interval_s and segno == self.store.journal.segno:
            return
        self._retained_at = (now, self.store.journal.segno)
        await loop.run_in_executor(self._executor, self.pruner.run)

    def retention_metrics(self) -> dict[str, object]:
        return self.pruner.metrics() if self.pruner is not None else {}

    async def _run(self) -> None:
        while True:
            if self.pruner is None:
                await self._wake.wait()
            else:  # look at retention (window, paused space) while idle too
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.retention_interval_s)
            self._wake.clear()
            try:
                await self.drain()
                self.failures = 0
            except Exception as exc:  # keep the staged batch; retry after a backoff
                self.failures += 1
                self.log.error("apply_failed", error=str(exc), kind=type(exc).__name__, failures=self.failures)
                self._retained_at = (-1.0, -1)  # a full volume: look at retention before the retry
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
