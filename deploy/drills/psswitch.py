"""`drlab drill ps-switch`: a machine moved between process servers under load, each move verified.

The drill needs two on-prem PSs: when the topology has one (the default deploy/lab.toml: ps1
on-prem, ps2 in the cloud), the drill's own lab adds a second on the next free address of its
network (deploy/topology.py ``with_onprem_pss``) and says so.

1. protect the on-prem machine (initial replication through its PS, A, to the cloud MT);
2. switch under load with A alive (``drlab ps switch``, cs/switch_jobs.py): the agent keeps its
   generation and its seqs, A drains what it cached, the other PS, B, gets the following seqs — no
   resync, no seq gap or duplicate in the MT's catalog, only the batches in flight were re-sent;
   the oracle checks a test failover to latest once the workload drained;
3. B killed with SIGKILL under load, then a balance of the machine back to A with B dead: a new
   generation (reason ps-switch) in which the agent re-sends only its un-applied regions (the hot
   extents), not the disk; the oracle again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from deploy.drills import common as dc
from deploy.drills.steps import StepFailed, Steps, require
from deploy.lab import Lab
from deploy.scenario import Scenario
from deploy.topology import Topology, with_onprem_pss
from deploy.topology import load as load_topology

NSTEPS = 3
# the workload stays in a few MiB (a machine's working set): the un-applied regions are few
LOCAL = ("--hot-region-mib", "2", "--overwrite-share", "0.97")
RESYNC_DONE = 2  # a batch's flag: the last one of a resync (docs/PROTOCOL.md)


def drill_topology(params: dc.DrillParams, say: Any) -> Topology:
    """``params.topology``, with a second on-prem PS added when it has one (said)."""
    topo = load_topology(params.topology)
    more = with_onprem_pss(topo, 2)
    if more != topo:
        added = [p for p in more.pss if p not in topo.pss]
        say(f"{params.topology} has one on-prem PS: the drill's lab adds "
            + ", ".join(f"{p.name} at {p.address}" for p in added))
    return more


async def run(params: dc.DrillParams, say: Any = print) -> int:
    return await dc.run_drill("ps-switch", params, scenario, NSTEPS, say, topology=drill_topology(params, say))


async def scenario(lab: Lab, admin: Any, sc: Scenario, params: dc.DrillParams, steps: Steps) -> None:
    await dc.protect_step(admin, sc, steps)
    names = await ps_names(admin, lab)
    async with steps.step("switch under load, old PS alive") as st:
        before = await disk_entry(admin, sc.disk_id)
        old, new = before["ps_id"], next(c for c in names if c != before["ps_id"])
        proc = sc.start_workload(params.rate_mb_s, params.duration_s, None, *LOCAL)
        await asyncio.sleep(params.duration_s / 2)
        job = await move(admin, "switch", old, {"to_ps_id": new})
        require(job["result"]["regenerated"] == [], f"the switch regenerated {job['result']['regenerated']}")
        sc.finish_workload(proc, params.duration_s + 60)
        await sc.wait_drained(90)
        after = await disk_entry(admin, sc.disk_id)
        require(after["ps_id"] == new and after["state"] == "protected", f"the disk is {after['state']} on "
                f"{after['ps_id']}, not protected on {new}")
        require(after["generation"] == before["generation"], f"a resync: generation {before['generation']} -> "
                f"{after['generation']}")
        first, last = seq_range(await sc.points(), int(after["generation"]))
        w = await oracle_latest(admin, sc)
        status = await agent_disk_status(admin, sc)  # its heartbeat after the drain
        resent = int(status.get("switch_resent_bytes", 0))
        require(status.get("ps_switches") == 1, f"the agent reports {status.get('ps_switches')} PS switches, not 1")
        require(resent <= sc.disk.size_bytes // 4, f"the switch re-sent {dc.mib(resent)}: more than in flight")
        st.verified = (f"{names[old]} -> {names[new]} (steps {', '.join(s['name'] for s in job['steps'])}); "
                       f"generation {after['generation']} kept, seqs {first}..{last} without gap or duplicate; "
                       f"re-sent {dc.mib(resent)} in flight of a {dc.mib(sc.disk.size_bytes)} disk; "
                       f"latest at W {w} byte-exact (the oracle)")
    async with steps.step("balance back with the new PS killed") as st:
        before = await disk_entry(admin, sc.disk_id)
        dead, target = before["ps_id"], next(c for c in names if c != before["ps_id"])
        proc = sc.start_workload(params.rate_mb_s, params.duration_s, None, *LOCAL)
        await asyncio.sleep(params.duration_s / 2)
        lab.kill_node(lab.topology.node(names[dead]))  # SIGKILL, with what it cached
        dc.require_all_dead(lab, [names[dead]])
        job = await move(admin, "balance", dead, {"to_ps_id": target, "machine_ids": [sc.machine_id],
                                                  "old_ps_dead": True})
        require(job["result"]["regenerated"] == [sc.disk_id], f"the balance regenerated {job['result']['regenerated']}")
        sc.finish_workload(proc, params.duration_s + 60)
        await sc.wait_drained(90)
        after = await disk_entry(admin, sc.disk_id)
        require(after["ps_id"] == target and after["state"] == "protected",
                f"the disk is {after['state']} on {after['ps_id']}, not protected on {target}")
        require(after["generation"] == before["generation"] + 1 and after["last_resync"]["reason"] == "ps-switch",
                f"generation {after['generation']}, last resync {after['last_resync']}: not one ps-switch resync")
        hot = int(after["bytes_total"])
        resent = await resent_bytes(sc, int(after["generation"]))
        size = sc.disk.size_bytes
        require(0 < hot < size and resent < size, f"re-sent {dc.mib(resent)} (regions {dc.mib(hot)}) of a "
                                                  f"{dc.mib(size)} disk: not only the un-applied regions")
        seq_range(await sc.points(), int(after["generation"]))
        w = await oracle_latest(admin, sc)
        st.verified = (f"{names[dead]} SIGKILLed; {names[dead]} -> {names[target]} under generation "
                       f"{after['generation']} (ps-switch): un-applied regions {dc.mib(hot)}, re-sent "
                       f"{dc.mib(resent)} of a {dc.mib(size)} disk ({100 * resent / size:.1f} %); "
                       f"latest at W {w} byte-exact (the oracle)")


async def ps_names(admin: Any, lab: Lab) -> dict[str, str]:
    """Component id -> node name of the on-prem PSs."""
    onprem = {p.name for p in lab.topology.pss if p.site == "onprem"}
    found = {c["component_id"]: c["host_id"] for c in await admin.components()
             if c["role"] == "ps" and c["host_id"] in onprem}
    if len(found) < 2:
        raise StepFailed(f"two on-prem PSs are not registered: {sorted(found.values())}")
    return found


async def disk_entry(admin: Any, disk_id: str) -> dict[str, Any]:
    return next(d for d in await admin.disks() if d["disk_id"] == disk_id)


async def agent_disk_status(admin: Any, sc: Scenario) -> dict[str, Any]:
    """The disk's replication status in the agent's last heartbeat (PS switches, bytes re-sent)."""
    comp = next(c for c in await admin.components() if c["component_id"] == sc.machine_id)
    return dict((comp.get("metrics") or {}).get("disks", {}).get(sc.disk.name, {}))


async def move(admin: Any, kind: str, ps_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """A PS switch or balance job (cs/switch_jobs.py) run to its end; a failed one fails the step."""
    job = dict(await admin.wait_job(await admin.ps_move(ps_id, kind, body), timeout_s=180))
    require(job["state"] == "succeeded", f"the {kind} failed: {job.get('error')}")
    return job


def seq_range(points: list[dict[str, Any]], gen: int) -> tuple[int, int]:
    """(first, last) seq of ``gen`` in the MT's catalog; the step fails on a gap or a duplicate."""
    seqs = sorted(int(p["seq"]) for p in points if int(p["gen"]) == gen)
    require(bool(seqs), f"no point of generation {gen}")
    require(len(seqs) == len(set(seqs)), f"a seq of generation {gen} applied twice")
    require(seqs == list(range(seqs[0], seqs[-1] + 1)), f"a gap in the seqs of generation {gen}")
    return seqs[0], seqs[-1]


async def resent_bytes(sc: Scenario, gen: int) -> int:
    """Data bytes the MT applied under ``gen`` up to its resync's last batch (the regions re-sent)."""
    total = 0
    for p in sorted((p for p in await sc.points() if int(p["gen"]) == gen), key=lambda p: int(p["seq"])):
        total += int(p["data_bytes"])
        if int(p["flags"]) & RESYNC_DONE:
            break
    return total


async def oracle_latest(admin: Any, sc: Scenario) -> int:
    """A test failover to latest, every disk checked by the oracle, then its cleanup; its W."""
    job = await dc.oracle_failover(admin, sc, "test-failover", "latest", "latest")
    await dc.run_op(admin, sc.machine_id, "cleanup-test-failover")
    wnum = int(job["result"]["wnum"])
    require(wnum >= sc.last_wnum(), f"latest W {wnum} lacks acknowledged writes up to {sc.last_wnum()}")
    return wnum


def main(params: dc.DrillParams) -> int:
    return asyncio.run(run(params))
