"""Jobs from the settings document: each runs once and its result reaches the CS.

A finished job's id and its result are written to disk (``jobs_done.json``) *before* the result is
POSTed, so a restart neither redoes the job nor loses its result: results the CS has not yet
acknowledged are posted again (with retries) after a restart; the CS treats a repeated final
state as a no-op. Done ids the settings document no longer lists (the CS has recorded them) are
forgotten, so the file stays as small as the CS's open jobs. Kinds: ``failover`` (a copy-on-write
view of the disk at a point, mt/view.py, kept attached in :attr:`JobRunner.views`; the job succeeds
once the view is made, and only a job with ``image: true`` also writes a sparse image file of it that
the result names, for the oracle), ``points`` (a probe: facts about the
disk's points, for the CS's choice of a machine-consistent point; mt/failover.py), and on the view a
failover job made (``point: {"view": JOB_ID}``): ``view-change`` (``"to": POINT``: rebuilt at another
point, overlay dropped), ``view-drop`` (test failover cleanup), ``view-image`` (the view's image file
now, as it is, overlay writes included) and ``view-commit`` (the view is written into the replica in
place and the newer points are dropped; applying stops)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from common import errors, tls
from common import logging as dlog
from common.http import ApiClient, retrying
from mt.failover import Probe, choose_point, probe
from mt.settings import Job
from mt.statefile import JOBS_REMEDY, StateFile
from mt.view import COMMITTING, DiskView, commit, export_image, failover_view
from mt.viewnbd import ViewNbd
from mt.worker import DiskWorker

log = dlog.get("drlab.mt.jobs")

VIEW_KINDS = ("view-drop", "view-commit", "view-change", "view-image")


DONE_FORMAT = 1  # jobs_done.json's "format" field (common/formats.py: none is 1)


class JobRunner:
    def __init__(self, data_dir: Path, workers: Callable[[str], DiskWorker | None], executor: Executor,
                 cs: Callable[[], ApiClient], max_backoff_s: float = 5.0) -> None:
        self.data_dir = data_dir
        self._done_path = data_dir / "jobs_done.json"
        self._workers = workers
        self._executor = executor
        self._cs = cs
        self._max_backoff_s = max_backoff_s
        self.done, self.unsent = self._load_done()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._write_lock = threading.Lock()
        self._version = self._written = 0
        self.views: dict[str, DiskView] = {}  # failover job id -> its view, attached to its disk
        self._view_locks: dict[str, asyncio.Lock] = {}  # per disk: its view jobs run one at a time
        self._reattached: set[str] = set()  # disks whose kept views were reopened after the start
        self.nbd: ViewNbd | None = None  # serves :attr:`views` as NBD exports (mt/viewnbd.py), when enabled

    def __repr__(self) -> str:
        return f"JobRunner(done={len(self.done)}, unsent={sorted(self.unsent)}, running={sorted(self._running)})"

    def _load_done(self) -> tuple[set[str], dict[str, dict[str, Any]]]:
        """(done ids, results not yet acknowledged by the CS); an older file is a plain list of ids."""
        if not self._done_path.exists():
            return set(), {}
        state = StateFile(self._done_path, "finished jobs", JOBS_REMEDY)  # damaged: StateError, the file kept
        raw = state.load()
        if isinstance(raw, list):
            return {str(j) for j in raw}, {}
        doc = state.check(raw, DONE_FORMAT)  # a newer one: refused, not dropped
        done, unsent = doc.get("done") or [], doc.get("unsent") or {}
        if not isinstance(done, list) or not isinstance(unsent, dict) or not all(
                isinstance(v, dict) for v in unsent.values()):
            raise state.damaged("done is not a list of job ids or unsent not an object of job results")
        return {str(j) for j in done} | {str(k) for k in unsent}, {str(k): v for k, v in unsent.items()}

    async def _save(self) -> None:
        """Write the done ids and unsent results; concurrent saves never write an older snapshot
        over a newer one."""
        self._version += 1
        snapshot = self._version, json.dumps({"format": DONE_FORMAT, "done": sorted(self.done),
                                                   "unsent": self.unsent}).encode()
        await asyncio.to_thread(self._write, *snapshot)

    def _write(self, version: int, data: bytes) -> None:
        with self._write_lock:
            if version > self._written:
                tls.durable_write(self._done_path, data)
                self._written = version

    async def _finish(self, job_id: str, body: dict[str, Any]) -> None:
        self.done.add(job_id)
        self.unsent[job_id] = body
        await self._save()

    async def _acknowledged(self, job_id: str) -> None:
        if self.unsent.pop(job_id, None) is not None:
            await self._save()

    def submit(self, jobs: list[Job]) -> None:
        """Post results not yet acknowledged, forget done ids the document dropped, start every
        job not done and not already running."""
        listed = {job.job_id for job in jobs}
        self.done -= self.done - listed - set(self.unsent) - set(self._running)  # saved with the next change
        for job_id, body in self.unsent.items():
            self._start(job_id, self._post(job_id, body))
        for disk_dir in sorted((self.data_dir / "views").glob("*")):
            if disk_dir.name not in self._reattached and self._workers(disk_dir.name) is not None:
                self._start(f"views-{disk_dir.name}", self._reattach(disk_dir.name))
        for job in jobs:
            if job.job_id not in self.done:
                self._start(job.job_id, self._run(job))

    def _start(self, job_id: str, coro: Coroutine[Any, Any, None]) -> None:
        if job_id in self._running:
            coro.close()
            return
        task = asyncio.create_task(coro, name=f"mt-job-{job_id}")
        self._running[job_id] = task
        task.add_done_callback(functools.partial(self._forget, job_id))

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
        await self._finish(job.job_id, body)
        await self._post(job.job_id, body)

    async def _post(self, job_id: str, body: dict[str, Any]) -> None:
        try:
            await retrying(lambda: self._cs().post(f"/v1/jobs/{job_id}/result", body),
                           what=f"job {job_id} result", max_backoff_s=self._max_backoff_s)
        except errors.DrlabError as exc:  # refused for good (e.g. the job is gone): nothing to retry
            log.error("job_result_refused", job=job_id, error=exc.message)
        await self._acknowledged(job_id)

    async def execute(self, job: Job) -> dict[str, Any]:
        if job.kind not in ("failover", "points", *VIEW_KINDS):
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
            return await loop.run_in_executor(self._executor, probe, store.catalog, store.disk_id, query,
                                              store.staging)
        await self._reattach(job.disk_id)
        async with self._view_locks.setdefault(job.disk_id, asyncio.Lock()):
            if job.kind in VIEW_KINDS:
                return await self._view_job(job, worker)
            return await self._failover(job, worker, job.job_id, job.point)

    async def _reattach(self, disk_id: str) -> None:
        """Reopen, once after a start, the views this MT kept for a disk (they pin its journal again)."""
        async with self._view_locks.setdefault(disk_id, asyncio.Lock()):
            worker = self._workers(disk_id)
            if disk_id in self._reattached or worker is None:
                return
            self._reattached.add(disk_id)
            for meta in sorted((self.data_dir / "views" / disk_id).glob("*/meta.json")):
                if meta.parent.name in self.views:
                    continue
                try:
                    view = await asyncio.get_running_loop().run_in_executor(
                        self._executor, DiskView.open, worker.store, meta.parent)
                except (errors.DrlabError, OSError, ValueError) as exc:
                    log.error("view_reopen_failed", disk=disk_id, view=meta.parent.name, error=str(exc))
                    continue
                self.views[meta.parent.name] = view
                if (meta.parent / COMMITTING).exists():  # the view-commit job runs again and finishes it
                    worker.store.closed = True
                    log.warning("view_commit_unfinished", disk=disk_id, view=meta.parent.name)

    async def _failover(self, job: Job, worker: DiskWorker, view_id: str, spec: Any) -> dict[str, Any]:
        """The view of the point ``spec`` names, kept as ``view_id`` (the job succeeds once it is
        made: writable over NBD), and its image file only when the job asks (``image``)."""
        loop = asyncio.get_running_loop()
        store = worker.store
        if spec == "latest":
            await worker.drain()
        point = await loop.run_in_executor(self._executor, choose_point, store.catalog, store.disk_id, spec)
        dest = self.data_dir / "failover" / job.disk_id / f"{job.job_id}.img" if job.image else None
        directory = self.data_dir / "views" / job.disk_id / view_id
        old = self.views.pop(view_id, None)
        if old is not None:
            await self._retire(old)
            await loop.run_in_executor(self._executor, old.close)
        view, result = await loop.run_in_executor(self._executor, failover_view, store, point, directory, dest)
        self.views[view_id] = view
        if self.nbd is not None:
            result["nbd_url"] = self.nbd.url(view_id)
        return result

    async def _export(self, job: Job, view_id: str) -> dict[str, Any]:
        """``view-image``: the image file of a view this MT holds (attached), the view unchanged."""
        view = self.views.get(view_id)
        if view is None or view.store.disk_id != job.disk_id:
            raise errors.NotFound(f"disk {job.disk_id} has no failover view {view_id}")
        dest = self.data_dir / "failover" / job.disk_id / f"{job.job_id}.img"
        image = await asyncio.get_running_loop().run_in_executor(self._executor, export_image, view, dest)
        return {"disk_id": job.disk_id, "view": view_id, **image}

    async def _retire(self, view: DiskView) -> None:
        """A view that left :attr:`views`: wait for its NBD requests in progress before it is closed."""
        if self.nbd is not None:
            await self.nbd.retire(view)

    async def _view_job(self, job: Job, worker: DiskWorker) -> dict[str, Any]:
        """``view-drop`` / ``view-commit`` / ``view-change`` of the view a failover job made:
        ``point`` is ``{"view": FAILOVER_JOB_ID}`` (plus ``"to": POINT`` for a change)."""
        spec = job.point if isinstance(job.point, dict) else {}
        view_id = spec.get("view")
        if not isinstance(view_id, str) or not view_id or not all(c.isalnum() or c in "-_" for c in view_id):
            raise errors.BadRequest(f"{job.kind} needs point {{\"view\": FAILOVER_JOB_ID}}")
        loop = asyncio.get_running_loop()
        if job.kind == "view-change":
            if "to" not in spec:
                raise errors.BadRequest("view-change needs the new point in point.to")
            return await self._failover(job, worker, view_id, spec["to"])
        if job.kind == "view-image":
            return await self._export(job, view_id)
        view = self.views.pop(view_id, None)
        if view is None:
            directory = self.data_dir / "views" / job.disk_id / view_id
            if not (directory / "meta.json").exists():
                raise errors.NotFound(f"disk {job.disk_id} has no failover view {view_id}")
            view = await loop.run_in_executor(self._executor, DiskView.open, worker.store, directory)
        await self._retire(view)
        if job.kind == "view-drop":
            await loop.run_in_executor(self._executor, view.drop)
            return {"disk_id": job.disk_id, "view": view_id, "dropped": True}
        try:
            return await loop.run_in_executor(self._executor, commit, view)
        except errors.DrlabError:
            self.views[view_id] = view  # refused (other views): it stays
            raise

    async def release(self, disk_id: str) -> None:
        """The MT stops holding ``disk_id`` (mt/service.py): its views are detached and closed (their
        files stay), it is forgotten as reattached, so when it is listed again its kept views are
        reopened (:meth:`_reattach`) without a restart, and its per-disk lock goes when idle."""
        loop = asyncio.get_running_loop()
        for view_id, view in list(self.views.items()):
            if view.store.disk_id == disk_id:
                del self.views[view_id]
                await self._retire(view)
                await loop.run_in_executor(self._executor, view.close)
        self._reattached.discard(disk_id)
        lock = self._view_locks.get(disk_id)
        if lock is not None and not lock.locked():
            del self._view_locks[disk_id]

    async def stop(self) -> None:
        """Cancel running jobs and detach the views (their files stay: :meth:`DiskView.open`)."""
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        views, self.views = list(self.views.values()), {}
        for view in views:
            await self._retire(view)
            await asyncio.get_running_loop().run_in_executor(self._executor, view.close)
