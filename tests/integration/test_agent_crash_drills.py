"""Crash recovery without a full resync: every daemon a process, kill -9 in the middle of a
workload, and the oracle checks the failed-over image.

- agent (and its whole machine) killed on a fully written 1 GiB disk: the restarted agent
  copies only the extents its activity log marked hot;
- the PS killed and its cache directory deleted: the agent sees that acknowledged batches are
  gone and re-sends its hot extents under a new generation.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from typing import Any

import pytest

from deploy.lab import Lab
from deploy.scenario import Scenario
from tests.integration.conftest import LabMaker

MiB = 1 << 20


def seed_for_test() -> int:
    seed = random.randrange(1, 2**31)
    print(f"seed={seed}")
    return seed


async def start(lab: Lab, fraction: float) -> tuple[Scenario, Any]:
    sc = Scenario(lab, seed_for_test())
    await lab.init()
    lab.write_configs()
    await asyncio.to_thread(sc.prefill, fraction)
    await lab.up()
    admin = lab.admin()
    await admin.__aenter__()
    await sc.protect(admin, timeout_s=150)
    return sc, admin


async def disk_entry(admin: Any, disk_id: str) -> dict[str, Any]:
    return next(d for d in await admin.disks() if d["disk_id"] == disk_id)


async def protected_again(admin: Any, disk_id: str, gen: int, timeout_s: float) -> dict[str, Any]:
    """Wait until the disk is protected under a generation above ``gen``."""
    for _ in range(int(timeout_s * 5)):
        entry = await disk_entry(admin, disk_id)
        if entry["generation"] > gen and entry.get("state") == "protected":
            return entry
        await asyncio.sleep(0.2)
    raise AssertionError(f"disk not protected again under a new generation: {entry}")


async def resent_bytes(sc: Scenario, gen: int) -> tuple[int, int]:
    """(data bytes the MT applied under ``gen`` up to its RESYNC_DONE batch, batches)."""
    pts = sorted((p for p in await sc.points() if p["gen"] == gen), key=lambda p: p["seq"])
    total, count = 0, 0
    for p in pts:
        total, count = total + int(p["data_bytes"]), count + 1
        if int(p["flags"]) & 2:  # RESYNC_DONE
            break
    return total, count


async def verify_latest(sc: Scenario, admin: Any) -> None:
    proc = sc.start_workload(rate_mb_s=4, duration_s=2)
    await asyncio.to_thread(sc.finish_workload, proc, 60)
    await sc.wait_drained(90)
    check = await sc.failover_and_verify(admin, "latest", "latest")
    assert check.ok, check.detail


@pytest.mark.timeout(420)
async def test_machine_killed_mid_workload_resyncs_only_hot_extents(make_lab: LabMaker) -> None:
    lab = make_lab(1024)
    sc, admin = await start(lab, 1.0)
    try:
        before = await disk_entry(admin, sc.disk_id)
        proc = sc.start_workload(rate_mb_s=10, duration_s=30)
        await asyncio.sleep(5)
        lab.kill_node(sc.machine)  # the agent, then the workload: the whole machine is gone
        proc.kill()
        proc.communicate(timeout=30)
        lab.start_node(sc.machine)
        after = await protected_again(admin, sc.disk_id, before["generation"], 120)
        assert after["generation"] == before["generation"] + 1
        hot = int(after["bytes_total"])  # the region copy covers the hot extents only
        resent, batches = await resent_bytes(sc, int(after["generation"]))
        size = sc.disk.size_bytes
        print(f"disk {size >> 20} MiB, hot extents {hot >> 20} MiB, re-sent {resent / MiB:.1f} MiB "
              f"in {batches} batches")
        assert 0 < hot <= size // 4
        assert resent <= hot + 4 * MiB  # at most the hot extents (plus the write in flight)
        await verify_latest(sc, admin)
    finally:
        await admin.__aexit__(None, None, None)


@pytest.mark.timeout(300)
async def test_ps_killed_with_its_cache_deleted_agent_resends_unapplied_regions(
        make_lab: LabMaker) -> None:
    lab = make_lab(256)
    sc, admin = await start(lab, 0.5)
    try:
        ps, mt = lab.topology.pss[0], lab.topology.mts[0]
        before = await disk_entry(admin, sc.disk_id)
        lab.kill_node(mt)  # batches pile up in the PS cache, acknowledged to the agent
        proc = sc.start_workload(rate_mb_s=2, duration_s=3)
        await asyncio.to_thread(sc.finish_workload, proc, 60)
        lab.kill_node(ps)
        shutil.rmtree(lab.node_dir(ps) / "cache")
        lab.start_node(ps)
        lab.start_node(mt)
        after = await protected_again(admin, sc.disk_id, before["generation"], 90)
        assert after["generation"] == before["generation"] + 1
        resent, _ = await resent_bytes(sc, int(after["generation"]))
        print(f"disk {sc.disk.size_bytes >> 20} MiB, re-sent {resent / MiB:.1f} MiB")
        assert 0 < resent <= after["bytes_total"] <= sc.disk.size_bytes // 2  # the hot extents, not the disk
        await verify_latest(sc, admin)
    finally:
        await admin.__aexit__(None, None, None)
