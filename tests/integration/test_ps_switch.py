"""PS load balance and switch with every daemon a process, two PSs, a workload running:

- balance with the old PS alive: the agent keeps its generation and its seqs, the old PS drains
  what it cached, the new PS gets the following seqs; no resync, only the batches in flight at
  the switch are sent again, the MT's catalog holds every seq of the generation exactly once;
- switch with the old PS killed (SIGKILL): a new generation (reason ps-switch), the agent
  re-sends only its un-applied regions (the hot extents) to the new PS.

Both end with the oracle checking the failed-over image at "latest".
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from common import errors, tls
from common.config import AgentConfig
from common.http import ApiClient
from deploy.lab import Lab
from deploy.scenario import Scenario
from deploy.topology import Node
from tests.integration.conftest import LabMaker
from tests.integration.test_agent_crash_drills import disk_entry, resent_bytes, verify_latest

MiB = 1 << 20
HOT_BLOCK = AgentConfig().hot_hash_block_bytes
ACTLOG_EXTENT = int(AgentConfig.actlog_extent_bytes)  # the lab's agents keep the default


async def start(lab: Lab, fraction: float, seed: int) -> tuple[Scenario, Any]:
    sc = Scenario(lab, seed)
    await lab.init()
    lab.write_configs()
    await asyncio.to_thread(sc.prefill, fraction)
    await lab.up()
    admin = lab.admin()
    await admin.__aenter__()
    await sc.protect(admin, timeout_s=150)
    return sc, admin


async def components(admin: Any) -> dict[str, dict[str, Any]]:
    return {c["component_id"]: c for c in await admin.components()}


def node_of(lab: Lab, comp: dict[str, Any]) -> Node:
    return next(n for n in lab.topology.pss if n.name == comp["host_id"])


async def agent_disk_status(admin: Any, sc: Scenario) -> dict[str, Any]:
    comp = (await components(admin))[sc.machine_id]
    return dict((comp.get("metrics") or {}).get("disks", {}).get(sc.disk.name, {}))


async def ps_backlog(admin: Any, ps_id: str, disk_id: str) -> int:
    """The disk's backlog in the PS's last heartbeat (bytes cached, not yet at the MT)."""
    metrics = (await components(admin))[ps_id].get("metrics") or {}
    return int((metrics.get("disks") or {}).get(disk_id, {}).get("backlog_bytes", 0))


def check_seqs(points: list[dict[str, Any]], gen: int) -> tuple[int, int]:
    """(first, last) seq of ``gen`` in the MT catalog; fails on a gap or a duplicate."""
    seqs = sorted(int(p["seq"]) for p in points if int(p["gen"]) == gen)
    assert seqs, f"no point of generation {gen}"
    assert len(seqs) == len(set(seqs)), "a seq applied twice"
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a gap in the applied seqs"
    return seqs[0], seqs[-1]


async def mt_refuses(lab: Lab, ps: Node, disk_id: str, seq: int) -> bool:
    """Whether the MT refuses a batch for the disk from ``ps`` with 403 (the fence), before reading it."""
    mt = lab.topology.mts[0]
    client = ApiClient(f"https://{mt.address}:{mt.ports['data']}",
                       tls.client_context(tls.IdentityFiles(lab.node_dir(ps) / "identity")))
    try:
        await client.request("PUT", f"/v1/disks/{disk_id}/batches/1/{seq}", data=b"late")
    except errors.Forbidden:
        return True
    finally:
        await client.close()
    return False


async def switch_job(admin: Any, kind: str, ps_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return dict(await admin.wait_job(await admin.ps_move(ps_id, kind, body), timeout_s=180))


def move_body(kind: str, machine_id: str, to_ps_id: str, **more: Any) -> dict[str, Any]:
    """A switch moves every machine of the PS; a balance the machines it names."""
    return {"to_ps_id": to_ps_id, **({"machine_ids": [machine_id]} if kind == "balance" else {}), **more}


@pytest.mark.timeout(420)
@pytest.mark.parametrize("kind", ["balance"])  # a switch, old PS alive: test_drills_ops.py, test_ps_tasks_lab.py
async def test_a_move_with_the_old_ps_alive_drains_without_resync_or_seq_gap(
        make_lab: LabMaker, seed: int, kind: str) -> None:
    lab = make_lab(64, pss=2)
    sc, admin = await start(lab, 0.5, seed)
    try:
        before = await disk_entry(admin, sc.disk_id)
        old_ps = before["ps_id"]
        new_ps = next(c for c, v in (await components(admin)).items() if v["role"] == "ps" and c != old_ps)
        proc = sc.start_workload(rate_mb_s=3, duration_s=16)
        await asyncio.sleep(4)
        mt = lab.topology.mts[0]
        os.kill(lab.read_pids()[mt.name], signal.SIGSTOP)  # the old PS keeps acknowledging: a backlog builds up there
        try:
            await asyncio.sleep(2.5)
            backlog = await ps_backlog(admin, old_ps, sc.disk_id)
            started = time.monotonic()
            job_id = await admin.ps_move(old_ps, kind, move_body(kind, sc.machine_id, new_ps))
            await asyncio.sleep(3)  # the agent follows; the new PS gets the next seqs, the MT stages them later
            job = await admin.job(job_id)
            assert job["state"] == "running" and "drain" not in [s["name"] for s in job["steps"]]
        finally:
            os.kill(lab.read_pids()[mt.name], signal.SIGCONT)  # the old PS drains; the MT fills the gap, in order
        job = await admin.wait_job(job_id, timeout_s=180)
        seconds = time.monotonic() - started
        assert job["state"] == "succeeded", (job.get("error"), job.get("steps"))
        assert [s["name"] for s in job["steps"]] == ["plan", "reassign", "drain", "fence", "verify"]
        assert job["result"]["regenerated"] == []
        await asyncio.to_thread(sc.finish_workload, proc, 90)
        await sc.wait_drained(90)
        after = await disk_entry(admin, sc.disk_id)
        assert (after["ps_id"], after["state"]) == (new_ps, "protected")
        assert after["generation"] == before["generation"]  # no resync: the stream went on
        assert after["last_resync"]["generation"] == before["generation"]
        status = await agent_disk_status(admin, sc)
        resent = int(status["switch_resent_bytes"])
        first, last = check_seqs(await sc.points(), int(after["generation"]))
        print(f"disk {sc.disk.size_bytes >> 20} MiB, old PS backlog at the switch {backlog / MiB:.2f} MiB (drained), "
              f"job {seconds:.1f} s, re-sent {resent / MiB:.2f} MiB "
              f"({status['ps_switches']} switch), seqs {first}..{last} of generation {after['generation']} "
              "without gap or duplicate")
        assert status["ps_switches"] == 1
        assert await mt_refuses(lab, node_of(lab, (await components(admin))[old_ps]), sc.disk_id, last + 1)
        assert resent <= 16 * MiB and resent <= sc.disk.size_bytes // 4  # the batches in flight, not the disk
        await verify_latest(sc, admin)
    finally:
        await admin.__aexit__(None, None, None)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("kind", ["switch"])  # a balance with the old PS killed: test_drills_ops.py (the drill)
async def test_a_move_with_the_old_ps_killed_resends_only_unapplied_regions(
        make_lab: LabMaker, seed: int, kind: str) -> None:
    lab = make_lab(256, pss=2)
    sc, admin = await start(lab, 0.5, seed)
    try:
        before = await disk_entry(admin, sc.disk_id)
        comps = await components(admin)
        old_ps = before["ps_id"]
        proc = sc.start_workload(rate_mb_s=2, duration_s=14)
        await asyncio.sleep(4)
        window_from = time.time_ns() - int(4e9)  # lag and the activity log's linger before the MT stops
        lab.kill_node(lab.topology.mts[0])  # batches pile up in the old PS, acknowledged to the agent
        await asyncio.sleep(3)
        in_flight = int((await agent_disk_status(admin, sc)).get("unacked_bytes", 0))
        backlog = await ps_backlog(admin, old_ps, sc.disk_id)
        lab.kill_node(node_of(lab, comps[old_ps]))  # SIGKILL, with what it cached
        lab.start_node(lab.topology.mts[0])
        await asyncio.sleep(3.5)  # its heartbeat goes stale
        new_ps = next(c for c, v in comps.items() if v["role"] == "ps" and c != old_ps)
        job = await switch_job(admin, kind, old_ps, move_body(kind, sc.machine_id, new_ps, dead_after_s=3.0))
        window_to = time.time_ns()
        assert job["state"] == "succeeded", (job.get("error"), job.get("steps"))
        assert job["result"]["mode"] == "regenerate" and job["result"]["regenerated"] == [sc.disk_id]
        await asyncio.to_thread(sc.finish_workload, proc, 90)
        await sc.wait_drained(90)
        after = await disk_entry(admin, sc.disk_id)
        assert after["ps_id"] != old_ps and after["state"] == "protected"
        assert after["generation"] == before["generation"] + 1
        assert after["last_resync"]["reason"] == "ps-switch"
        hot = int(after["bytes_total"])  # the region copy: the hot extents only
        resent, batches = await resent_bytes(sc, int(after["generation"]))
        check_seqs(await sc.points(), int(after["generation"]))
        # un-applied at the switch: what the old PS held (backlog), what was in flight to it, and what
        # the agent could not send while it was dead: the writes of that window, by 1 MiB extent
        window = [r for r in sc.acked_writes() if window_from <= r.ack_ns <= window_to]
        written = sum(r.length for r in window)
        extents = {e for r in window for e in range(r.offset // ACTLOG_EXTENT, (r.end - 1) // ACTLOG_EXTENT + 1)}
        print(f"disk {sc.disk.size_bytes >> 20} MiB; old PS backlog at the kill {backlog / MiB:.2f} MiB, in flight "
              f"{in_flight / MiB:.2f} MiB; written while un-applied {written / MiB:.2f} MiB over {len(extents)} "
              f"extents of 1 MiB; hot extents {hot / MiB:.1f} MiB; re-sent {resent / MiB:.2f} MiB in {batches} batches")
        later = sum(r.length for r in sc.acked_writes() if r.ack_ns > window_to)
        assert 0 < hot <= len(extents) * ACTLOG_EXTENT  # the un-applied regions (by extent), no more
        # only the hash blocks (64 KiB) of the un-applied writes differ from the replica: they travel,
        # then the writes that went on after the switch
        blocks = {b for r in window for b in range(r.offset // HOT_BLOCK, (r.end - 1) // HOT_BLOCK + 1)}
        assert 0 < resent <= len(blocks) * HOT_BLOCK + in_flight + later
        assert resent <= sc.disk.size_bytes // 2  # not the disk
        await verify_latest(sc, admin)
    finally:
        await admin.__aexit__(None, None, None)
