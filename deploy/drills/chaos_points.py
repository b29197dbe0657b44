"""What the chaos drill (deploy/drills/chaos.py) verifies after each cycle, and its summary.

Rules:
- A point the oracle can judge is a valid, exact point (accuracy ``exact``): its image holds exactly
  the logged writes with wnum <= its ``wnum_hi`` (docs/PROTOCOL.md, "Recovery point semantics");
  points of a resync (``none``) or approximate ones are counted, not verified.
- Short runs (``cycles <= FULL_UP_TO``) verify every exact point the cycle made; long runs the oldest
  point kept, the newest and ``SAMPLE`` points of the cycle drawn with the drill's seeded RNG.
- The newest point is always verified and must hold every acknowledged write (wnum_hi >= the write
  log's last acknowledged wnum): zero acknowledged writes lost.
- Points are checked as machine points (one W per point) through one test failover, moved from
  point to point with ``change-point`` (each with its image, deleted once read: the drill runs on
  the MT's host), then cleaned up: one job per point.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.drills import common as dc
from deploy.lab import Lab
from deploy.scenario import Scenario
from mt import applylog

FULL_UP_TO = 10  # cycles: a run this short verifies every exact point
SAMPLE = 3  # a long run's random points per cycle (besides the oldest and the newest)


@dataclass
class Cycle:
    """One cycle's figures, as printed and reported."""

    number: int
    daemon: str  # role: agent | ps | mt | cs
    node: str
    kill_at_s: float  # into the workload
    down_s: float  # from the SIGKILL to the restart
    kill_wnum: int = 0  # the last write logged when the SIGKILL went
    recovery_s: float = 0.0  # from the SIGKILL to replication recovered (module chaos)
    points: int = 0  # exact points (distinct W) the cycle made
    verified: int = 0
    bytes_verified: int = 0
    newest_wnum: int = 0
    acked_wnum: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass
class Summary:
    seed: int
    cycles_planned: int
    cycles: list[Cycle] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # outside a cycle (e.g. the apply-log check)
    seconds: float = 0.0
    apply_log: str = "not checked"

    @property
    def kills(self) -> dict[str, int]:
        return dict(Counter(c.daemon for c in self.cycles))

    @property
    def failure_count(self) -> int:
        return len(self.failures) + sum(len(c.failures) for c in self.cycles)

    def as_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "cycles_planned": self.cycles_planned, "cycles": len(self.cycles),
                "kills": self.kills, "points_verified": sum(c.verified for c in self.cycles),
                "bytes_verified": sum(c.bytes_verified for c in self.cycles),
                "failures": self.failure_count, "failure_list": self.failures + [f for c in self.cycles
                                                                                  for f in c.failures],
                "recovery_s_max": max((c.recovery_s for c in self.cycles), default=0.0),
                "seconds": round(self.seconds, 1), "apply_log": self.apply_log,
                "per_cycle": [asdict(c) for c in self.cycles]}

    def lines(self) -> list[str]:
        data = self.as_json()
        kills = ", ".join(f"{k} {v}" for k, v in sorted(data["kills"].items())) or "none"
        return [f"chaos summary: seed {self.seed}, {data['cycles']} of {self.cycles_planned} cycles, kills: {kills}",
                f"  recovery points verified {data['points_verified']}, bytes verified {data['bytes_verified']} "
                f"({dc.mib(data['bytes_verified'])}), slowest recovery {data['recovery_s_max']:.1f} s",
                f"  apply log: {self.apply_log}; failures {data['failures']}"
                + "".join(f"\n    - {f}" for f in data["failure_list"]),
                f"  {data['seconds']:.0f} s in all"]

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=2) + "\n")


def exact_points(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The disk's exact points, oldest first (by W, then batch)."""
    found = [p for p in points if p.get("accuracy") == "exact"]
    return sorted(found, key=lambda p: (int(p["wnum_hi"]), int(p["gen"]), int(p["seq"])))


def choose(points: list[dict[str, Any]], since_wnum: int, full: bool, rng: random.Random) -> list[int]:
    """The machine points (W) to verify, ascending: the cycle's exact points (``wnum_hi`` above
    ``since_wnum``) — all of them when ``full``, else the oldest kept, the newest and a sample."""
    exact = exact_points(points)
    if not exact:
        return []
    cycle = sorted({int(p["wnum_hi"]) for p in exact if int(p["wnum_hi"]) > since_wnum})
    newest = int(exact[-1]["wnum_hi"])
    if full:
        return sorted({*cycle, newest})
    middle = [w for w in cycle if w != newest]
    sample = rng.sample(middle, min(SAMPLE, len(middle)))
    return sorted({int(exact[0]["wnum_hi"]), newest, *sample})


async def verify_points(admin: Any, sc: Scenario, wnums: list[int], cycle: Cycle) -> None:
    """Each machine point W of ``wnums`` checked by the oracle (one test failover, then one
    ``change-point`` per further W, then the cleanup); counts and failures go to ``cycle``."""
    if not wnums:
        cycle.failures.append(f"cycle {cycle.number}: no exact point to verify")
        return
    op = "test-failover"
    try:
        for w in wnums:
            started = time.monotonic()
            job = await admin.wait_job(await admin.machine_op(sc.machine_id, op, {"point": {"wnum": w},
                                                                                  "image": True}), timeout_s=180)
            check = await sc.check_machine_job(job, {"wnum": w}, f"W {w}", time.monotonic() - started)
            await asyncio.to_thread(drop_images, job)
            if job["state"] == "succeeded":
                op = "change-point"
            if not check.ok or check.wnum != w:
                chosen = [(d["point"]["gen"], d["point"]["seq"]) for d in (job.get("result") or {}).get("disks", [])]
                cycle.failures.append(f"cycle {cycle.number}: point W {w} (batch {chosen}): {check.detail}")
                continue
            cycle.verified += 1
            cycle.bytes_verified += sum(r.bytes_compared for r in check.verdict.disks.values()) \
                if check.verdict else 0
    finally:
        if op == "change-point":  # a test failover is up: drop its views
            await dc.run_op(admin, sc.machine_id, "cleanup-test-failover")


def drop_images(job: dict[str, Any]) -> None:
    """Delete a failover job's image files once read (a long run makes hundreds)."""
    for disk in (job.get("result") or {}).get("disks", []):
        if disk.get("image_path"):
            Path(disk["image_path"]).unlink(missing_ok=True)


def check_apply_logs(lab: Lab, summary: Summary) -> None:
    """Every MT's apply log (mt/applylog.py, run on the stopped MTs): no batch applied twice, none
    applied after a later one; a violation is a failure of the drill."""
    found = []
    for mt in lab.topology.mts:
        report = applylog.check_apply_log(lab.node_dir(mt))
        found.append(f"{mt.name} {report.batches} batches")
        if not report.ok:
            summary.failures.append(f"apply log of {mt.name}: applied twice {report.duplicates[:5]}, "
                                    f"out of order {report.regressions[:5]}")
    summary.apply_log = ("no batch applied twice (" + ", ".join(found) + ")") if found else "no MT"
