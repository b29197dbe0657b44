"""The blocking shell of retention (the rule: mt/retention.py) for one disk's :class:`DiskStore`.

:meth:`Pruner.run` gathers the facts under the store's lock (so no batch, view pin or failover
commit runs meanwhile), decides, and prunes: the journal's floor marker first, then the catalog
rows of the pruned points (one transaction), then the segment files (mt/journal.py rule 5; a crash
in between leaves only segments below the floor, removed when the disk is opened). It also says
whether applying must pause for low space; the worker (mt/worker.py) obeys and the heartbeat
reports it (``retention`` in each disk's metrics; cs/health/rules.py raises
``retention_low_space``). Blocking: call from a worker thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import logging as dlog
from common.config import MTConfig
from mt import applylog, retention
from mt.apply import DiskStore
from mt.settings import DiskSettings

log = dlog.get("drlab.mt.pruner")


@dataclass(frozen=True)
class Policy:
    window_s: int = 0
    action: str = "prune"

    @classmethod
    def of(cls, disk: DiskSettings | None) -> Policy:
        return cls(disk.retention_window_s, disk.low_space_action) if disk is not None else cls()


class Volume:
    """The retention volume: a byte budget over every disk's journal, or the file system's space."""

    def __init__(self, data_dir: Path, max_bytes: int = 0, low_pct: float = 10.0, resume_pct: float = 15.0) -> None:
        self.data_dir = data_dir
        self.max_bytes = max_bytes
        self.low_pct = low_pct
        self.resume_pct = resume_pct

    @classmethod
    def of(cls, cfg: MTConfig) -> Volume:
        return cls(cfg.data_dir, cfg.retention_max_bytes, cfg.retention_low_free_pct, cfg.retention_resume_free_pct)

    def space(self) -> tuple[int, int]:
        """(free bytes, total bytes)."""
        if self.max_bytes:
            used = 0
            for seg in (self.data_dir / "journal").glob("*/*.seg"):
                try:
                    used += seg.stat().st_size
                except FileNotFoundError:
                    pass
            return max(0, self.max_bytes - used), self.max_bytes
        st = os.statvfs(self.data_dir)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


class Pruner:
    def __init__(self, store: DiskStore, volume: Volume, policy: Callable[[], Policy] = Policy) -> None:
        self.store = store
        self.volume = volume
        self.policy = policy
        self.paused = False
        self.low_space = False
        self.free_bytes = 0
        self.total_bytes = 0
        self.pruned_segments = 0
        self.pruned_points = 0
        self.pruned_for_space = 0
        self.log = log.bind(disk=store.disk_id)

    def __repr__(self) -> str:
        return f"Pruner({self.store.disk_id}, paused={self.paused})"

    def facts(self, policy: Policy, now_ns: int) -> retention.Facts:
        journal = self.store.journal
        times = self.store.catalog.segment_times(self.store.disk_id)
        segs = tuple(retention.Segment(s, times.get(s), journal.size_of(s)) for s in journal.segments())
        self.free_bytes, self.total_bytes = self.volume.space()
        need = retention.need_bytes(self.free_bytes, self.total_bytes, self.volume.low_pct, self.volume.resume_pct,
                                    self.paused or self.low_space)
        return retention.Facts(segs, journal.segno, journal.pinned_from(), now_ns, policy.window_s, need,
                               policy.action)

    def run(self, now_ns: int | None = None) -> retention.Decision:
        """Decide and prune (module docstring); updates ``paused`` and ``low_space``."""
        policy = self.policy()
        with self.store.lock:
            if self.store.closed:
                return retention.Decision((), 0, 0, False, 0)
            facts = self.facts(policy, time.time_ns() if now_ns is None else now_ns)
            decision = retention.decide(facts)
            if decision.through is not None:
                self._prune(decision)
        low = facts.need_bytes > 0
        if low != self.low_space or decision.pause != self.paused:
            self.log.warning("retention_low_space" if low else "retention_space_ok", action=policy.action,
                             paused=decision.pause, free_bytes=self.free_bytes, total_bytes=self.total_bytes,
                             need_bytes=facts.need_bytes)
        self.low_space, self.paused = low, decision.pause
        return decision

    def _prune(self, decision: retention.Decision) -> None:
        """Apply-log summary (mt/applylog.py), floor marker, catalog rows (all but the boundary),
        segment files — in this order."""
        store, through = self.store, decision.through
        assert through is not None
        points = store.catalog.in_segments_through(store.disk_id, through)
        boundary = points[-1].key if points else None
        applylog.note_pruned(store.journal.directory, store.disk_id, through + 1)  # before the floor moves
        store.journal.mark_pruned(through + 1, boundary)
        store.catalog.delete(store.disk_id, [p.key for p in points[:-1]])
        removed = store.journal.remove_pruned()
        self.pruned_segments += removed
        self.pruned_points += max(0, len(points) - 1)
        self.pruned_for_space += decision.by_space
        self.log.info("retention_pruned", through=through, segments=removed, points=max(0, len(points) - 1),
                      by_window=decision.by_window, by_space=decision.by_space, freed_bytes=decision.freed_bytes,
                      boundary=list(boundary) if boundary else None)

    def metrics(self) -> dict[str, Any]:
        policy = self.policy()
        return {"paused": self.paused, "low_space": self.low_space, "action": policy.action,
                "window_s": policy.window_s, "free_bytes": self.free_bytes, "total_bytes": self.total_bytes,
                "pruned_segments": self.pruned_segments, "pruned_points": self.pruned_points,
                "pruned_for_space": self.pruned_for_space}
