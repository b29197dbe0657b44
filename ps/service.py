"""The process server as one object: data socket, cache, upload pipelines, control plane.

``start()`` binds the data socket first (port 0 allowed), registers with the CS reporting the
bound port, loads the cache, serves, then follows its settings. ``stop()`` does not drain: it
stops serving, cancels the pipelines and leaves the cache on disk for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from common import component, errors, tls
from common import logging as dlog
from common.config import PSConfig
from common.daemon import bind_socket
from common.hoststats import CpuSampler, read_mem_pct
from common.http import FRONTED, ApiClient
from ps import check, hashproxy
from ps.cache import BatchCache
from ps.discovery import Discovery
from ps.front import DataFront
from ps.health import RateMeter, owned_tasks, per_machine, server_state, task_state
from ps.ingest import IngestContext, build_app
from ps.orphans import PEERS_FILE, OrphanReleaser, PeerBook
from ps.push_install import PushInstaller
from ps.state import Registry
from ps.throttle import ThrottlePolicy
from ps.uplink import Uplink, static_proxy
from ps.uploader import POLL_INTERVAL_S, Clients, SealerBook, Uploaders

log = dlog.get("drlab.ps")

REFRESH_MIN_INTERVAL_S = 1.0
ORPHAN_RECHECK_S = 60.0  # a cached disk kept unconfirmed (ps/orphans.py) is probed again this often



class PSService:
    def __init__(self, cfg: PSConfig, *, poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.cfg = cfg
        self.data_port = 0
        self.component_id = ""
        self.registry = Registry()
        self._poll_s = poll_interval_s
        self._executor: ThreadPoolExecutor | None = None
        self.cache: BatchCache | None = None
        self.uploaders: Uploaders | None = None
        self._clients: Clients | None = None
        self._runner: web.AppRunner | None = None
        self._control: component.ControlPlane | None = None
        self._discovery: Discovery | None = None  # on-prem hypervisors (settings "hypervisors")
        self._push: PushInstaller | None = None  # agent push installs (settings "push_installs")
        self._sock: socket.socket | None = None
        self._refresh_lock = asyncio.Lock()
        self._last_refresh = 0.0
        self._cpu = CpuSampler()  # host CPU busy % between two heartbeats
        self._ingest: IngestContext | None = None
        self._front: DataFront | None = None  # the threaded TLS front of the data port (cfg.ingest_front)
        self._rates = RateMeter()  # churn per machine and upload throughput between two heartbeats
        self._orphans: OrphanReleaser | None = None  # cache of disks no longer served (ps/orphans.py)
        self._orphan_task: asyncio.Task[None] | None = None
        self._orphan_wake = asyncio.Event()

    def __repr__(self) -> str:
        return f"PSService(id={self.component_id or '?'}, port={self.data_port})"

    async def start(self) -> None:
        cfg = self.cfg
        self._sock = bind_socket(cfg.listen_host, cfg.data_port)
        self.data_port = int(self._sock.getsockname()[1])
        try:
            files = await component.ensure_identity(cfg, "ps", {"data": self.data_port})
        except BaseException:
            self._sock.close()
            self._sock = None
            raise
        self.component_id = str(files.read_meta()["component_id"])
        self._executor = ThreadPoolExecutor(max(1, cfg.upload_threads), thread_name_prefix="ps-work")
        self.cache = BatchCache(cfg.data_dir / "cache", cfg.cache_max_bytes, self._executor,
                                policy=ThrottlePolicy.from_config(cfg), fs_check_s=cfg.cache_fs_check_interval_s,
                                memory_bytes=cfg.cache_memory_bytes)
        await asyncio.get_running_loop().run_in_executor(self._executor, self.cache.load)
        self._rebuild_progress(self.cache)
        self._clients = Clients(lambda url: ApiClient(url, tls.client_context(files), timeout_s=cfg.request_timeout_s,
                                                      limit=64, bulk_threads=2 * cfg.upload_window_batches,
                                                      stall_timeout_s=cfg.stall_timeout_s),
                                Uplink(static_proxy(cfg)))  # proxy and bandwidth limit (settings "upload")
        self.uploaders = Uploaders(self.registry, self.cache, SealerBook(bytes.fromhex(self.component_id)),
                                   self._clients, self._executor, window=cfg.upload_window_batches,
                                   max_backoff_s=cfg.retry_max_backoff_s, poll_interval_s=self._poll_s)
        peers = PeerBook(cfg.data_dir / PEERS_FILE)
        await asyncio.get_running_loop().run_in_executor(self._executor, peers.load)
        self._orphans = OrphanReleaser(self.registry, self.cache, self._clients, peers)
        self._ingest = IngestContext(cfg, self.registry, self.cache, self._executor,
                                     self.uploaders.notify, self._refresh_for_unknown_disk)
        await self._serve(files, self._ingest)
        self._control = component.ControlPlane(cfg, files, on_settings=self._on_settings, metrics=self.metrics)
        self._discovery = Discovery(self._control.cs, timeout_s=cfg.request_timeout_s)
        self._push = PushInstaller(self._control.cs, cs_url=cfg.cs_url, timeout_s=cfg.request_timeout_s,
                                   max_backoff_s=cfg.retry_max_backoff_s)
        self._control.start()
        log.info("ps_started", component_id=self.component_id, port=self.data_port,
                 cached_batches=self.cache.total_batches)

    async def _serve(self, files: tls.IdentityFiles, ctx: IngestContext) -> None:
        """The data app on the data socket: behind the threaded TLS front (ps/front.py) when
        ``ingest_front``, else served by aiohttp's own TLS."""
        app = hashproxy.install(build_app(ctx), self._clients)
        app[check.COMPONENT] = self.component_id
        app[FRONTED] = self.cfg.ingest_front
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        assert self._sock is not None
        if self.cfg.ingest_front:
            self._front = DataFront(ctx)
            await self._front.start(self._runner, self._sock, tls.server_context(files))
            return
        site = web.SockSite(self._runner, self._sock, ssl_context=tls.server_context(files))
        await site.start()

    def _rebuild_progress(self, cache: BatchCache) -> None:
        for disk_id in cache.disks():
            progress = self.registry.progress_of(disk_id)
            for entry in cache.pending(disk_id):
                progress.stored(entry.gen, entry.seq)

    async def _on_settings(self, document: dict[str, Any]) -> None:
        if not isinstance(document, dict):
            log.error("settings_document_ignored", kind=type(document).__name__)
            return
        changed = self.registry.apply_document(document)
        if self._clients is not None:
            self._clients.uplink.apply(document)  # before the pipelines wake: they use the new route
        if changed:
            log.info("settings_applied", disks=len(self.registry.disks), changed=sorted(changed))
        if self.uploaders is not None:
            await self.uploaders.sync()
        for work in (self._discovery, self._push):
            if work is not None:
                work.apply(document)
        await self._check_orphans()

    async def _check_orphans(self) -> None:
        """After a settings document: remember each served disk's MT, then (in the background,
        once the first document is applied, again every ORPHAN_RECHECK_S) release the cache of
        disks no longer served when ps/release.py's rule allows it (ps/orphans.py). A disk the
        document merely stops listing keeps its cached batches until the MT refuses them."""
        orphans, cache = self._orphans, self.cache
        if orphans is None or cache is None:
            return
        await self._save_peers(orphans, cache)
        if self._orphan_task is None:
            self._orphan_task = asyncio.create_task(self._orphan_loop(orphans), name="ps-orphans")
        self._orphan_wake.set()

    async def _save_peers(self, orphans: OrphanReleaser, cache: BatchCache) -> None:
        """The MT of each served or cached disk, on disk before any release check uses it."""
        if orphans.peers.update(self.registry, cache.disks()):
            await asyncio.get_running_loop().run_in_executor(self._executor, orphans.peers.save)

    async def _orphan_loop(self, orphans: OrphanReleaser) -> None:
        while True:
            self._orphan_wake.clear()
            try:
                await orphans.check(settings_applied=True)
                if self.cache is not None:
                    await self._save_peers(orphans, self.cache)
            except Exception as exc:  # never stop checking: log and retry later
                log.error("cache_release_check_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ORPHAN_RECHECK_S):
                    await self._orphan_wake.wait()

    async def wait_settings(self, timeout_s: float = 10.0) -> None:
        """Wait for the first settings document (tests and the lab use it)."""
        assert self._control is not None
        async with asyncio.timeout(timeout_s):
            await self._control.first_settings.wait()

    async def refresh_settings(self) -> bool:
        """Fetch the settings document now (without waiting); True if it changed."""
        assert self._control is not None
        return await self._control.poll_once(0)

    async def _refresh_for_unknown_disk(self) -> None:
        """Fetch settings now, at most once per REFRESH_MIN_INTERVAL_S (agents may be told about a
        disk before this PS's long-poll returns)."""
        async with self._refresh_lock:
            if self._control is None or time.monotonic() - self._last_refresh < REFRESH_MIN_INTERVAL_S:
                return
            self._last_refresh = time.monotonic()
            try:
                await self._control.poll_once(0)
            except errors.DrlabError as exc:
                log.info("settings_refresh_failed", error=exc.message)

    def metrics(self) -> dict[str, Any]:
        """Heartbeat metrics: cache use and free space, the throttle (cache-wide under ``throttle``,
        per disk under ``disks.{id}.throttle``: active, reason, since_ns, refusals) and per-disk progress."""
        cache = self.cache
        throttle = cache.throttle_metrics() if cache else {}
        disks: dict[str, Any] = {}
        for disk_id in sorted(set(self.registry.disks) | set(cache.disks() if cache else [])):
            batches, nbytes = cache.backlog(disk_id) if cache else (0, 0)
            p = self.registry.progress_of(disk_id)
            disks[disk_id] = {"backlog_batches": batches, "backlog_bytes": nbytes, "ps_durable": p.ps_durable,
                              "mt_received": p.mt_received, "mt_applied": p.mt_applied,
                              "uploaded_bytes": p.uploaded_bytes, "uploaded_batches": p.uploaded_batches,
                              "draining": bool((d := self.registry.disks.get(disk_id)) and d.draining)}
            if cache:
                disks[disk_id]["throttle"] = cache.throttle.disk_metrics(disk_id)
                disks[disk_id]["backlog_age_s"] = self._oldest_age_s(cache, disk_id)
        used = cache.used_bytes if cache else 0
        return {"cache_used_bytes": used, "cache_max_bytes": self.cfg.cache_max_bytes,
                "cache_free_pct": throttle.get("free_pct", 100.0), "throttle": throttle,
                "uploaded_bytes": sum(d["uploaded_bytes"] for d in disks.values()), "disks": disks,
                # the settings version applied: a PS switch's drain counts only heartbeats after its change
                "settings_version": self._control.settings_version if self._control else -1,
                # caches of disks no longer served, deleted by the release rule (ps/orphans.py)
                "cache_released": dict(self._orphans.released) if self._orphans else {},
                # health (cs/health/rules.py): host load, and the oldest batch not yet uploaded (s)
                "host": {"cpu_pct": self._cpu.sample(), "mem_pct": read_mem_pct()},
                "uplink": self._clients.uplink.metrics() if self._clients else {},  # proxy, its error, limit
                "upload_backlog_age_s": max((d.get("backlog_age_s", 0.0) for d in disks.values()), default=0.0),
                **self._services_and_rates()}

    def _services_and_rates(self) -> dict[str, Any]:
        """``services`` (ps/health.py: running | stopped each), ``machines`` ({id: {churn_bytes_per_s,
        disks}}: bytes/s cached for it, averaged since the last heartbeat), ``machine_count`` and
        ``upload_bytes_per_s`` (to the MTs, same window)."""
        pipelines = self.uploaders.pipelines.values() if self.uploaders else None
        services = {"ingest": server_state(self._runner),
                    "uploader": task_state(None if pipelines is None else
                                           [t for p in pipelines for t in owned_tasks(p, "_task") or []]),
                    "control": task_state(owned_tasks(self._control, "_tasks")),
                    "discovery": task_state(owned_tasks(self._discovery, "_tasks")),
                    "push_install": task_state(owned_tasks(self._push, "_tasks"))}
        counters = {f"m:{m}": n for m, n in per_machine(self._ingest.received if self._ingest else {},
                                                        self._machine_of).items()}
        counters["uploaded"] = float(sum(self.registry.progress_of(d).uploaded_bytes for d in self.registry.progress))
        rates = self._rates.sample(counters)
        served: dict[str, int] = {}
        for d in self.registry.disks.values():
            served[d.machine_id] = served.get(d.machine_id, 0) + 1
        machines = {m: {"churn_bytes_per_s": round(rates.get(f"m:{m}", 0.0), 1), "disks": n}
                    for m, n in sorted(served.items())}
        return {"services": services, "machines": machines, "machine_count": len(machines),
                "upload_bytes_per_s": round(rates.get("uploaded", 0.0), 1)}

    def _machine_of(self, disk_id: str) -> str | None:
        disk = self.registry.disks.get(disk_id)
        return disk.machine_id if disk else None

    @staticmethod
    def _oldest_age_s(cache: BatchCache, disk_id: str) -> float:
        """Age of the disk's oldest cached batch (its file's mtime), 0 for none."""
        oldest = cache.pending(disk_id)[:1]
        try:
            mtime = cache.path(disk_id, oldest[0].gen, oldest[0].seq).stat().st_mtime_ns if oldest else 0
        except OSError:  # uploaded and deleted meanwhile
            return 0.0
        return round(max(0.0, (time.time_ns() - mtime) / 1e9), 3) if mtime else 0.0

    async def stop(self) -> None:
        """Stop serving and uploading at once (no draining); the cache stays on disk."""
        if self._front is not None:
            await self._front.stop()
            self._front = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.uploaders is not None:
            await self.uploaders.stop()
        if self._orphan_task is not None:
            self._orphan_task.cancel()
            await asyncio.gather(self._orphan_task, return_exceptions=True)
            self._orphan_task = None
        for work in (self._discovery, self._push):
            if work is not None:
                await work.stop()
        if self._control is not None:
            await self._control.stop()
            self._control = None
        if self._clients is not None:
            await self._clients.close()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        log.info("ps_stopped", component_id=self.component_id)
