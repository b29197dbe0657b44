"""When the PS refuses new batches (pure: no I/O, no clock — the caller passes samples and times).

Two rules, each with hysteresis so that a throttle does not flap:

- **cache-wide** (reason ``cache_free``): the cache's free space — the smaller of what its
  configured limit leaves and what its filesystem really has free — under ``free_pct`` % of its
  capacity throttles every disk; it lifts once free space is back at ``resume_free_pct`` % or more.
  Capacity is the smaller of the limit and (used + filesystem free), so a cache on a filesystem
  that fills up for other reasons throttles too.
- **per disk** (reason ``disk_backlog``): a disk whose backlog (bytes cached here and not yet
  durably received by the MT) passes ``disk_backlog_max_bytes`` is throttled alone; it lifts once
  the backlog is at or under ``disk_resume_pct`` % of that limit.

A throttled disk gets 507 (Retry-After ``retry_after_s``) for a NEW batch; the cache answers a
re-send of a batch it already holds before it asks here, so re-sends keep succeeding. Every start
and stop comes back from :meth:`Throttle.update` as a :class:`Change` (the caller logs it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from common.config import PSConfig

GiB = 1 << 30

CACHE = "cache"  # the scope of the cache-wide rule; disks are scoped by their id
CACHE_FREE = "cache_free"
DISK_BACKLOG = "disk_backlog"
CACHE_FULL = "cache_full"  # not a state: the one batch does not fit at all


@dataclass(frozen=True)
class ThrottlePolicy:
    free_pct: float = 20.0  # cache-wide throttle under this free space (the emulated system's 20 %)
    resume_free_pct: float = 25.0  # ... lifted at or above this
    disk_backlog_max_bytes: int = 4 * GiB  # per-disk throttle above this backlog
    disk_resume_pct: float = 75.0  # ... lifted at or under this share of the limit
    retry_after_s: float = 1.0  # what a 507 tells the agent to wait

    def __post_init__(self) -> None:
        if not 0.0 <= self.free_pct <= self.resume_free_pct <= 100.0:
            raise ValueError("need 0 <= free_pct <= resume_free_pct <= 100")
        if self.disk_backlog_max_bytes < 1 or not 0.0 <= self.disk_resume_pct <= 100.0:
            raise ValueError("need disk_backlog_max_bytes >= 1 and 0 <= disk_resume_pct <= 100")
        if self.retry_after_s <= 0:
            raise ValueError("retry_after_s must be > 0")

    @classmethod
    def from_config(cls, cfg: PSConfig) -> ThrottlePolicy:
        return cls(free_pct=cfg.cache_throttle_free_pct, resume_free_pct=cfg.cache_resume_free_pct,
                   disk_backlog_max_bytes=cfg.disk_backlog_max_bytes, disk_resume_pct=cfg.disk_backlog_resume_pct,
                   retry_after_s=cfg.throttle_retry_after_s)

    @property
    def disk_resume_bytes(self) -> int:
        return int(self.disk_backlog_max_bytes * self.disk_resume_pct / 100.0)


@dataclass(frozen=True)
class Sample:
    """What the cache holds and what its filesystem has free, at one moment."""

    used_bytes: int  # cached + being written
    max_bytes: int  # the configured limit
    fs_free_bytes: int  # free on the cache's filesystem for this process (statvfs f_bavail * f_frsize)
    disk_backlog: Mapping[str, int] = field(default_factory=dict)

    @property
    def free_bytes(self) -> int:
        return max(0, min(self.max_bytes - self.used_bytes, self.fs_free_bytes))

    @property
    def capacity_bytes(self) -> int:
        return max(0, min(self.max_bytes, self.used_bytes + self.fs_free_bytes))

    @property
    def free_pct(self) -> float:
        capacity = self.capacity_bytes
        return 100.0 * self.free_bytes / capacity if capacity > 0 else 0.0


@dataclass(frozen=True)
class State:
    active: bool = False
    reason: str = ""
    since_ns: int = 0  # when the current state began (0: never throttled)
    refusals: int = 0  # 507s answered because of this scope

    def view(self) -> dict[str, Any]:
        return {"active": self.active, "reason": self.reason, "since_ns": self.since_ns, "refusals": self.refusals}


@dataclass(frozen=True)
class Change:
    scope: str  # CACHE or a disk id
    started: bool
    reason: str
    value: float  # free % (cache) or backlog bytes (disk)
    limit: float  # the threshold that was crossed
    lasted_ns: int = 0  # for a stop: how long the throttle lasted


class Throttle:
    """The throttle state of a cache and its disks."""

    def __init__(self, policy: ThrottlePolicy) -> None:
        self.policy = policy
        self.cache = State()
        self.disks: dict[str, State] = {}
        self.last: Sample | None = None

    def __repr__(self) -> str:
        on = [d for d, s in self.disks.items() if s.active]
        return f"Throttle(cache={self.cache.active}, disks={on})"

    def update(self, sample: Sample, now_ns: int) -> list[Change]:
        """Apply the rules to ``sample``; the starts and stops it caused."""
        self.last = sample
        changes: list[Change] = []
        p = self.policy
        free = sample.free_pct
        if not self.cache.active and free < p.free_pct:
            changes.append(Change(CACHE, True, CACHE_FREE, free, p.free_pct))
        elif self.cache.active and free >= p.resume_free_pct:
            changes.append(Change(CACHE, False, CACHE_FREE, free, p.resume_free_pct, now_ns - self.cache.since_ns))
        for disk_id in sorted(set(self.disks) | set(sample.disk_backlog)):
            backlog = sample.disk_backlog.get(disk_id, 0)
            state = self.disks.get(disk_id, State())
            if not state.active and backlog > p.disk_backlog_max_bytes:
                changes.append(Change(disk_id, True, DISK_BACKLOG, backlog, p.disk_backlog_max_bytes))
            elif state.active and backlog <= p.disk_resume_bytes:
                changes.append(Change(disk_id, False, DISK_BACKLOG, backlog, p.disk_resume_bytes,
                                      now_ns - state.since_ns))
        for change in changes:
            self._apply(change, now_ns)
        return changes

    def _apply(self, change: Change, now_ns: int) -> None:
        old = self.cache if change.scope == CACHE else self.disks.get(change.scope, State())
        new = replace(old, active=change.started, reason=change.reason if change.started else "", since_ns=now_ns)
        if change.scope == CACHE:
            self.cache = new
        else:
            self.disks[change.scope] = new

    def refusal(self, disk_id: str) -> str | None:
        """Why a new batch for ``disk_id`` must wait (a message), or None if it may be stored.
        Counts the refusal."""
        if self.cache.active:
            self.cache = replace(self.cache, refusals=self.cache.refusals + 1)
            free = self.last.free_pct if self.last is not None else 0.0
            return (f"{CACHE_FREE}: the cache has {free:.1f} % free, under {self.policy.free_pct:g} %; "
                    f"new batches wait until {self.policy.resume_free_pct:g} % is free")
        state = self.disks.get(disk_id)
        if state is not None and state.active:
            self.disks[disk_id] = replace(state, refusals=state.refusals + 1)
            backlog = self.last.disk_backlog.get(disk_id, 0) if self.last is not None else 0
            return (f"{DISK_BACKLOG}: disk {disk_id} has {backlog} bytes not yet at the MT, over "
                    f"{self.policy.disk_backlog_max_bytes}; new batches wait until it is at most "
                    f"{self.policy.disk_resume_bytes}")
        return None

    def metrics(self) -> dict[str, Any]:
        """The cache-wide state plus free space, and the state of every disk seen."""
        sample = self.last
        out = self.cache.view()
        out.update(free_pct=round(sample.free_pct, 2) if sample else 100.0,
                   free_bytes=sample.free_bytes if sample else 0,
                   capacity_bytes=sample.capacity_bytes if sample else 0,
                   threshold_pct=self.policy.free_pct, resume_pct=self.policy.resume_free_pct,
                   disk_backlog_max_bytes=self.policy.disk_backlog_max_bytes,
                   throttled_disks=sorted(d for d, s in self.disks.items() if s.active))
        return out

    def disk_metrics(self, disk_id: str) -> dict[str, Any]:
        return self.disks.get(disk_id, State()).view()
