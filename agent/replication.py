"""The agent's data path: activity log -> tracker (data / metadata / bitmap) -> batcher ->
per-disk uploaders, with the PS-loss and tracking-mode decisions.

:class:`Replicator` owns one :class:`Pipeline` per protected disk (one generation each) and
the machine-wide tracker, batcher and batch clock. It decides nothing about the control plane:
the service opens and closes pipelines as the settings document says.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable

from agent.actlog import ActivityLog
from agent.backlog import Backlog
from agent.batcher import BatchClock, Batcher, DiskStream, Stamped
from agent.disk import DiskImage, TornWrite, WritesStopped
from agent.modes import Measure, ModePolicy, next_mode
from agent.pipeline import Pipeline
from agent.psloss import LossDetector
from agent.resync import RemoteHashes, ResyncJob
from agent.tracker import Tracker, TrackMode
from agent.uploader import DiskUploader
from common import errors
from common import logging as dlog
from common.config import AgentConfig
from common.http import ApiClient
from common.tasks import cancel_and_wait
from common.wire import batch as wb

log = dlog.get("drlab.agent.replication")


class Replicator:
    def __init__(self, cfg: AgentConfig, disks: list[DiskImage], ssl_context: ssl.SSLContext,
                 actlog: ActivityLog | None = None, on_ps_lost: Callable[[int], None] | None = None,
                 on_protected: Callable[[int], None] | None = None) -> None:
        self.cfg = cfg
        self.disks = disks
        self._ssl = ssl_context
        self.actlog = actlog
        self._on_ps_lost = on_ps_lost
        self._on_protected = on_protected
        self.tracker = Tracker(block_bytes=cfg.bitmap_block_bytes)
        self.batcher = Batcher(self.tracker, cfg.batch_max_bytes, reader=lambda i: self.disks[i].pread)
        self.policy = ModePolicy(memory_bytes=cfg.backlog_max_bytes, metadata_max_bytes=cfg.metadata_max_bytes)
        self.backlog = Backlog(cfg.backlog_max_bytes, self._backlog_bytes)
        self.clock = BatchClock(cfg.batch_max_ms / 1000.0, self.tick)
        self.pipelines: dict[int, Pipeline] = {}
        self._clients: dict[str, ApiClient] = {}
        self._write_lock = asyncio.Lock()
        # disks replicated since they were opened, between pipelines too: their writes are logged
        # in the activity log even while no pipeline tracks them (a generation switch)
        self.protected: set[int] = set()
        self._watch_task: asyncio.Task[None] | None = None
        self.mode_changes: list[tuple[str, str, str, str]] = []  # (disk, from, to, why), recent first out
        self.writes_stopped: str | None = None  # why writes are refused (a planned failover: agent/shutdown.py)

    def start(self) -> None:
        self.clock.start()
        self._watch_task = asyncio.create_task(self._watch(), name="replication-watch")

    async def stop(self) -> None:
        await self.clock.stop()
        await cancel_and_wait([self._watch_task])
        self._watch_task = None
        for index in list(self.pipelines):
            await self.close(index)
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    # ------------------------------------------------------------ write path

    async def write(self, index: int, wnum: int, offset: int, data: bytes) -> None:
        """Apply a client write to the source image and track it. Writes never wait for the
        network: under pressure the tracker degrades instead (agent/modes.py). A write to a cold
        extent waits until the activity log marking it hot is durable."""
        disk = self.disks[index]
        disk.check(offset, len(data))
        self.tracker.check_wnum(wnum)
        async with self._write_lock:
            self._check_running()
            self.tracker.check_wnum(wnum)  # another writer may have gone first while we waited
            await self._apply(index, wnum, offset, data)
        self._after_write(index)

    async def write_next(self, index: int, offset: int, data: bytes) -> int:
        """A write whose number the agent assigns (block clients that keep no write log, e.g. NBD)."""
        self.disks[index].check(offset, len(data))
        async with self._write_lock:
            self._check_running()
            wnum = self.tracker.last_wnum + 1
            await self._apply(index, wnum, offset, data)
        self._after_write(index)
        return wnum

    def _check_running(self) -> None:
        if self.writes_stopped is not None:
            raise WritesStopped(self.writes_stopped)

    async def _apply(self, index: int, wnum: int, offset: int, data: bytes) -> None:
        """Activity log (durable if the extent was cold) -> the disk -> the tracker (under the lock).
        A disk write that fails part-way still fails the client write (its wnum stays unused), but
        its range is tracked first, so the next cut sends what the source disk now holds there."""
        if self.actlog is not None and index in self.protected and self.actlog.mark(index, offset, len(data)):
            await self.actlog.ensure()
        try:
            self.disks[index].pwrite(offset, data)
        except TornWrite as exc:
            tracked = self.tracker.record_torn(index, offset, len(data), time.time_ns())
            log.error("disk_write_torn", disk=self.disks[index].name, wnum=wnum, offset=offset, length=len(data),
                      written=exc.done, tracked=tracked, error=str(exc))
            raise
        self.tracker.record_write(index, wnum, offset, data, time.time_ns())

    def _after_write(self, index: int) -> None:
        if not self.tracker.watching(index):
            return
        self._update_mode(index)
        mode = self.tracker.mode(index)
        if self.batcher.size_due():
            self.cut_now()
        elif mode is TrackMode.METADATA and self.tracker.pending_bytes(index) >= self.cfg.batch_max_bytes \
                and self.has_room():
            self.cut_now()

    # ------------------------------------------------------------ cutting

    def has_room(self) -> bool:
        """Whether to read regions back (metadata, bitmap) now: the machine is under its memory
        bound and no PS throttled lately (batches read now would only wait in memory)."""
        calm = time.monotonic() - self.policy.calm_s
        if any(p.uploader.throttled_at > calm for p in self.pipelines.values()):
            return False
        return self._backlog_bytes() < self.policy.memory_bytes

    def tick(self) -> None:
        """The batch clock: re-evaluate modes, then cut if there is room or data is held (a cut at
        one machine-wide boundary takes every disk: metadata regions are read back then too, so
        the memory bound can be overshot by at most one cut's worth of them)."""
        for index in list(self.pipelines):
            if self.tracker.watching(index):
                self._update_mode(index)
        if self.has_room() or self.tracker.total_bytes() > 0:
            self.cut_now()  # held data costs nothing more once cut; reading regions back needs room

    def cut_now(self) -> int:
        """Cut every disk now (at one machine-wide boundary); the number of batches cut."""
        stamped = self.batcher.cut_all_stamped(time.time_ns())
        for item in stamped:
            self._emit(item)
        return len(stamped)

    # ------------------------------------------------------------ bookmarks

    async def freeze(self) -> None:
        """Hold every write of the machine (a write in progress finishes first) until :meth:`thaw`."""
        await self._write_lock.acquire()

    def thaw(self) -> None:
        if self._write_lock.locked():
            self._write_lock.release()

    def bookmark(self, tag: bytes) -> dict[str, tuple[int, int]]:
        """Cut every replicating disk now, at one machine-wide boundary, with ``tag`` on each
        batch; {disk id: (generation, seq)} of the batches that carry it."""
        now = time.time_ns()
        for index, pipe in self.pipelines.items():
            if self.tracker.watching(index) and not pipe.uploader.stale:
                self.tracker.add_tag(index, tag, now)
        stamped = self.batcher.cut_all_stamped(now)
        for item in stamped:
            self._emit(item)
        return {item.batch.disk_id.hex(): (item.batch.generation, item.batch.seq) for item in stamped
                if tag in item.batch.tags}

    def _emit(self, item: Stamped) -> None:
        batch = item.batch
        index = self._index_of(batch.disk_id)
        pipe = self.pipelines[index]
        if item.folded:
            self._mode_changed(pipe, TrackMode.METADATA, TrackMode.BITMAP, "batch-bound")
        done = bool(batch.flags & wb.Flags.RESYNC_DONE)
        if self.actlog is not None:
            self.actlog.note_cut(index, batch.seq, item.extents, done)
        pipe.uploader.submit(batch.seq, wb.encode(batch))
        pipe.batches_by_mode[wb.Mode(batch.mode).name] = pipe.batches_by_mode.get(wb.Mode(batch.mode).name, 0) + 1
        if done:
            log.info("resync_done_batch", disk=pipe.disk_id, gen=batch.generation, seq=batch.seq,
                     mode=wb.Mode(batch.mode).name)
        if self.tracker.watching(index):
            self._update_mode(index)

    def _update_mode(self, index: int) -> None:
        pipe = self.pipelines.get(index)
        if pipe is None:
            return
        mode = self.tracker.mode(index)
        since = time.monotonic() - pipe.uploader.throttled_at
        measure = Measure(mode=mode, held_bytes=self._backlog_bytes(),
                          metadata_bytes=self.tracker.pending_bytes(index) - self.tracker.held_bytes(index),
                          bitmap_bytes=self.tracker.bitmap_dirty_bytes(index), since_throttle_s=since)
        new, why = next_mode(self.policy, measure)
        if new is mode:
            return
        self.tracker.set_mode(index, new)
        self._mode_changed(pipe, mode, new, why)

    def _mode_changed(self, pipe: Pipeline, old: TrackMode, new: TrackMode, why: str) -> None:
        pipe.mode = new.value
        pipe.mode_changes += 1
        self.mode_changes.append((pipe.disk_id, old.value, new.value, why))
        del self.mode_changes[:-64]
        log.info("tracking_mode_changed", disk=pipe.disk_id, gen=pipe.generation, old=old.value, new=new.value,
                 reason=why, held_bytes=self._backlog_bytes())

    # ------------------------------------------------------------ pipelines

    def open(self, index: int, *, disk_id: str, generation: int, ps_url: str, next_seq: int = 1,
             resync_from: int | None = 0, skip_zero: bool = False, resync_done_seq: int = 0,
             resync_extents: list[tuple[int, int]] | None = None, reason: str = "initial") -> Pipeline:
        """Start replicating disk ``index`` under ``generation``. ``resync_from`` is the offset to
        copy from (None: no copy needed, the stream is in data mode); ``resync_extents`` limits
        the copy to those regions (None: the whole disk)."""
        if index in self.pipelines:
            raise RuntimeError(f"disk {index} already has a pipeline")
        disk = self.disks[index]
        stream = DiskStream(index=index, disk_id=bytes.fromhex(disk_id), generation=generation, next_seq=next_seq,
                            resyncing=resync_from is not None, resync_started=resync_from is not None and next_seq > 1,
                            resync_done_seq=resync_done_seq)
        uploader = DiskUploader(self._client(ps_url), disk_id=disk_id, generation=generation, first_seq=next_seq,
                                window=self.cfg.upload_window_batches, timeout_s=self.cfg.request_timeout_s,
                                max_backoff_s=self.cfg.retry_max_backoff_s, on_change=self.backlog.notify,
                                on_stale=lambda: self._stale(index))
        pipe = Pipeline(index=index, name=disk.name, disk_id=disk_id, ps_url=ps_url, stream=stream, uploader=uploader)
        self.pipelines[index] = pipe
        self.protected.add(index)
        self.batcher.open(stream, disk.size_bytes)
        if self.actlog is not None and resync_from is not None:
            self.actlog.pin_all(index)
        uploader.start()
        if resync_from is not None:
            # over a zero-filled replica (skip_zero) copy; else compare block hashes with the MT's
            block = self.cfg.hash_block_bytes if resync_extents is None else self.cfg.hot_hash_block_bytes
            hashes = None if skip_zero else RemoteHashes(uploader, block_bytes=block,
                                                         request_bytes=self.cfg.hash_request_bytes,
                                                         max_backoff_s=self.cfg.retry_max_backoff_s)
            pipe.resync = ResyncJob(disk, index, self.tracker, self.backlog, chunk_bytes=self.cfg.resync_chunk_bytes,
                                    skip_zero=skip_zero, on_chunk=self._on_chunk, extents=resync_extents,
                                    reason=reason, hashes=hashes, cut_now=self.cut_now)
            pipe.resync.bytes_done = resync_from
            pipe.resync_task = asyncio.create_task(pipe.resync.run(), name=f"resync-{disk.name}")
        log.info("pipeline_opened", disk=disk_id, name=disk.name, gen=generation, seq=next_seq,
                 resync_from=resync_from, skip_zero=skip_zero, reason=reason,
                 resync_bytes=None if resync_extents is None else sum(n for _, n in resync_extents))
        return pipe

    def _on_chunk(self) -> None:
        if self.batcher.size_due():
            self.cut_now()

    async def close(self, index: int) -> Pipeline | None:
        pipe = self.pipelines.pop(index, None)
        if pipe is None:
            return None
        await cancel_and_wait([pipe.resync_task])
        self.batcher.close(index)
        await pipe.uploader.stop()
        self.backlog.notify()
        log.info("pipeline_closed", disk=pipe.disk_id, gen=pipe.generation, next_seq=pipe.stream.next_seq,
                 acked_seq=pipe.uploader.acked_seq)
        return pipe

    async def switch_ps(self, index: int, ps_url: str) -> bool:
        """The disk moved to another PS in the same generation (a PS switch with the old PS
        alive): keep the stream and its seqs, send every batch not yet acknowledged, and the
        following ones, to the new PS. False if the disk has no pipeline or already uses it."""
        pipe = self.pipelines.get(index)
        if pipe is None or pipe.ps_url == ps_url:
            return False
        old, floor = pipe.ps_url, pipe.uploader.acked_seq + 1
        pipe.ps_url = ps_url
        pipe.loss = LossDetector(confirm_s=pipe.loss.confirm_s, floor=floor)
        resend = await pipe.uploader.retarget(self._client(ps_url))
        pipe.switches += 1
        log.info("ps_switched", disk=pipe.disk_id, gen=pipe.generation, old_ps=old, new_ps=ps_url, first_seq=floor,
                 resend_batches=resend, next_seq=pipe.stream.next_seq)
        return True

    async def unprotect(self, index: int) -> None:
        """Protection removed: close the pipeline and forget the disk's hot extents."""
        await self.close(index)
        self.protected.discard(index)
        if self.actlog is not None:
            self.actlog.forget(index)

    async def stop_resyncs(self) -> None:
        """Stop copying (a clean stop): what was recorded is cut and sent by :meth:`drain`."""
        await cancel_and_wait([p.resync_task for p in self.pipelines.values()])

    async def drain(self, timeout_s: float) -> bool:
        """Cut what is pending and wait until the PS has every batch durable (a stream still
        draining a bitmap is not drained: its dirty blocks stay hot in the activity log)."""
        self.cut_now()
        deadline = time.monotonic() + timeout_s
        ok = not any(p.stream.bitmap for p in self.pipelines.values())
        for pipe in self.pipelines.values():
            ok = await pipe.uploader.drain(max(0.0, deadline - time.monotonic())) and ok
        return ok

    # ------------------------------------------------------------ watch: progress, cooling, PS loss

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.watch_interval_s)
            for pipe in list(self.pipelines.values()):
                try:
                    await self._watch_pipe(pipe)
                except Exception as exc:  # e.g. state.json on a full disk: never end the watch
                    log.error("watch_failed", disk=pipe.disk_id, error=str(exc), kind=type(exc).__name__)
            if self.actlog is not None and self.actlog.dirty:
                try:
                    await self.actlog.flush()
                except OSError as exc:  # a full disk: the next write that needs it fails and retries
                    log.error("activity_log_flush_failed", error=str(exc))

    async def _watch_pipe(self, pipe: Pipeline) -> None:
        if pipe.uploader.stale:
            return
        try:
            body = await pipe.uploader.refresh_status()
        except errors.DrlabError as exc:
            log.debug("status_poll_failed", disk=pipe.disk_id, error=exc.message)
            return
        if pipe.protected and not pipe.protected_noted:  # latched by the progress reporter
            pipe.protected_noted = True
            if self._on_protected is not None:
                self._on_protected(pipe.index)
        if self.actlog is not None and self.tracker.watching(pipe.index):
            self.actlog.cool(pipe.index, pipe.uploader.mt_applied,
                             lambda off, n: self.tracker.busy(pipe.index, off, n))
        if body is not None and pipe.loss.observe(body, pipe.uploader.acked_seq, time.monotonic()):
            log.warning("ps_lost_batches", disk=pipe.disk_id, gen=pipe.generation, acked_seq=pipe.uploader.acked_seq,
                        mt_received=body.get("mt_received"), held_from=body.get("held_from"))
            if self._on_ps_lost is not None:
                self._on_ps_lost(pipe.index)

    # ------------------------------------------------------------ helpers

    def _client(self, ps_url: str) -> ApiClient:
        if ps_url not in self._clients:
            self._clients[ps_url] = ApiClient(ps_url, self._ssl, timeout_s=self.cfg.request_timeout_s,
                                              limit=max(4, 2 * self.cfg.upload_window_batches),
                                              bulk_threads=2 * self.cfg.upload_window_batches,
                                              stall_timeout_s=self.cfg.stall_timeout_s)
        return self._clients[ps_url]

    def _stale(self, index: int) -> None:
        """The PS refused our generation: stop tracking that disk until the settings restart it."""
        self.batcher.close(index)
        self.backlog.notify()

    def _index_of(self, disk_id: bytes) -> int:
        for index, pipe in self.pipelines.items():
            if pipe.stream.disk_id == disk_id:
                return index
        raise KeyError(disk_id.hex())

    def _backlog_bytes(self) -> int:
        return self.tracker.total_bytes() + sum(p.uploader.unacked_bytes for p in self.pipelines.values()
                                                if not p.uploader.stale)
