"""`drlab drill chaos --cycles N [--seed S] [--report PATH]`: random SIGKILLs under load, each
followed by a restart, the recovery, and the oracle on the recovery points.

1. protect the on-prem machine (the drills' shared protect step);
2. N cycles, each one step: the workload runs (``duration_s``); at a random moment in it one
   random daemon of the machine's path — its agent, its PS, its MT or the CS — gets SIGKILL, stays
   down a random while (0.2-1.5 s) and is started again; then
   - recovery: the CS answers again and the MT holds every write acknowledged before the restart
     (an agent: its disk protected again under a new generation, its resync of the hot extents
     done); the time from the SIGKILL to that is the cycle's recovery time;
   - the workload ends (killing the agent breaks the workload's connection: the write in flight is
     logged *in doubt*, which the oracle accepts either applied or not, and no later write was
     acknowledged — so none is expected); a short tail workload follows when the newest point is
     not exact (after a resync), everything drains;
   - the oracle checks the cycle's points (deploy/drills/chaos_points.py: every exact point in
     short runs, the oldest, the newest and a sample in long ones); the newest must hold every
     acknowledged write (zero lost) and be byte-exact;
3. once the lab is down, every MT's apply log (mt/applylog.py): no batch applied twice.

Every choice (daemon, moment, down time, sample) comes from one RNG seeded by the printed seed:
``--seed`` replays the same sequence of choices (timing in the lab still varies). The summary
(cycles, kills per daemon, points and bytes verified, failures) ends the output and goes to
``--report`` as JSON; the exit code is non-zero on any failure.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from pathlib import Path
from typing import Any

from common import errors
from deploy.drills import chaos_points as cp
from deploy.drills import common as dc
from deploy.drills.psswitch import disk_entry
from deploy.drills.steps import Steps, require
from deploy.lab import Lab
from deploy.scenario import Scenario
from deploy.topology import Node
from deploy.topology import load as load_topology

DAEMONS = ("agent", "ps", "mt", "cs")
RECOVERY_TIMEOUT_S = 180.0
TAIL_S = 1.0  # the tail workload after a resync: exact points again


async def run(params: dc.DrillParams, say: Any = print) -> int:
    summary = cp.Summary(params.seed, params.cycles)
    started = time.monotonic()

    async def body(lab: Lab, admin: Any, sc: Scenario, p: dc.DrillParams, steps: Steps) -> None:
        await scenario(lab, admin, sc, p, steps, summary)

    rc = await dc.run_drill("chaos", params, body, 1 + params.cycles, say)
    cp.check_apply_logs(Lab(load_topology(params.topology), params.root), summary)  # the MTs stopped
    summary.seconds = time.monotonic() - started
    for line in summary.lines():
        say(line)
    if params.report is not None:
        summary.write(Path(params.report))
        say(f"report: {params.report}")
    ok = rc == 0 and summary.failure_count == 0 and len(summary.cycles) == params.cycles
    say("CHAOS PASSED" if ok else "CHAOS FAILED")
    return 0 if ok else 1


async def scenario(lab: Lab, admin: Any, sc: Scenario, params: dc.DrillParams, steps: Steps,
                   summary: cp.Summary) -> None:
    rng = random.Random(f"drlab-chaos:{params.seed}")
    await dc.protect_step(admin, sc, steps)
    targets = await path_of(lab, admin, sc)
    since = 0  # W up to which points were verified by an earlier cycle
    for number in range(1, params.cycles + 1):
        daemon = rng.choice(DAEMONS)
        cycle = cp.Cycle(number, daemon, targets[daemon].name, round(rng.uniform(0.15, 0.75) * params.duration_s, 2),
                         round(rng.uniform(0.2, 1.5), 2))
        summary.cycles.append(cycle)
        async with steps.step(f"cycle {number}: SIGKILL the {daemon} ({cycle.node})") as st:
            try:
                # the points' sample draws from a stream of its own: the kills replay whatever points were made
                sample_rng = random.Random(f"drlab-chaos:{params.seed}:points:{number}")
                await one_cycle(lab, admin, sc, params, cycle, targets[daemon], since, sample_rng)
            except Exception as exc:
                cycle.failures = cycle.failures or [f"cycle {number}: {type(exc).__name__}: {exc}"]
                raise
            since = max(since, cycle.newest_wnum)
            st.verified = describe(cycle)


async def one_cycle(lab: Lab, admin: Any, sc: Scenario, params: dc.DrillParams, cycle: cp.Cycle, node: Node,
                    since: int, rng: random.Random) -> None:
    """Kill, restart, recovery; then the oracle on the points chosen above W ``since``."""
    await kill_and_recover(lab, admin, sc, params, cycle, node)
    points = await sc.points()
    wnums = cp.choose(points, since, params.cycles <= cp.FULL_UP_TO, rng)
    cycle.points = len({int(p["wnum_hi"]) for p in cp.exact_points(points) if int(p["wnum_hi"]) > since})
    await cp.verify_points(admin, sc, wnums, cycle)
    cycle.newest_wnum, cycle.acked_wnum = (wnums[-1] if wnums else 0), sc.last_wnum()
    if cycle.newest_wnum < cycle.acked_wnum:
        cycle.failures.append(f"cycle {cycle.number}: the newest point W {cycle.newest_wnum} lacks acknowledged "
                              f"writes {cycle.newest_wnum + 1}..{cycle.acked_wnum}")
    require(not cycle.failures, "; ".join(cycle.failures))


def describe(c: cp.Cycle) -> str:
    return (f"killed at +{c.kill_at_s:.1f} s under load (after W {c.kill_wnum}), down {c.down_s:.1f} s, "
            f"recovered {c.recovery_s:.1f} s after the kill; {c.verified} points verified of the {c.points} it "
            f"made (newest W {c.newest_wnum} >= acknowledged {c.acked_wnum}), {dc.mib(c.bytes_verified)} byte-exact")


async def path_of(lab: Lab, admin: Any, sc: Scenario) -> dict[str, Node]:
    """The daemons on the machine's replication path: its agent, its PS, its MT and the CS."""
    disk = next(d for d in await admin.disks() if d["disk_id"] == sc.disk_id)
    hosts = {c["component_id"]: c["host_id"] for c in await admin.components()}
    return {"agent": sc.machine, "ps": lab.topology.node(hosts[disk["ps_id"]]),
            "mt": lab.topology.node(hosts[disk["mt_id"]]), "cs": lab.topology.cs}


async def kill_and_recover(lab: Lab, admin: Any, sc: Scenario, params: dc.DrillParams, cycle: cp.Cycle,
                           node: Node) -> None:
    """Workload, SIGKILL of ``node`` at ``cycle.kill_at_s``, restart after ``cycle.down_s``, recovery
    (its time in ``cycle``), the workload's end; then everything acknowledged is at the MT."""
    before = await disk_entry(admin, sc.disk_id)
    proc = sc.start_workload(params.rate_mb_s, params.duration_s)
    await asyncio.sleep(cycle.kill_at_s)
    killed = time.monotonic()
    lab.kill_node(node)
    cycle.kill_wnum = sc.last_wnum()
    dc.require_all_dead(lab, [node.name])
    await asyncio.sleep(cycle.down_s)
    lab.start_node(node)
    if cycle.daemon == "cs":
        await lab.wait_cs(60)
    await recovered(admin, sc, cycle.daemon, int(before["generation"]), sc.last_wnum())
    cycle.recovery_s = round(time.monotonic() - killed, 2)
    await asyncio.to_thread(end_workload, sc, proc, cycle.daemon == "agent", params.duration_s + 120)
    if cycle.daemon != "agent":  # (the agent's resync knows no wnum: the tail below brings new ones)
        await sc.wait_drained(RECOVERY_TIMEOUT_S)
    newest = cp.exact_points(await sc.points())
    if cycle.daemon == "agent" or not newest or int(newest[-1]["wnum_hi"]) < sc.last_wnum():
        await asyncio.to_thread(end_workload, sc, sc.start_workload(params.rate_mb_s, TAIL_S), False, TAIL_S + 60)
        await sc.wait_drained(RECOVERY_TIMEOUT_S)


def end_workload(sc: Scenario, proc: subprocess.Popen[str], broken_ok: bool, timeout_s: float) -> None:
    """The workload to its end; ``broken_ok``: its agent was killed, so it ends with a failed write
    (logged in doubt) — anything else is a failure."""
    if broken_ok:
        proc.communicate(timeout=timeout_s)
        return
    stats = sc.finish_workload(proc, timeout_s)
    require(not stats.get("error"), f"the workload failed: {stats.get('error')}")


async def recovered(admin: Any, sc: Scenario, daemon: str, gen: int, target: int) -> None:
    """Until replication recovered: the MT holds every write acknowledged up to ``target`` (the
    restart) — after an agent's restart, its disk protected again under a newer generation."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if daemon == "agent":
                entry = await disk_entry(admin, sc.disk_id)
                if int(entry["generation"]) > gen and entry.get("state") == "protected":
                    return
            else:
                points = await sc.points()
                if points and max(int(p["wnum_hi"]) for p in points) >= target:
                    return
        except (errors.DrlabError, OSError):  # a daemon still starting
            pass
        await asyncio.sleep(0.1)
    raise errors.Unavailable(f"replication did not recover within {RECOVERY_TIMEOUT_S:.0f} s after the "
                             f"{daemon} was killed")



def main(params: dc.DrillParams) -> int:
    return asyncio.run(run(params))
