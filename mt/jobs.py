"""Jobs from the settings document: each runs once (done ids are kept on disk so a restart does
not redo them) and its result is POSTed to the CS with retries. Kinds: ``failover`` (an image of
the disk at a point) and ``points`` (a probe: facts about the disk's points, for the CS's choice of
a machine-consistent point; mt/failover.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from common import errors, tls
from common import logging as dlog
from common.http import ApiClient, retrying
from mt.failover import Probe, choose_point, make_image, probe
from mt.settings import Job
from mt.worker import DiskWorker

log = dlog.get("drlab.mt.jobs")


class JobRunner:
    def __init__(self, data_dir: Path, workers: Callable[[str], DiskWorker | None], executor: Executor,
                 cs: Callable[[], ApiClient], max_backoff_s: float = 5.0) -> None:
        self.data_dir = data_dir
        self._done_path = data_dir / "jobs_done.json"
        self._workers = workers
        self._executor = executor
        self._cs = cs
        self._max_backoff_s = max_backoff_s
        self.done: set[str] = self._load_done()
        self._running: dict[str, asyncio.Task[None]] = {}

    def __repr__(self) -> str:
        return f"JobRunner(done={len(self.done)}, running={sorted(self._running)})"

    def _load_done(self) -> set[str]:
        try:
            return {str(j) for j in json.loads(self._done_path.read_text())}
        except (OSError, ValueError, TypeError):
            return set()

    def _mark_done(self, job_id: str) -> None:
        self.done.add(job_id)
        tls.durable_write(self._done_path, json.dumps(sorted(self.done)).encode())

    def submit(self, jobs: list[Job]) -> None:
        """Start every job not done and not already running."""
        for job in jobs:
            if job.job_id in self.done or job.job_id in self._running:
                continue
            task = asyncio.create_task(self._run(job), name=f"mt-job-{job.job_id}")
            self._running[job.job_id] = task
            task.add_done_callback(functools.partial(self._forget, job.job_id))

    def _forget(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)

    async def _run(self, job: Job) -> None:
        jlog = log.bind(job=job.job_id, disk=job.disk_id)
        jlog.info("job_started", kind=job.kind, point=job.point)
        try:
            body: dict[str, Any] = {"state": "succeeded", "result": await self.execute(job)}
        except errors.DrlabError as exc:
            body = {"state": "failed", "error": exc.message}
        except OSError as exc:
            body = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        jlog.info("job_finished", state=body["state"], error=body.get("error"))
        try:
            await retrying(lambda: self._cs().post(f"/v1/jobs/{job.job_id}/result", body),
                           what=f"job {job.job_id} result", max_backoff_s=self._max_backoff_s)
        except errors.DrlabError as exc:
            jlog.error("job_result_refused", error=exc.message)
        await asyncio.to_thread(self._mark_done, job.job_id)

    async def execute(self, job: Job) -> dict[str, Any]:
        if job.kind not in ("failover", "points"):
            raise errors.BadRequest(f"unknown job kind {job.kind!r}")
        worker = self._workers(job.disk_id)
        if worker is None:
            raise errors.NotFound(f"disk {job.disk_id} is not held by this master target")
        loop = asyncio.get_running_loop()
        store = worker.store
        if job.kind == "points":
            query = Probe.parse(job.point)
            if query.drain:
                await worker.drain()
            return await loop.run_in_executor(self._executor, probe, store.catalog, store.disk_id, query)
        if job.point == "latest":
            await worker.drain()
        point = await loop.run_in_executor(self._executor, choose_point, store.catalog, store.disk_id, job.point)
        dest = self.data_dir / "failover" / job.disk_id / f"{job.job_id}.img"
        return await loop.run_in_executor(self._executor, make_image, store, point, dest)

    async def stop(self) -> None:
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
