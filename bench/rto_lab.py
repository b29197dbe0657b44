"""The CS leg of a failover, in a process lab (bench/rto.py measures the MT's part per disk size).

A lab of its own (CS, PS, MT and one machine with one small disk, each daemon its own process, on
a loopback range 127.N.x.y): protection, a short workload through the agent, then ``rounds``
failovers to ``latest`` the way an operator runs them (deploy/scenario.py
``failover_and_verify``: the admin client's ``POST /v1/disks/{id}/failover`` with ``image: true``,
then ``wait_job``, polling every 0.2 s), each image checked by the oracle. Per round: the seconds from the command
to the job seen succeeded, the MT's own part of it (the job result's ``view.ready_s`` +
``view.image_s``) and the rest — the CS leg: the job handed to the MT by the settings long-poll,
the result posted back, and the admin's poll. The CS leg does not depend on the disk's size.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.benchlab import new_lab
from deploy.scenario import Scenario


async def cs_leg(root: Path, seed: int, disk_mib: int = 32, rounds: int = 3) -> dict[str, Any]:
    """The lab's failovers to latest (module docstring); the lab is down when this returns."""
    lab = new_lab(root, 1, disk_mib, seed)  # one CS, PS, MT and machine (bench/benchlab.py)
    sc = Scenario(lab, seed)
    rows: list[dict[str, Any]] = []
    try:
        await lab.up()
        async with lab.admin() as admin:
            await sc.protect(admin, timeout_s=120)
            stats = await asyncio.to_thread(sc.finish_workload, sc.start_workload(4, 2, [0]), 60)
            await sc.wait_machine_drained(admin)
            for i in range(rounds):
                check = await sc.failover_and_verify(admin, "latest", f"latest-{i + 1}")
                view = check.result.get("view", {})
                mt_s = float(view.get("ready_s", 0.0)) + float(view.get("image_s", 0.0))
                rows.append({"command_to_succeeded_s": round(check.seconds, 4), "mt_job_s": round(mt_s, 4),
                             "cs_leg_s": round(check.seconds - mt_s, 4), "oracle_ok": check.ok,
                             "oracle_detail": check.detail})
    finally:
        left = lab.down()
    legs = sorted(r["cs_leg_s"] for r in rows)
    return {"disk_mib": disk_mib, "workload_writes": stats["writes"], "rounds": rows,
            "cs_leg_median_s": legs[len(legs) // 2], "oracle_ok": all(r["oracle_ok"] for r in rows),
            "daemons_killed": left}
