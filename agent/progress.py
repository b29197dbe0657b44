"""Reports each pipeline's replication progress to the CS, detects 'protected', and starts the
online verifies the settings ask for.

A disk is protected once the MT has applied the RESYNC_DONE batch of its generation. The PS's
reply to each batch says how far the MT got; when nothing is being written the reporter asks the
PS (``GET /v1/disks/{id}/status``) instead. Progress is posted when the state or the whole
percent changes, and at least every ``refresh_s`` seconds; it says the generation, the resync's
reason and mode (``copy`` / ``checksum``) and its bytes (done, total, compared, sent). A copy
under a generation above 1 is reported as ``resyncing``.

Verify requests travel in the agent's settings document (``verify``). The service wakes the
reporter after each new document; the reporter then reads the document's verify list (``GET
/v1/settings`` without waiting; also every ``verify_poll_s``) and hands it to the
:class:`~agent.verify.VerifyRunner`.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from agent.pipeline import Pipeline
from agent.replication import Replicator
from agent.verify import VerifyRunner, parse_requests
from common import errors
from common import logging as dlog
from common.http import ApiClient
from common.tasks import cancel_and_wait

log = dlog.get("drlab.agent.progress")

REASON = re.compile(r"^[a-z][a-z0-9-]{0,31}\Z")  # what the CS accepts as a resync reason


class ProgressReporter:
    def __init__(self, cs: ApiClient, replicator: Replicator, *, timeout_s: float, interval_s: float = 0.5,
                 refresh_s: float = 10.0, verify_poll_s: float = 30.0) -> None:
        self.cs = cs
        self.replicator = replicator
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.refresh_s = refresh_s
        self.verify_poll_s = verify_poll_s
        self.verifier = VerifyRunner(cs, replicator, timeout_s=timeout_s)
        self._last: dict[tuple[str, int], tuple[str, int, float]] = {}  # (disk, gen) -> (state, %, when)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._settings_due = True
        self._settings_at = float("-inf")

    def wake(self) -> None:
        """Check (and report) now rather than at the next interval, e.g. after a pipeline opened
        or a new settings document (whose verify requests are then read)."""
        self._settings_due = True
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="progress-report")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None
        await self.verifier.stop()

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
        if self._settings_due or time.monotonic() - self._settings_at >= self.verify_poll_s:
            await self.poll_verify()

    async def poll_verify(self) -> None:
        """Read the settings document's verify requests and start those not seen yet."""
        self._settings_due, self._settings_at = False, time.monotonic()
        try:
            reply = await self.cs.get("/v1/settings", params={"version": -1, "wait_s": 0}, timeout_s=self.timeout_s)
        except errors.DrlabError as exc:
            log.info("verify_poll_failed", error=exc.message)
            return
        self.verifier.sync(parse_requests(reply.get("document") if isinstance(reply, dict) else None))

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
        state, percent = state_of(pipe), int(pipe.percent)
        last = self._last.get(key)
        if last is not None and last[:2] == (state, percent) and now - last[2] < self.refresh_s:
            return
        await self.cs.post(f"/v1/disks/{pipe.disk_id}/progress", progress_body(pipe, self.replicator),
                           timeout_s=self.timeout_s)
        self._last[key] = (state, percent, now)


def state_of(pipe: Pipeline) -> str:
    """The disk state for the CS: a copy under a later generation is a resync."""
    state = pipe.state
    if state == "initial-replication" and pipe.generation > 1:
        return "resyncing"
    return state


def progress_body(pipe: Pipeline, replicator: Replicator) -> dict[str, Any]:
    job = pipe.resync
    total = job.bytes_total if job else replicator.disks[pipe.index].size_bytes
    body: dict[str, Any] = {"state": state_of(pipe), "percent": pipe.percent, "generation": pipe.generation,
                            "bytes_done": job.bytes_done if job else total, "bytes_total": total}
    if job is not None:
        body.update(mode=job.mode, bytes_compared=job.bytes_compared, bytes_sent=job.bytes_sent)
        if REASON.match(job.reason):
            body["reason"] = job.reason
    return body
