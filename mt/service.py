"""The master target as one object: two TLS sockets, per-disk stores and applier tasks, the
failover job runner and the control plane.

``start()`` binds both sockets (port 0 allowed), registers with the CS reporting the bound
ports, recovers every disk journal found on disk (not a released one), and only then serves.
``stop()`` stops serving, cancels the tasks (an apply in progress finishes its batch) and closes
the stores. A disk that leaves the settings document is released (mt/release.py): its worker
stops after the batch in progress, its views detach, its store closes, its staged batches are
discarded; its replica, journal and points stay unless ``delete_disks`` names it.
"""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from common import component, errors, tls
from common import logging as dlog
from common.config import MTConfig
from common.daemon import bind_socket
from common.http import FRONTED, ApiClient
from common.recent import Recent
from mt import hashapi, metrics, release, seed
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.front import DataFront
from mt.ingest import IngestContext, build_control_app, build_data_app
from mt.jobs import JobRunner
from mt.pruner import Policy, Pruner, Volume
from mt.settings import Registry
from mt.staging import Kept
from mt.viewnbd import ViewNbd
from mt.worker import DiskWorker

log = dlog.get("drlab.mt")


class MTService:
    def __init__(self, cfg: MTConfig, *, apply_threads: int = 4) -> None:
        self.cfg = cfg
        self.data_port = 0
        self.control_port = 0
        self.component_id = ""
        self.registry = Registry()
        self.workers: dict[str, DiskWorker] = {}
        self.catalog: Catalog | None = None
        self.jobs: JobRunner | None = None
        self._apply_threads = apply_threads
        self._executor: ThreadPoolExecutor | None = None
        self._socks: list[socket.socket] = []
        self._runners: list[web.AppRunner] = []
        self._control: component.ControlPlane | None = None
        self._deleted: set[str] = set()  # disks whose files this run deleted (delete_disks is repeated)
        self.view_nbd: ViewNbd | None = None  # the views as NBD exports, when cfg.view_nbd_port
        self._front: DataFront | None = None  # the threaded TLS front of the data port (cfg.ingest_front)
        self._kept: Recent[tuple[str, int, int], Kept] = Recent(cfg.staging_memory_bytes)  # every disk's

    def __repr__(self) -> str:
        return f"MTService(id={self.component_id or '?'}, data={self.data_port}, control={self.control_port})"

    async def start(self) -> None:
        cfg = self.cfg
        self._socks = [bind_socket(cfg.listen_host, cfg.data_port), bind_socket(cfg.listen_host, cfg.control_port)]
        self.data_port, self.control_port = (int(s.getsockname()[1]) for s in self._socks)
        try:
            files = await component.ensure_identity(cfg, "mt", {"data": self.data_port, "control": self.control_port})
        except BaseException:
            self._close_socks()
            raise
        self.component_id = str(files.read_meta()["component_id"])
        self._executor = ThreadPoolExecutor(self._apply_threads, thread_name_prefix="mt-work")
        self.catalog = Catalog(cfg.data_dir / "catalog.db")
        await self._recover_all()
        self._control = component.ControlPlane(cfg, files, on_settings=self._on_settings, metrics=self.metrics)
        control = self._control
        self.jobs = JobRunner(cfg.data_dir, self.workers.get, self._executor, lambda: control.cs,
                              max_backoff_s=cfg.retry_max_backoff_s)
        if cfg.view_nbd_port:
            jobs = self.jobs
            self.view_nbd = jobs.nbd = ViewNbd.from_config(cfg, lambda: jobs.views, self._executor)
            await self.view_nbd.start()
        ctx = IngestContext(cfg, self.registry, self.workers, self._executor)
        ssl_ctx = tls.server_context(files)
        data_app = hashapi.install(build_data_app(ctx))  # + GET /v1/disks/{disk}/hashes
        data_app[FRONTED] = cfg.ingest_front
        for app, sock in ((data_app, self._socks[0]), (build_control_app(ctx), self._socks[1])):
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
            await runner.setup()
            self._runners.append(runner)
            if app is data_app and cfg.ingest_front:  # batches read off the loop (mt/front.py)
                self._front = DataFront(ctx)
                await self._front.start(runner, sock, ssl_ctx)
            else:
                await web.SockSite(runner, sock, ssl_context=ssl_ctx).start()
        self._control.start()
        log.info("mt_started", component_id=self.component_id, data_port=self.data_port,
                 control_port=self.control_port, disks=len(self.workers))

    async def _recover_all(self) -> None:
        """Open (recover) every disk that has state on disk, before any data is accepted."""
        root = self.cfg.data_dir
        found = {p.name for sub in ("journal", "staging") if (root / sub).is_dir() for p in (root / sub).iterdir()}
        skipped = found & release.released(root)  # released: reopened only when listed again
        if skipped:
            log.info("released_disks_not_reopened", disks=sorted(skipped))
        for disk_id in sorted(d for d in found - skipped if release.is_disk_id(d)):
            image = seed.replica_file(root, disk_id)
            await self._open_disk(disk_id, image.stat().st_size if image.exists() else 0)

    async def _open_disk(self, disk_id: str, size_bytes: int) -> DiskWorker:
        assert self._executor is not None and self.catalog is not None
        self._deleted.discard(disk_id)
        await asyncio.get_running_loop().run_in_executor(self._executor, release.unmark, self.cfg.data_dir, disk_id)
        store = DiskStore(disk_id, self.cfg.data_dir, self.catalog, size_bytes, self.cfg.segment_max_bytes,
                          self._kept)
        await asyncio.get_running_loop().run_in_executor(self._executor, store.open)
        pruner = Pruner(store, Volume.of(self.cfg), lambda: Policy.of(self.registry.disks.get(disk_id)))
        worker = self.workers[disk_id] = DiskWorker(store, self._executor, self.cfg.retry_max_backoff_s, pruner,
                                                    self.cfg.retention_check_interval_s)
        worker.start()
        return worker

    async def _on_settings(self, document: dict[str, Any]) -> None:
        if not isinstance(document, dict):
            log.error("settings_document_ignored", kind=type(document).__name__)
            return
        disks = self.registry.parse(document)
        loop = asyncio.get_running_loop()
        for disk in disks.values():
            if disk.replica_path is not None:
                await self._adopt(disk.disk_id, disk.replica_path)
        for disk in disks.values():  # stores exist before the disk is accepted by ingest
            worker = self.workers.get(disk.disk_id)
            if worker is None:
                await self._open_disk(disk.disk_id, disk.size_bytes)
            elif disk.size_bytes > worker.store.replica.size_bytes:
                await loop.run_in_executor(self._executor, worker.store.grow, disk.size_bytes)
        self.registry.apply(disks, document)  # from here ingest refuses the disks that left
        listed = listed_disks(document)
        for disk_id in sorted(set(self.workers) - listed):
            await self.release(disk_id)
        for disk_id in sorted(set(delete_disks(document)) - listed - self._deleted):
            await self.delete(disk_id)
        log.info("settings_applied", disks=len(disks), jobs=len(self.registry.jobs))
        if self.jobs is not None:
            self.jobs.submit(self.registry.jobs)

    async def _adopt(self, disk_id: str, replica_path: str) -> None:
        """A seeded disk (mt/seed.py): adopt ``replica_path`` unless it is the disk's replica already."""
        assert self.catalog is not None
        loop = asyncio.get_running_loop()
        try:
            path = seed.allowed(replica_path, self.cfg.datastore_dir)
        except errors.DrlabError as exc:
            log.error("seed_refused", disk=disk_id, error=exc.message)
            return
        if not await loop.run_in_executor(self._executor, seed.needs_adopt, self.cfg.data_dir, disk_id, path):
            return
        await self.release(disk_id)
        await loop.run_in_executor(self._executor, seed.adopt, self.cfg.data_dir, disk_id, path, self.catalog)

    async def release(self, disk_id: str) -> None:
        """Stop holding a disk: marker first (no restart reopens it), its views detached, the worker
        stopped after the batch it applies (never half a batch), the store closed, staged batches
        discarded. Its replica, journal and catalog rows stay."""
        worker = self.workers.pop(disk_id, None)
        if worker is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, release.mark, self.cfg.data_dir, disk_id)
        if self.jobs is not None:
            await self.jobs.release(disk_id)
        await worker.stop()
        discarded = await loop.run_in_executor(self._executor, release.discard_staging, self.cfg.data_dir, disk_id)
        log.info("disk_released", disk=disk_id, applied_gen=worker.store.applied[0],
                 applied_seq=worker.store.applied[1], staged_discarded=discarded)

    async def delete(self, disk_id: str) -> None:
        """Delete the files and points of a disk this MT no longer holds (idempotent)."""
        await self.release(disk_id)
        assert self.catalog is not None
        await asyncio.get_running_loop().run_in_executor(self._executor, release.delete_files, self.cfg.data_dir,
                                                         self.catalog, disk_id)
        self._deleted.add(disk_id)

    async def wait_settings(self, timeout_s: float = 10.0) -> None:
        assert self._control is not None
        await asyncio.wait_for(self._control.first_settings.wait(), timeout_s)

    async def refresh_settings(self) -> bool:
        """Fetch the settings document now (without waiting); True if it changed."""
        assert self._control is not None
        return await self._control.poll_once(0)

    def metrics(self) -> dict[str, Any]:
        datastore = self.cfg.datastore_dir
        return {**metrics.collect(self.workers, self.registry),
                **({"datastore_dir": str(datastore.resolve())} if datastore is not None else {})}

    @property
    def cs(self) -> ApiClient | None:
        return self._control.cs if self._control else None

    async def stop(self) -> None:
        if self._front is not None:
            front, self._front = self._front, None
            await front.stop()
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
        if self.view_nbd is not None:
            await self.view_nbd.stop()
            self.view_nbd = None
        if self.jobs is not None:
            await self.jobs.stop()
        if self._control is not None:
            await self._control.stop()
            self._control = None
        for worker in self.workers.values():
            await worker.stop()
        self.workers.clear()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        if self.catalog is not None:
            self.catalog.close()
            self.catalog = None
        self._close_socks()
        log.info("mt_stopped", component_id=self.component_id)

    def _close_socks(self) -> None:
        for s in self._socks:
            s.close()
        self._socks = []


def listed_disks(document: dict[str, Any]) -> set[str]:
    """Every disk id the document lists, valid entry or not (a malformed entry never releases a disk)."""
    return {str(item.get("disk_id")) for item in document.get("disks", []) or [] if isinstance(item, dict)}


def delete_disks(document: dict[str, Any]) -> list[str]:
    """``delete_disks``: released disks whose files and points the CS wants gone (ids checked)."""
    items = document.get("delete_disks") or []
    return [str(d) for d in items if isinstance(d, str) and release.is_disk_id(d)] if isinstance(items, list) else []
