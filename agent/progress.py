"""Reports each pipeline's replication progress to the CS and detects 'protected'.

A disk is protected once the MT has applied the RESYNC_DONE batch of its generation. The PS's
reply to each batch says how far the MT got; when nothing is being written the reporter asks the
PS (``GET /v1/disks/{id}/status``) instead. Progress is posted when the state or the whole
percent changes, and at least every ``refresh_s`` seconds.
"""

from __future__ import annotations

import asyncio
import time

from agent.replication import Pipeline, Replicator
from agent.tasks import cancel_and_wait
from common import errors
from common import logging as dlog
from common.http import ApiClient

log = dlog.get("drlab.agent.progress")


class ProgressReporter:
    def __init__(self, cs: ApiClient, replicator: Replicator, *, timeout_s: float, interval_s: float = 0.5,
                 refresh_s: float = 10.0) -> None:
        self.cs = cs
        self.replicator = replicator
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.refresh_s = refresh_s
        self._last: dict[tuple[str, int], tuple[str, int, float]] = {}  # (disk, gen) -> (state, %, when)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Check (and report) now rather than at the next interval, e.g. after a pipeline opened."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="progress-report")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            await self.tick()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except TimeoutError:
                pass

    async def tick(self) -> None:
        for pipe in list(self.replicator.pipelines.values()):
            try:
                await self._check(pipe)
            except errors.DrlabError as exc:
                log.info("progress_check_failed", disk=pipe.disk_id, gen=pipe.generation, error=exc.message)

    async def _check(self, pipe: Pipeline) -> None:
        done = pipe.stream.resync_done_seq
        if not pipe.protected and done and pipe.uploader.acked_seq >= done and pipe.uploader.mt_applied < done:
            await pipe.uploader.refresh_status()
        if pipe.update_protected():
            log.info("disk_protected", disk=pipe.disk_id, gen=pipe.generation, seq=done)
        if pipe.state == "stale":
            return
        await self._report(pipe)

    async def _report(self, pipe: Pipeline) -> None:
        key, now = (pipe.disk_id, pipe.generation), time.monotonic()
        state, percent = pipe.state, int(pipe.percent)
        last = self._last.get(key)
        if last is not None and last[:2] == (state, percent) and now - last[2] < self.refresh_s:
            return
        total = pipe.resync.bytes_total if pipe.resync else self.replicator.disks[pipe.index].size_bytes
        done = pipe.resync.bytes_done if pipe.resync else total
        body = {"state": state, "percent": pipe.percent, "bytes_done": done, "bytes_total": total}
        await self.cs.post(f"/v1/disks/{pipe.disk_id}/progress", body, timeout_s=self.timeout_s)
        self._last[key] = (state, percent, now)
