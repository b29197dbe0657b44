"""The agent's data path: tracker -> batcher -> per-disk uploaders, with back-pressure.

:class:`Replicator` owns one :class:`Pipeline` per protected disk (one generation each) and
the machine-wide tracker, batcher and batch clock. It decides nothing about the control plane:
the service opens and closes pipelines as the settings document says.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Any

from agent.backlog import Backlog
from agent.batcher import BatchClock, Batcher, DiskStream
from agent.disk import DiskImage
from agent.resync import ResyncJob
from agent.tasks import cancel_and_wait
from agent.tracker import Tracker
from agent.uploader import DiskUploader
from common import logging as dlog
from common.config import AgentConfig
from common.http import ApiClient
from common.wire import batch as wb

log = dlog.get("drlab.agent.replication")


@dataclass
class Pipeline:
    index: int
    name: str
    disk_id: str
    ps_url: str
    stream: DiskStream
    uploader: DiskUploader
    resync: ResyncJob | None = None
    resync_task: asyncio.Task[None] | None = None
    protected: bool = False

    @property
    def generation(self) -> int:
        return self.stream.generation

    @property
    def state(self) -> str:
        if self.uploader.stale:
            return "stale"
        return "protected" if self.protected else "initial-replication"

    def update_protected(self) -> bool:
        """Latch 'protected' once the MT applied the RESYNC_DONE batch; True on the transition."""
        done = self.stream.resync_done_seq
        if not self.protected and done and self.uploader.mt_applied >= done:
            self.protected = True
            return True
        return False

    @property
    def percent(self) -> float:
        if self.protected:
            return 100.0
        if self.resync is None:
            return 99.0 if self.stream.resync_done_seq else 0.0
        return min(99.0, round(self.resync.percent, 1))

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "percent": self.percent, "generation": self.generation,
                "disk_id": self.disk_id, "next_seq": self.stream.next_seq, "acked_seq": self.uploader.acked_seq,
                "ps_durable": self.uploader.ps_durable, "mt_received": self.uploader.mt_received,
                "mt_applied": self.uploader.mt_applied, "resync_done_seq": self.stream.resync_done_seq,
                "unacked_bytes": self.uploader.unacked_bytes, "send_failures": self.uploader.failures,
                "bytes_done": self.resync.bytes_done if self.resync else 0,
                "bytes_total": self.resync.bytes_total if self.resync else 0}


class Replicator:
    def __init__(self, cfg: AgentConfig, disks: list[DiskImage], ssl_context: ssl.SSLContext) -> None:
        self.cfg = cfg
        self.disks = disks
        self._ssl = ssl_context
        self.tracker = Tracker()
        self.batcher = Batcher(self.tracker, cfg.batch_max_bytes)
        self.backlog = Backlog(cfg.backlog_max_bytes, self._backlog_bytes)
        self.clock = BatchClock(self.batcher, cfg.batch_max_ms / 1000.0, self._emit)
        self.pipelines: dict[int, Pipeline] = {}
        self._clients: dict[str, ApiClient] = {}

    def start(self) -> None:
        self.clock.start()

    async def stop(self) -> None:
        await self.clock.stop()
        for index in list(self.pipelines):
            await self.close(index)
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    # ------------------------------------------------------------ write path

    async def write(self, index: int, wnum: int, offset: int, data: bytes) -> None:
        """Apply a client write to the source image and track it (after back-pressure room)."""
        disk = self.disks[index]
        disk.check(offset, len(data))
        self.tracker.check_wnum(wnum)
        await self.backlog.wait_room()
        self.tracker.check_wnum(wnum)  # another writer may have gone first while we waited
        disk.pwrite(offset, data)
        self.tracker.record_write(index, wnum, offset, data, time.time_ns())
        self.clock.cut_if_full()

    # ------------------------------------------------------------ pipelines

    def open(self, index: int, *, disk_id: str, generation: int, ps_url: str, next_seq: int = 1,
             resync_from: int | None = 0, skip_zero: bool = False, resync_done_seq: int = 0) -> Pipeline:
        """Start replicating disk ``index`` under ``generation``. ``resync_from`` is the offset to
        copy from (None: no copy needed, the stream is in data mode)."""
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
        self.batcher.open(stream)
        uploader.start()
        if resync_from is not None:
            pipe.resync = ResyncJob(disk, index, self.tracker, self.backlog, chunk_bytes=self.cfg.resync_chunk_bytes,
                                    skip_zero=skip_zero, on_chunk=self.clock.cut_if_full)
            pipe.resync.bytes_done = resync_from
            pipe.resync_task = asyncio.create_task(pipe.resync.run(), name=f"resync-{disk.name}")
        log.info("pipeline_opened", disk=disk_id, name=disk.name, gen=generation, seq=next_seq,
                 resync_from=resync_from, skip_zero=skip_zero)
        return pipe

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

    async def stop_resyncs(self) -> None:
        """Stop copying (a clean stop): what was recorded is cut and sent by :meth:`drain`."""
        await cancel_and_wait([p.resync_task for p in self.pipelines.values()])

    async def drain(self, timeout_s: float) -> bool:
        """Cut what is pending and wait until the PS has every batch durable."""
        self.clock.cut_now()
        deadline = time.monotonic() + timeout_s
        ok = True
        for pipe in self.pipelines.values():
            ok = await pipe.uploader.drain(max(0.0, deadline - time.monotonic())) and ok
        return ok

    def _client(self, ps_url: str) -> ApiClient:
        if ps_url not in self._clients:
            self._clients[ps_url] = ApiClient(ps_url, self._ssl, timeout_s=self.cfg.request_timeout_s,
                                              limit=max(4, 2 * self.cfg.upload_window_batches))
        return self._clients[ps_url]

    def _stale(self, index: int) -> None:
        """The PS refused our generation: stop tracking that disk until the settings restart it."""
        self.batcher.close(index)
        self.backlog.notify()

    def _emit(self, batches: list[wb.ChangeBatch]) -> None:
        for batch in batches:
            index = self._index_of(batch.disk_id)
            pipe = self.pipelines[index]
            pipe.uploader.submit(batch.seq, wb.encode(batch))
            if batch.flags & wb.Flags.RESYNC_DONE:
                log.info("resync_done_batch", disk=pipe.disk_id, gen=batch.generation, seq=batch.seq)

    def _index_of(self, disk_id: bytes) -> int:
        for index, pipe in self.pipelines.items():
            if pipe.stream.disk_id == disk_id:
                return index
        raise KeyError(disk_id.hex())

    def _backlog_bytes(self) -> int:
        return self.tracker.total_bytes() + sum(p.uploader.unacked_bytes for p in self.pipelines.values()
                                                if not p.uploader.stale)
