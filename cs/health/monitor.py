"""The periodic health evaluator of a CS process: an owned, named task that runs every rule over
every component each ``evaluate_interval_s`` (cs/health/engine.py) — what heartbeats alone cannot
show: a component gone silent, a window that ends between two heartbeats, a disk's RPO.

Its clock is injectable (tests move time forward instead of waiting 15 minutes). Several CS
processes may run it on one database at once: each run reads, then settles what changes in one
write transaction, and the store raises and clears each alert once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from common import logging as dlog
from cs.health import engine
from cs.state import CSState

log = dlog.get("drlab.cs.health")

Clock = Callable[[], int]  # now, in ns since the epoch


class HealthMonitor:
    def __init__(self, state: CSState, *, clock: Clock = time.time_ns,
                 on_change: Callable[[], None] | None = None) -> None:
        self.state = state
        self.clock = clock
        self.runs = 0
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return f"HealthMonitor(runs={self.runs})"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="cs-health-evaluator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        """Evaluate now rather than at the next interval."""
        self._wake.set()

    async def run_once(self) -> engine.Outcome:
        """One evaluation of every component at ``clock()``."""
        cfg = self.state.cfg.health
        out = await engine.evaluate_all(self.state.db, cfg, self.clock(), notify=bool(cfg.webhook_url))
        self.runs += 1
        if (out.raised or out.cleared) and self._on_change is not None:
            self._on_change()
        return out

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # the database is away, say: log, try again next interval
                log.error("health_evaluation_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.state.cfg.health.evaluate_interval_s)
            self._wake.clear()
