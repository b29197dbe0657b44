"""Machines' RPO now and over time (pure, but for :func:`current`).

Rules:
- a disk's RPO is ``now - its latest durable point`` (the MT's report in its heartbeat), the same
  figure the health rule ``rpo_exceeded`` judges (cs/health/engine.py ``rpo_inputs``); a disk
  without a point yet has none;
- a machine's RPO is its worst disk's; its threshold, its policy's;
- the history is a ring of samples kept in the CS process's memory (lost on restart, one per CS
  process): a sample at most every ``min_gap_s`` seconds, at most ``keep`` of them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cs.db import repo
from cs.health import engine, rules
from cs.state import CSState

NS = 1_000_000_000


def machine_rpos(inputs: Mapping[str, Iterable[rules.DiskRpo]], now_ns: int) -> dict[str, dict[str, Any]]:
    """{machine id: {rpo_s, threshold_s, disks: {disk id: rpo_s}}} from the health engine's inputs."""
    out: dict[str, dict[str, Any]] = {}
    for machine_id, disks in inputs.items():
        per_disk = {d.disk_id: round(max(0.0, (now_ns - d.point_ns) / NS), 3) for d in disks}
        if not per_disk:
            continue
        thresholds = [d.threshold_s for d in disks]
        out[machine_id] = {"rpo_s": max(per_disk.values()), "threshold_s": min(thresholds), "disks": per_disk}
    return out


@dataclass(frozen=True)
class Sample:
    t_ns: int
    rpo_s: dict[str, float]  # machine id -> RPO

    def view(self) -> dict[str, Any]:
        return {"t_ns": self.t_ns, "rpo_s": dict(self.rpo_s)}


@dataclass
class History:
    """The ring of samples; :meth:`add` drops a sample that comes sooner than ``min_gap_s``."""

    keep: int = 1800
    min_gap_s: float = 1.0
    samples: deque[Sample] = field(default_factory=deque)

    def add(self, t_ns: int, machines: Mapping[str, Mapping[str, Any]]) -> bool:
        if self.samples and t_ns - self.samples[-1].t_ns < self.min_gap_s * NS:
            return False
        self.samples.append(Sample(t_ns, {m: float(v["rpo_s"]) for m, v in machines.items()}))
        while len(self.samples) > self.keep:
            self.samples.popleft()
        return True

    def since(self, since_ns: int) -> list[dict[str, Any]]:
        """The samples taken after ``since_ns``, oldest first."""
        return [s.view() for s in self.samples if s.t_ns > since_ns]


async def current(state: CSState, now_ns: int) -> dict[str, dict[str, Any]]:
    """Every machine's RPO at ``now_ns``, read from the database (one read transaction)."""
    async with state.db.read() as session:
        comps = {c.component_id: c for c in await repo.components(session)}
        inputs = await engine.rpo_inputs(session, state.cfg.health, comps)
    return machine_rpos(inputs, now_ns)
