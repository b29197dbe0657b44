"""Per-disk uploader: sends numbered batches to the disk's PS, a window at a time.

Rules:
- a batch's bytes are kept until the PS answers 201/200 (durable in its cache); a re-send
  uses the very same bytes, so (gen, seq, checksum) never changes;
- every call has a timeout; retriable failures (transport, 503, 507 with Retry-After) are
  retried forever with backoff; other failures are retried at the maximum backoff and logged,
  except 409 stale_generation, which stops the pipeline: the disk was re-generationed and the
  settings document will start a new one;
- ``acked_seq`` is the highest seq such that every seq up to it is durable at the PS;
- :meth:`retarget` moves the stream to another PS (a PS switch in the same generation): the
  sends in flight are cancelled and every batch not yet acknowledged is sent again, in seq
  order, with the same bytes, to the new PS (the MT takes an identical re-send as a no-op).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from common import errors
from common import logging as dlog
from common.http import ApiClient, backoff_s
from common.tasks import cancel_and_wait

log = dlog.get("drlab.agent.uploader")


class DiskUploader:
    def __init__(self, client: ApiClient, *, disk_id: str, generation: int, first_seq: int, window: int,
                 timeout_s: float, max_backoff_s: float, on_change: Callable[[], None],
                 on_stale: Callable[[], None]) -> None:
        self.client = client
        self.disk_id = disk_id
        self.generation = generation
        self.window = max(1, window)
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self._on_change = on_change
        self._on_stale = on_stale
        self.acked_seq = first_seq - 1
        self.last_submitted = first_seq - 1
        self.ps_durable = self.mt_received = self.mt_applied = 0
        self.stale = False
        self.failures = 0
        # health (cs/health): since when sends have failed in a row (None: the last one succeeded), and how
        self.failing_since_ns: int | None = None
        self.last_error = ""
        self.throttles = 0  # 507 answers received
        self.throttled_at = float("-inf")  # monotonic time of the last 507
        self.resent_bytes = 0  # bytes queued again by :meth:`retarget` (a PS switch)
        self._acked_ahead: set[int] = set()
        self._unacked: dict[int, bytes] = {}  # seq -> the batch, until the PS acknowledged it
        self._queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self._drained = asyncio.Event()
        self._drained.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.log = log.bind(disk=disk_id, gen=generation)

    @property
    def unacked_bytes(self) -> int:
        return sum(len(b) for b in self._unacked.values())

    @property
    def unacked_batches(self) -> int:
        return len(self._unacked)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(), name=f"upload-{self.disk_id[:8]}-{i}")
                       for i in range(self.window)]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    def submit(self, seq: int, data: bytes) -> None:
        if seq != self.last_submitted + 1:
            raise ValueError(f"seq {seq} submitted after {self.last_submitted}: batches must have no gaps")
        self.last_submitted = seq
        self._unacked[seq] = data
        self._drained.clear()
        self._queue.put_nowait((seq, data))

    async def retarget(self, client: ApiClient) -> int:
        """Send from now on to another PS: cancel the sends in flight and queue every batch not
        yet acknowledged again, in seq order. Returns how many batches are re-sent."""
        await self.stop()
        self.client = client
        self._queue = asyncio.Queue()
        for seq in sorted(self._unacked):
            self._queue.put_nowait((seq, self._unacked[seq]))
        self.resent_bytes += self.unacked_bytes
        self.start()
        self.log.info("uploader_retargeted", resend_batches=len(self._unacked), acked_seq=self.acked_seq)
        return len(self._unacked)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted batch is durable at the PS; False on timeout or stale."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout_s)
        except TimeoutError:
            return False
        return not self.stale

    async def refresh_status(self) -> dict[str, Any] | None:
        """Ask the PS how far the MT got (batches acked earlier carry older numbers); the PS's
        answer when it is about this generation, else None."""
        body = await self.client.get(f"/v1/disks/{self.disk_id}/status", timeout_s=self.timeout_s)
        if isinstance(body, dict) and int(body.get("generation", 0)) == self.generation:
            self._note(body)
            self._on_change()
            return body
        return None

    async def _worker(self) -> None:
        while not self.stale:
            seq, data = await self._queue.get()
            await self._send(seq, data)

    async def _send(self, seq: int, data: bytes) -> None:
        path = f"/v1/disks/{self.disk_id}/batches/{self.generation}/{seq}"
        attempt = 0
        while not self.stale:
            try:
                _status, body = await self.client.request("PUT", path, data=data, timeout_s=self.timeout_s)
            except errors.StaleGeneration as exc:
                self._mark_stale(seq, exc)
                return
            except errors.DrlabError as exc:
                attempt += 1
                self.failures += 1
                self.failing_since_ns = self.failing_since_ns or time.time_ns()
                self.last_error = exc.code
                await asyncio.sleep(self._delay(seq, attempt, exc))
                continue
            self._acked(seq, body if isinstance(body, dict) else {})
            return

    def _delay(self, seq: int, attempt: int, exc: errors.DrlabError) -> float:
        if exc.status == 507:
            self.throttles += 1
            self.throttled_at = time.monotonic()
        if exc.retry_after_s is not None:
            delay = exc.retry_after_s
        elif exc.retriable:
            delay = backoff_s(attempt, max_s=self.max_backoff_s)
        else:
            delay = self.max_backoff_s
        level = self.log.warning if exc.retriable else self.log.error
        level("batch_send_failed", seq=seq, attempt=attempt, code=exc.code, error=exc.message,
              delay_s=round(delay, 3))
        return delay

    def _mark_stale(self, seq: int, exc: errors.DrlabError) -> None:
        self.log.warning("generation_stale", seq=seq, error=exc.message)
        self.stale = True
        self._drained.set()
        self._on_stale()

    def _acked(self, seq: int, body: dict[str, Any]) -> None:
        self._unacked.pop(seq, None)
        self.failing_since_ns = None
        self._acked_ahead.add(seq)
        while self.acked_seq + 1 in self._acked_ahead:
            self.acked_seq += 1
            self._acked_ahead.discard(self.acked_seq)
        self._note(body)
        if not self._unacked:
            self._drained.set()
        self.log.debug("batch_acked", seq=seq, mt_applied=self.mt_applied)
        self._on_change()

    def _note(self, body: dict[str, Any]) -> None:
        self.ps_durable = max(self.ps_durable, int(body.get("ps_durable", 0)))
        self.mt_received = max(self.mt_received, int(body.get("mt_received", 0)))
        self.mt_applied = max(self.mt_applied, int(body.get("mt_applied", 0)))
