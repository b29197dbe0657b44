"""Shutting the machine down for a planned failover (cs/machine_ops.py ``planned-failover``).

While the CS's settings document carries ``shutdown: {"job_id": J}`` the machine takes no write
(a write gets the block protocol's or NBD's error). On the first sight of a job the agent:
1. refuses writes from then on (a write in progress finishes first: the write lock is taken);
2. cuts every replicating disk at one final machine boundary W = the last write number, an empty
   batch for a disk that had no write, so that every disk's newest point is at W;
3. cuts again until nothing is held (metadata and bitmap regions are read back), then waits until
   the PS holds every batch (each uploader's ``acked_seq`` reached its stream's last seq);
4. reports ``{"job_id", "wnum": W}`` — or ``{"job_id", "error"}`` if a disk is not protected (a
   copy in progress cannot be failed over exactly) or the drain timed out — to
   ``POST /v1/machines/self/shutdown``.
Writes stay refused while the document carries a shutdown (the source is off once it failed over);
a document without one lets them in again (the planned failover failed or was abandoned).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.replication import Replicator
from common import errors
from common import logging as dlog
from common.tasks import cancel_and_wait

log = dlog.get("drlab.agent.shutdown")

Report = Callable[[dict[str, Any]], Awaitable[Any]]
POLL_S = 0.05


async def drain(rep: Replicator, timeout_s: float) -> int:
    """Steps 2 and 3: the final boundary W once the PS holds everything up to it (writes already
    refused); Conflict if a disk is still being copied, Unavailable after ``timeout_s``."""
    copying = sorted(p.name for p in rep.pipelines.values() if not p.protected)
    if copying:
        raise errors.Conflict(f"disk(s) {', '.join(copying)} not protected yet: a planned failover needs every "
                              "disk in sync")
    await rep.freeze()
    try:
        now = time.time_ns()
        for index in rep.pipelines:
            if rep.tracker.watching(index):
                rep.tracker.force(index, now)
        rep.cut_now()
        final = rep.tracker.last_wnum
    finally:
        rep.thaw()
    deadline = time.monotonic() + timeout_s
    while rep.tracker.total_bytes() > 0 or any(p.uploader.acked_seq < p.stream.next_seq - 1
                                               for p in rep.pipelines.values()):
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"the PS did not take every batch within {timeout_s:.0f} s")
        if rep.tracker.total_bytes() > 0:
            rep.cut_now()
        await asyncio.sleep(POLL_S)
    return final


class Shutdown:
    """Follows the settings' ``shutdown`` entry (module docstring)."""

    def __init__(self, rep: Replicator, report: Report, timeout_s: float = 120.0) -> None:
        self.rep = rep
        self._report = report
        self.timeout_s = timeout_s
        self.job_id: str | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Shutdown(job={self.job_id}, stopped={self.rep.writes_stopped is not None})"

    def on_settings(self, document: dict[str, Any]) -> None:
        entry = document.get("shutdown")
        job_id = entry.get("job_id") if isinstance(entry, dict) else None
        if not isinstance(job_id, str) or not job_id:
            if self.rep.writes_stopped is not None:
                log.info("writes_resumed", job=self.job_id)
            self.rep.writes_stopped, self.job_id = None, None
            return
        self.rep.writes_stopped = f"the machine is shut down for a planned failover (job {job_id})"
        if job_id != self.job_id:
            self.job_id = job_id
            self._task = asyncio.create_task(self._run(job_id), name=f"shutdown-{job_id}")

    async def _run(self, job_id: str) -> None:
        log.info("shutdown_started", job=job_id)
        try:
            body: dict[str, Any] = {"job_id": job_id, "wnum": await drain(self.rep, self.timeout_s)}
        except errors.DrlabError as exc:
            body = {"job_id": job_id, "error": exc.message}
        log.info("shutdown_drained", job=job_id, wnum=body.get("wnum"), error=body.get("error"))
        with contextlib.suppress(errors.DrlabError):  # refused: the job is over (the CS said why)
            await self._report(body)

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
