"""``drlab ps purge`` on a killed PS, every daemon a process: the machine moves to the other PS under a
new generation, replication resumes (writes made after the purge reach the MT) and the PS is gone.
The switch with a dead PS itself is covered in depth by test_ps_switch.py; this checks the purge."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import LabMaker, run_cli
from tests.integration.test_agent_crash_drills import disk_entry
from tests.integration.test_ps_switch import components, node_of, start


@pytest.mark.timeout(120)
async def test_purge_of_a_killed_ps_moves_its_machine_and_replication_resumes(make_lab: LabMaker,
                                                                              seed: int) -> None:
    lab = make_lab(32, pss=2)
    sc, admin = await start(lab, 0.1, seed)
    try:
        before = await disk_entry(admin, sc.disk_id)
        comps = await components(admin)
        old_ps = before["ps_id"]
        new_ps = next(c for c, v in comps.items() if v["role"] == "ps" and c != old_ps)
        refused = await asyncio.to_thread(run_cli, lab, "ps", "purge", comps[old_ps]["host_id"], ok=False)
        assert "still heartbeating" in refused.stderr
        lab.kill_node(node_of(lab, comps[old_ps]))
        await asyncio.sleep(3.5)  # its heartbeat goes stale
        await asyncio.to_thread(run_cli, lab, "ps", "purge", comps[old_ps]["host_id"], "--to",
                                comps[new_ps]["host_id"], "--dead-after-s", "3", "--wait", "--timeout-s", "60")
        after = await disk_entry(admin, sc.disk_id)
        assert after["ps_id"] == new_ps and after["generation"] == before["generation"] + 1
        assert old_ps not in await components(admin)
        proc = sc.start_workload(rate_mb_s=2, duration_s=2)
        await asyncio.to_thread(sc.finish_workload, proc, 60)
        await sc.wait_drained(60)  # the writes after the purge reached the MT through the new PS
        assert (await disk_entry(admin, sc.disk_id))["state"] == "protected"
    finally:
        await admin.__aexit__(None, None, None)
