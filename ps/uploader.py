"""Per-disk upload pipelines: cached batches -> seal -> PUT to the disk's MT -> delete.

Each served disk has one :class:`DiskPipeline` task. It keeps up to ``window`` batches in
flight, taken from the cache in (gen, seq) order, and never skips one: a batch leaves the cache
only after the MT's durable receipt (201/200), or when the MT (409 stale_generation) or the
settings say a newer generation superseded it. Retriable failures back off and retry; other
refusals are logged as errors, the file is kept and the upload retried after the longest
backoff. While the MT has not applied everything, the pipeline polls the MT's control API so the
acknowledgements sent to the agent keep reporting ``mt_applied``.

The MT back (after a restart): while a batch backs off, that poll also probes the MT; the first
answer after failed polls, or any batch the MT takes, ends every retriable backoff of the disk
at once and restarts its count (no batch sleeps seconds on a backoff grown while the MT was
down). A backoff the MT asked for (``Retry-After``) and the wait after a refusal are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from common import crashpoints, errors
from common import logging as dlog
from common.http import ApiClient, backoff_s
from common.wire.seal import Sealer
from ps.cache import BatchCache, CacheCorrupt, Entry
from ps.state import DiskSettings, Registry
from ps.uplink import Proxy, Uplink

log = dlog.get("drlab.ps.uploader")

POLL_INTERVAL_S = 0.5
OCTET = {"Content-Type": "application/octet-stream"}


def mt_numbers(reply: Any) -> tuple[int, int]:
    """(mt_received, mt_applied) from an MT reply; zeros when it does not say."""
    if not isinstance(reply, dict):
        return 0, 0
    try:
        return int(reply.get("mt_received", 0)), int(reply.get("mt_applied", 0))
    except (TypeError, ValueError):
        return 0, 0


def wakeable(exc: Exception) -> bool:
    """A backoff the MT answering again may end: a retriable failure it gave no ``Retry-After`` for."""
    return isinstance(exc, errors.DrlabError) and exc.retriable and exc.retry_after_s is None


class SealerBook:
    """One Sealer per (disk, generation, key) for the life of the process. Each Sealer draws a
    fresh random incarnation, so a nonce counter never restarts under the same subkey."""

    def __init__(self, sender_id: bytes) -> None:
        self.sender_id = sender_id
        self._sealers: dict[tuple[str, int, int, bytes], Sealer] = {}

    def __repr__(self) -> str:
        return f"SealerBook(sender_id={self.sender_id.hex()}, sealers={len(self._sealers)})"

    def get(self, disk: DiskSettings, gen: int) -> Sealer:
        ident = (disk.disk_id, gen, disk.key_epoch, hashlib.sha256(disk.key).digest())
        sealer = self._sealers.get(ident)
        if sealer is None:
            sealer = Sealer(disk.key, disk.key_epoch, disk.disk_id_bytes, gen, self.sender_id)
            self._sealers[ident] = sealer
        return sealer


class Clients:
    """One mTLS client per peer URL, shared by the pipelines; every client follows the uplink's
    proxy (a change re-routes the next request of each, ps/uplink.py)."""

    def __init__(self, factory: Callable[[str], ApiClient], uplink: Uplink | None = None) -> None:
        self._factory = factory
        self._clients: dict[str, ApiClient] = {}
        self.uplink = uplink if uplink is not None else Uplink()
        self.uplink.on_proxy = self._route

    def _route(self, proxy: Proxy | None) -> None:
        for client in self._clients.values():
            self._route_one(client, proxy)

    @staticmethod
    def _route_one(client: ApiClient, proxy: Proxy | None) -> None:
        client.proxy = proxy.url if proxy else None
        client.proxy_headers = proxy.headers() if proxy else None

    def get(self, url: str) -> ApiClient:
        if not url:
            raise errors.Unavailable("no MT URL in the settings yet")
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = self._factory(url)
            self._route_one(client, self.uplink.proxy)
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


class DiskPipeline:
    def __init__(self, disk_id: str, registry: Registry, cache: BatchCache, sealers: SealerBook,
                 clients: Clients, executor: Executor | None, *, window: int, max_backoff_s: float,
                 poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.disk_id = disk_id
        self._registry = registry
        self._cache = cache
        self._sealers = sealers
        self._clients = clients
        self._executor = executor
        self._window = max(1, window)
        self._max_backoff_s = max_backoff_s
        self._poll_s = poll_interval_s
        self._wake = asyncio.Event()
        self._inflight: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_poll = 0.0
        self._poll_failures = 0
        self._mt_back = asyncio.Event()  # pulsed when the MT answers: the backoffs end (_backoff)
        self._backing_off = 0  # uploads in a retriable backoff: the loop probes the MT meanwhile
        self.log = log.bind(disk=disk_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"ps-pipeline-{self.disk_id}")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._inflight.values()) if t is not None]
        for t in tasks:
            t.cancel()
        # gather: a cancel of stop() itself still propagates (suppressing CancelledError would eat it)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            self._launch()
            disk = self._registry.disks.get(self.disk_id)
            busy = disk is not None and (self._backing_off > 0
                                         or self._registry.progress_of(self.disk_id).unapplied(disk.generation))
            if busy and disk is not None and time.monotonic() - self._last_poll >= self._poll_s:
                await self._poll_status(disk)
            with contextlib.suppress(TimeoutError):  # asyncio.timeout, unlike 3.11's wait_for, never loses a cancel
                async with asyncio.timeout(self._poll_s if busy else None):
                    await self._wake.wait()

    def _launch(self) -> None:
        if self.disk_id not in self._registry.disks:
            return
        for entry in self._cache.pending(self.disk_id):
            if len(self._inflight) >= self._window:
                break
            key = (entry.gen, entry.seq)
            if key not in self._inflight:
                task = asyncio.create_task(self._upload(entry), name=f"ps-upload-{self.disk_id}-{key[0]}-{key[1]}")
                self._inflight[key] = task
                task.add_done_callback(functools.partial(self._finished, key))

    def _finished(self, key: tuple[int, int], task: asyncio.Task[None]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled() and task.exception() is not None:
            self.log.error("upload_task_crashed", gen=key[0], seq=key[1], error=repr(task.exception()))
        self._wake.set()

    # -- one batch -----------------------------------------------------------------------------

    async def _upload(self, entry: Entry) -> None:
        blog = self.log.bind(gen=entry.gen, seq=entry.seq)
        attempt = 0
        while True:
            try:
                await self._attempt(entry, blog)
                return
            except errors.StaleGeneration as exc:
                blog.warning("batch_superseded", error=exc.message)
                await self._cache.delete(self.disk_id, entry.gen, entry.seq)
                return
            except CacheCorrupt as exc:  # never sent: the agent sees the gap and re-sends (ps/cache.py)
                blog.error("cache_batch_corrupt_dropped", error=exc.message)
                await self._cache.delete(self.disk_id, entry.gen, entry.seq, remember=False)
                return
            except Exception as exc:  # never skip a batch: log, back off and retry
                attempt += 1
                self._clients.uplink.failed(exc)
                if await self._backoff(self._after_failure(exc, attempt, blog), wakeable(exc)):
                    attempt = 0  # the MT answered again: retry now, the count restarts

    async def _backoff(self, delay_s: float, can_wake: bool) -> bool:
        """Sleep ``delay_s``; a backoff that ``can_wake`` ends early when the MT answers (True)."""
        if not can_wake:
            await asyncio.sleep(delay_s)
            return False
        self._backing_off += 1
        self._wake.set()  # the loop starts probing the MT
        try:
            async with asyncio.timeout(delay_s):
                await self._mt_back.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._backing_off -= 1

    def _mt_answered(self) -> None:
        """Pulse: every backoff waiting now ends (set then clear: later ones wait again)."""
        self._mt_back.set()
        self._mt_back.clear()

    def _after_failure(self, exc: Exception, attempt: int, blog: Any) -> float:
        if isinstance(exc, errors.DrlabError) and exc.retriable:
            blog.info("upload_retry", attempt=attempt, error=exc.message)
            if exc.retry_after_s is not None:
                return exc.retry_after_s
            return backoff_s(attempt, max_s=self._max_backoff_s)
        blog.error("upload_refused_keeping_batch", attempt=attempt, error=str(exc), kind=type(exc).__name__)
        return self._max_backoff_s

    async def _attempt(self, entry: Entry, blog: Any) -> None:
        disk = self._registry.disks.get(self.disk_id)
        if disk is None:
            raise errors.Unavailable("disk no longer served by this PS")
        if entry.gen < disk.generation:
            raise errors.StaleGeneration(f"generation {entry.gen} < current {disk.generation}")
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(self._executor, self._cache.read, self.disk_id, entry)
        sealer = self._sealers.get(disk, entry.gen)
        sealed = await loop.run_in_executor(self._executor, sealer.seal, entry.seq, data)
        path = f"/v1/disks/{self.disk_id}/batches/{entry.gen}/{entry.seq}"
        await self._clients.uplink.throttle(len(sealed))  # the bandwidth limit, if any
        _, reply = await self._clients.get(disk.mt_url).request("PUT", path, data=sealed, headers=OCTET)
        self._clients.uplink.succeeded()
        self._mt_answered()
        crashpoints.hit("ps", "after_upload")  # the MT holds it durably, the cache file is not released
        progress = self._registry.progress_of(self.disk_id)
        progress.observe_mt(entry.gen, *mt_numbers(reply))
        progress.uploaded_bytes += len(sealed)
        progress.uploaded_batches += 1
        await self._cache.delete(self.disk_id, entry.gen, entry.seq)
        blog.debug("batch_uploaded", bytes=len(sealed), mt_received=progress.mt_received)

    async def _poll_status(self, disk: DiskSettings) -> None:
        self._last_poll = time.monotonic()
        try:
            client = self._clients.get(disk.mt_control_url)
            reply = await client.get(f"/v1/disks/{self.disk_id}/status", timeout_s=max(2.0, 4 * self._poll_s))
            self._registry.progress_of(self.disk_id).observe_mt(int(reply["generation"]), *mt_numbers(reply))
            if self._poll_failures:  # the MT is back: no backoff waits longer
                self._mt_answered()
            self._poll_failures = 0
        except (errors.DrlabError, KeyError, TypeError, ValueError) as exc:
            self._poll_failures += 1
            level = self.log.info if self._poll_failures == 1 else self.log.debug
            level("mt_status_poll_failed", error=str(exc), failures=self._poll_failures)


class Uploaders:
    """Starts and stops the pipelines as the served disks change."""

    def __init__(self, registry: Registry, cache: BatchCache, sealers: SealerBook, clients: Clients,
                 executor: Executor | None, *, window: int, max_backoff_s: float,
                 poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self._registry = registry
        self._make = lambda disk_id: DiskPipeline(disk_id, registry, cache, sealers, clients, executor,
                                                  window=window, max_backoff_s=max_backoff_s,
                                                  poll_interval_s=poll_interval_s)
        self.pipelines: dict[str, DiskPipeline] = {}

    async def sync(self) -> None:
        """One pipeline per served disk; wake all so they see new settings."""
        for disk_id in list(self.pipelines):
            if disk_id not in self._registry.disks:
                log.info("pipeline_stopped", disk=disk_id)
                await self.pipelines.pop(disk_id).stop()
        for disk_id in self._registry.disks:
            if disk_id not in self.pipelines:
                pipeline = self.pipelines[disk_id] = self._make(disk_id)
                pipeline.start()
                log.info("pipeline_started", disk=disk_id)
            self.pipelines[disk_id].wake()

    def notify(self, disk_id: str) -> None:
        pipeline = self.pipelines.get(disk_id)
        if pipeline is not None:
            pipeline.wake()

    async def stop(self) -> None:
        for pipeline in self.pipelines.values():
            await pipeline.stop()
        self.pipelines.clear()
