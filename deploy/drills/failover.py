"""`drlab drill failover`: the ways to fail a protected machine over, each one verified.

1. protect the on-prem machine (initial replication to the cloud MT);
2. test failover to latest while the workload runs (the oracle at the job's W), then its cleanup;
3. test failover to a point in time — the acknowledgement time of a write in the middle of a
   workload run — lands on a W before the newest one (the oracle at that W), then its cleanup;
4. an app-consistent bookmark taken under load (the CS's two-phase protocol, as
   tests/integration/test_points_lab.py requests one); a test failover to latest-app-consistent
   lands on the bookmark's own batches (the oracle at its W), then its cleanup;
5. planned failover under load (cs/planned.py): the source stops taking writes, everything
   drains, and every disk's image equals the source disk exactly, with every acknowledged write.

Every workload phase lasts ``duration_s`` (a few seconds): the drill takes well under a minute.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from deploy.drills import common as dc
from deploy.drills.steps import Steps, require
from deploy.lab import Lab
from deploy.scenario import Scenario

NSTEPS = 5
BOOKMARK_TIMEOUT_S = 20.0


async def run(params: dc.DrillParams, say: Any = print) -> int:
    return await dc.run_drill("failover", params, scenario, NSTEPS, say)


async def scenario(lab: Lab, admin: Any, sc: Scenario, params: dc.DrillParams, steps: Steps) -> None:
    await dc.protect_step(admin, sc, steps)
    await dc.test_failover_step(admin, sc, params, steps, "test failover to latest + cleanup")
    async with steps.step("test failover to a point in time + cleanup") as st:
        sc.finish_workload(sc.start_workload(params.rate_mb_s, params.duration_s), params.duration_s + 60)
        await sc.wait_machine_drained(admin)
        [when] = sc.spread_times(1)
        job = await dc.oracle_failover(admin, sc, "test-failover", {"time_ns": when}, "point-in-time failover")
        await dc.run_op(admin, sc.machine_id, "cleanup-test-failover")
        wnum, newest = int(job["result"]["wnum"]), sc.last_wnum()
        require(0 < wnum < newest, f"the point in time landed on W {wnum}, not before the newest W {newest}")
        st.verified = (f"time {stamp(when)} (of the middle acknowledged write) -> W {wnum} of {newest}: "
                       "byte-exact (the oracle); views dropped")
    async with steps.step("test failover to latest-app-consistent + cleanup") as st:
        proc = sc.start_workload(params.rate_mb_s, params.duration_s)
        await asyncio.sleep(params.duration_s / 3)
        bm = await bookmark(admin, sc.machine_id, f"drill-app-{params.seed}", "app")
        sc.finish_workload(proc, params.duration_s + 60)
        await sc.wait_machine_drained(admin)
        job = await dc.oracle_failover(admin, sc, "test-failover", "latest-app-consistent", "app-consistent failover")
        await dc.run_op(admin, sc.machine_id, "cleanup-test-failover")
        chosen = {d["disk_id"]: (d["point"]["gen"], d["point"]["seq"]) for d in job["result"]["disks"]}
        [member] = bm["members"]
        marked = {d: (p["gen"], p["seq"]) for d, p in member["points"].items()}
        require(chosen == marked, f"latest-app-consistent chose {chosen}, the bookmark marked {marked}")
        wnum = int(job["result"]["wnum"])
        require(wnum < sc.last_wnum(), f"the bookmark's W {wnum} is not before the writes that followed it")
        st.verified = (f"bookmark {bm['tag']} taken under load; the failover landed on its batches at W {wnum} "
                       f"of {sc.last_wnum()}: byte-exact (the oracle); views dropped")
    async with steps.step("planned failover") as st:
        proc = sc.start_workload(params.rate_mb_s, params.duration_s * 4)
        await asyncio.sleep(params.duration_s / 2)
        job = await dc.run_op(admin, sc.machine_id, "planned-failover", {"image": True})  # under load
        proc.communicate()  # its writes are refused once the source stopped: it ends with an error
        acked, final = sc.last_wnum(), int(job["result"]["source_wnum"])
        require(final >= acked, f"the source stopped at W {final} but acknowledged writes up to {acked}")
        for name, image in dc.images(job).items():
            await dc.same_bytes(lab.disk_path(sc.machine, name), image, "planned failover image")
        st.verified = (f"{sc.machine.name} stopped under load at W {final} and drained: every image equals its "
                       f"source disk exactly ({acked} acknowledged writes, none lost)")


async def bookmark(admin: Any, machine_id: str, name: str, consistency: str) -> dict[str, Any]:
    """A bookmark of the machine by the CS's two-phase protocol, once committed (an aborted one
    fails the step)."""
    api = admin.api
    bm = await api.post("/v1/bookmarks", {"machines": [machine_id], "name": name, "consistency": consistency,
                                          "timeout_s": 5})
    deadline = time.monotonic() + BOOKMARK_TIMEOUT_S
    while bm["state"] not in ("committed", "aborted") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        bm = await api.get(f"/v1/bookmarks/{bm['bookmark_id']}")
    require(bm["state"] == "committed", f"bookmark {name} is {bm['state']}: {bm.get('error') or bm}")
    return dict(bm)


def stamp(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns / 1e9, UTC).isoformat(timespec="milliseconds")


def main(params: dc.DrillParams) -> int:
    return asyncio.run(run(params))
