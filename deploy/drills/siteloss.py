"""`drlab drill site-loss`: the whole on-prem site dies; the cloud side alone fails over.

1. protect the on-prem machine (initial replication to the cloud MT);
2. site loss: while the workload runs, every on-prem process (machines, PSs, MTs, the workload)
   is killed with SIGKILL at once; what is left is the CS and the MT in the cloud;
3. unplanned failover to latest from the cloud side alone: the oracle checks every disk at W, and
   the step says how many acknowledged writes were lost (the RPO at the moment of the loss);
4. commit; the cloud compute host boots the machine there on the committed replicas;
5. the machine keeps writing in the cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

from deploy.compute import ComputeHost, twin_name
from deploy.drills import common as dc
from deploy.drills.steps import Steps
from deploy.lab import Lab, alive
from deploy.scenario import Scenario


async def run(params: dc.DrillParams, say: Any = print) -> int:
    return await dc.run_drill("site-loss", params, scenario, 5, say)


def kill_site(lab: Lab, site: str, others: tuple[int, ...] = ()) -> list[str]:
    """SIGKILL every process of the site (and ``others``: the workload) in one go — signals first,
    then the wait, so that none of them outlives another by a batch; returns their names."""
    pids = lab.read_pids()
    victims = [n for n in lab.nodes if n.site == site and n.name in pids and alive(pids[n.name])]
    for pid in (*others, *(pids[n.name] for n in victims)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for node in victims:
        lab.kill_node(node, signal.SIGKILL)  # waits until it is gone
    return [n.name for n in victims]


async def scenario(lab: Lab, admin: Any, sc: Scenario, params: dc.DrillParams, steps: Steps) -> None:
    await dc.protect_step(admin, sc, steps)
    async with steps.step("on-prem site lost") as st:
        proc = sc.start_workload(params.rate_mb_s, params.duration_s * 4)
        await asyncio.sleep(params.duration_s)
        lost_at = time.time_ns()
        killed = kill_site(lab, "onprem", (proc.pid,))
        proc.communicate()
        dc.require_all_dead(lab, killed)
        st.verified = f"SIGKILL to {', '.join(killed)} and the workload; CS and cloud MT alone remain"
    async with steps.step("unplanned failover from the cloud") as st:
        job = await dc.oracle_failover(admin, sc, "failover", "latest", "site-loss failover")
        result = job["result"]
        behind = sc.last_wnum() - int(result["wnum"])
        rpo_ms = max(0.0, (lost_at - int(result.get("t_ns") or lost_at)) / 1e6)
        st.verified = (f"image at W {result['wnum']} byte-exact on every disk; {behind} acknowledged writes "
                       f"were not yet in the cloud (newest point {rpo_ms:.0f} ms before the loss)")
    compute = ComputeHost(lab)
    async with steps.step("commit + boot in the cloud") as st:
        job = await dc.run_op(admin, sc.machine_id, "commit")
        images = dc.images(await admin.job(result_job_id(job)))
        twin = await compute.boot(sc.machine, await dc.committed_replicas(admin, job),
                                  name=twin_name(sc.machine, job["result"]))  # its failover target name, if set
        for name, image in images.items():
            await dc.same_bytes(image, lab.disk_path(twin, name), f"{twin.name} disk {name}")
        st.verified = f"{twin.name} booted on the committed replicas, equal to the failover images"
    async with steps.step("the machine runs in the cloud") as st:
        cloud = Scenario(lab, params.seed + 1, twin)
        stats = cloud.finish_workload(cloud.start_workload(params.rate_mb_s, params.duration_s),
                                      params.duration_s + 60)
        st.verified = f"{twin.name} wrote {stats.get('writes')} writes ({dc.mib(int(stats.get('bytes', 0)))})"


def result_job_id(commit_job: dict[str, Any]) -> str:
    """The failover operation a commit finished (its images are in that job's result)."""
    return str(commit_job["params"]["failover"]["job_id"])


def main(params: dc.DrillParams) -> int:
    return asyncio.run(run(params))
