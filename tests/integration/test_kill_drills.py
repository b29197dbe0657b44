"""Every daemon as its own process; kill -9 in the middle of the work, restart, and the
oracle checks that nothing acknowledged was lost and every older point is still right."""

from __future__ import annotations

import asyncio
import os

import pytest

from deploy.lab import Lab
from tests.integration.labdrills import start_protected


@pytest.mark.timeout(240)
async def test_ps_kill_9_during_workload_loses_no_acknowledged_write(lab: Lab) -> None:
    sc, admin = await start_protected(lab)
    try:
        ps = lab.topology.pss[0]
        proc = sc.start_workload(rate_mb_s=8, duration_s=8)
        await asyncio.sleep(3)
        lab.kill_node(ps)
        await asyncio.sleep(1)
        lab.start_node(ps)
        stats = await asyncio.to_thread(sc.finish_workload, proc, 120)
        assert stats["writes"] > 0
        await sc.wait_drained()
        check = await sc.failover_and_verify(admin, "latest", "latest")
        assert check.ok, check.detail
        assert int(check.result["point"]["wnum_hi"]) >= sc.last_wnum()
    finally:
        await admin.__aexit__(None, None, None)  # type: ignore[attr-defined]


@pytest.mark.timeout(240)
async def test_mt_killed_mid_apply_keeps_every_earlier_point(lab: Lab) -> None:
    sc, admin = await start_protected(lab)
    try:
        mt = lab.topology.mts[0]
        proc = sc.start_workload(rate_mb_s=6, duration_s=9)
        await asyncio.sleep(3)
        # The MT dies inside an apply: after the replica write, before the commit record.
        lab.kill_node(mt)
        os.environ["DRLAB_MT_CRASH_AT"] = "after_replica_write:20"
        try:
            lab.start_node(mt)
        finally:
            del os.environ["DRLAB_MT_CRASH_AT"]
        for _ in range(200):
            if not lab.status()[1]["running"]:
                break
            await asyncio.sleep(0.1)
        assert not lab.status()[1]["running"], "the MT did not reach its crash point"
        lab.start_node(mt)
        await asyncio.to_thread(sc.finish_workload, proc, 120)
        checks = [await sc.failover_and_verify(admin, {"time_ns": t}, f"T{i}")
                  for i, t in enumerate(sc.spread_times(4))]
        await sc.wait_drained()
        checks.append(await sc.failover_and_verify(admin, "latest", "latest"))
        bad = [(c.label, c.detail) for c in checks if not c.ok]
        assert not bad, bad
    finally:
        await admin.__aexit__(None, None, None)  # type: ignore[attr-defined]
