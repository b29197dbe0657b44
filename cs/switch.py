"""PS load balance and switch, the pure planning (no I/O): which disks move from which PS to which.

A machine moves as a whole (every disk of a machine is served by one PS, cs/disks.py). The target
is the one the operator names, else, machine by machine (the heaviest churn first), the live PS
with the lowest projected load: measured churn (bytes/s of its disks) plus its upload backlog
spread over ``BACKLOG_HORIZON_S``, ties broken by the number of disks and then the id. A moved
disk *drains* when its old PS is alive (same generation: the old PS uploads what it cached, the
new PS gets the following seqs) and is *regenerated* when it is dead (a new generation, reason
``ps-switch``: the agent re-sends its un-applied regions to the new PS).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from common import errors

BACKLOG_HORIZON_S = 60.0  # a backlog of N bytes weighs like N / 60 bytes/s of churn
# disks in these states stay where they are (a failover owns them)
PINNED_STATES = ("failover-in-progress", "failed-over", "committed", "reprotecting", "failback", "failed-back")
DRAIN, REGENERATE = "drain", "regenerate"


@dataclass(frozen=True)
class DiskInfo:
    disk_id: str
    machine_id: str
    ps_id: str | None
    state: str
    generation: int


@dataclass(frozen=True)
class PsInfo:
    ps_id: str
    alive: bool
    backlog_bytes: int = 0


@dataclass(frozen=True)
class Move:
    disk_id: str
    machine_id: str
    from_ps: str
    to_ps: str
    generation: int  # the disk's generation when planned

    def as_dict(self) -> dict[str, Any]:
        return {"disk_id": self.disk_id, "machine_id": self.machine_id, "from_ps": self.from_ps,
                "to_ps": self.to_ps, "generation": self.generation}

    @classmethod
    def from_dict(cls, item: dict[str, Any]) -> Move:
        return cls(str(item["disk_id"]), str(item["machine_id"]), str(item["from_ps"]), str(item["to_ps"]),
                   int(item["generation"]))


@dataclass
class Plan:
    from_ps: str
    mode: str  # drain | regenerate
    moves: list[Move] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # disk id -> why it stays

    def as_dict(self) -> dict[str, Any]:
        return {"from_ps": self.from_ps, "mode": self.mode, "moves": [m.as_dict() for m in self.moves],
                "skipped": dict(self.skipped)}

    @classmethod
    def from_dict(cls, item: dict[str, Any]) -> Plan:
        return cls(str(item["from_ps"]), str(item["mode"]), [Move.from_dict(m) for m in item.get("moves", [])],
                   {str(k): str(v) for k, v in (item.get("skipped") or {}).items()})

    def targets(self) -> dict[str, str]:
        """machine id -> its new PS."""
        return {m.machine_id: m.to_ps for m in self.moves}


@dataclass(frozen=True)
class Request:
    from_ps: str
    to_ps: str | None = None
    machine_ids: tuple[str, ...] | None = None  # None: every machine of ``from_ps``
    old_ps_dead: bool = False  # the operator says so (else: its heartbeat says)


def machines_of(disks: Iterable[DiskInfo], ps_id: str) -> list[str]:
    """The machines with a disk on ``ps_id``, sorted."""
    return sorted({d.machine_id for d in disks if d.ps_id == ps_id})


def load_of(ps: PsInfo, disks: Iterable[DiskInfo], churn: dict[str, float]) -> float:
    """Projected load of a PS: churn of its disks (bytes/s) plus its backlog over the horizon."""
    return sum(churn.get(d.disk_id, 0.0) for d in disks if d.ps_id == ps.ps_id) + ps.backlog_bytes / BACKLOG_HORIZON_S


def plan(req: Request, disks: list[DiskInfo], pss: list[PsInfo], churn: dict[str, float] | None = None) -> Plan:
    """Which disks move where; BadRequest / NotFound / Conflict say why nothing can."""
    churn = churn or {}
    by_id = {p.ps_id: p for p in pss}
    source = by_id.get(req.from_ps)
    if source is None:
        raise errors.NotFound(f"no process server {req.from_ps}")
    if req.to_ps is not None:
        target = by_id.get(req.to_ps)
        if target is None:
            raise errors.NotFound(f"no process server {req.to_ps}")
        if req.to_ps == req.from_ps:
            raise errors.BadRequest("the target process server is the source")
        if not target.alive:
            raise errors.Conflict(f"process server {req.to_ps} is not alive (no recent heartbeat)")
    served = machines_of(disks, req.from_ps)
    machines = served if req.machine_ids is None else sorted(set(req.machine_ids))
    strangers = [m for m in machines if m not in served]
    if strangers:
        raise errors.Conflict(f"machine {strangers[0]} has no disk on process server {req.from_ps}")
    if not machines:
        raise errors.Conflict(f"process server {req.from_ps} serves no machine")
    mode = DRAIN if source.alive and not req.old_ps_dead else REGENERATE
    result = Plan(req.from_ps, mode)
    candidates = [p for p in pss if p.alive and p.ps_id != req.from_ps]
    if req.to_ps is None and not candidates:
        raise errors.Conflict("no other live process server to move to")
    loads = {p.ps_id: load_of(p, disks, churn) for p in candidates}
    counts = {p.ps_id: sum(1 for d in disks if d.ps_id == p.ps_id) for p in candidates}
    weight = {m: sum(churn.get(d.disk_id, 0.0) for d in disks if d.machine_id == m and d.ps_id == req.from_ps)
              for m in machines}
    for machine in sorted(machines, key=lambda m: (-weight[m], m)):
        mine = [d for d in disks if d.machine_id == machine and d.ps_id == req.from_ps]
        pinned = [d for d in mine if d.state in PINNED_STATES]
        if pinned:
            for d in mine:
                result.skipped[d.disk_id] = f"machine has disk {pinned[0].disk_id} in state {pinned[0].state}"
            continue
        to = req.to_ps or min(candidates, key=lambda p: (loads[p.ps_id], counts[p.ps_id], p.ps_id)).ps_id
        loads[to] = loads.get(to, 0.0) + weight[machine]
        counts[to] = counts.get(to, 0) + len(mine)
        result.moves.extend(Move(d.disk_id, machine, req.from_ps, to, d.generation) for d in mine)
    if not result.moves:
        raise errors.Conflict("no disk can move: " + "; ".join(sorted(set(result.skipped.values()))))
    return result


def churn_between(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, float]:
    """Bytes/s per disk from two samples of a cumulative byte counter (a restart counts as 0)."""
    if seconds <= 0:
        return {}
    return {d: max(0, after[d] - before.get(d, 0)) / seconds for d in after}
