"""One protected disk's replication pipeline within a generation: its batch stream, its uploader,
its initial replication or resync, its PS-loss detector and tracking mode, and the status the
agent's heartbeat reports for it. :class:`agent.replication.Replicator` owns one per disk."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from agent.batcher import DiskStream
from agent.psloss import LossDetector
from agent.resync import ResyncJob
from agent.uploader import DiskUploader


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
    loss: LossDetector = field(default_factory=LossDetector)
    protected_noted: bool = False  # the service persisted the end of the copy
    mode: str = "data"  # the tracker's mode for this disk
    mode_changes: int = 0
    batches_by_mode: dict[str, int] = field(default_factory=dict)
    switches: int = 0  # PS switches within this generation (agent/replication.py switch_ps)

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
                "disk_id": self.disk_id, "ps_url": self.ps_url, "ps_switches": self.switches,
                "switch_resent_bytes": self.uploader.resent_bytes,
                "next_seq": self.stream.next_seq, "acked_seq": self.uploader.acked_seq,
                "ps_durable": self.uploader.ps_durable, "mt_received": self.uploader.mt_received,
                "mt_applied": self.uploader.mt_applied, "resync_done_seq": self.stream.resync_done_seq,
                "unacked_bytes": self.uploader.unacked_bytes, "send_failures": self.uploader.failures,
                "bytes_done": self.resync.bytes_done if self.resync else 0,
                "bytes_total": self.resync.bytes_total if self.resync else 0,
                **self.resync_status(),
                **self.tracking_status()}

    def resync_status(self) -> dict[str, Any]:
        job = self.resync
        if job is None:
            return {"resync_mode": None, "resync_reason": None, "bytes_compared": 0, "bytes_sent": 0}
        return {"resync_mode": job.mode, "resync_reason": job.reason, "bytes_compared": job.bytes_compared,
                "bytes_sent": job.bytes_sent}

    def tracking_status(self) -> dict[str, Any]:
        return {"mode": self.mode, "mode_changes": self.mode_changes, "batches_by_mode": dict(self.batches_by_mode),
                "throttles": self.uploader.throttles}
