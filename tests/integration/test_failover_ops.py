"""Failover operations and a recovery plan as a whole-lab drill (CS, MT, PS and two agents each its own
process, a workload per machine): a test failover of a machine while replication goes on, a change of
its point, its cleanup; a plan of two groups (a script before the first, a manual step after it,
resumed by the test) failing both machines over for a test, then cleaned up; an unplanned failover
and its commit through the CLI, after which the MT's settings no longer list the disk; a plan's planned
failover of m1 and the plan's commit through the CLI. The oracle
checks every image (and the committed replica) byte for byte at the machine's W."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from common import oracle, tls
from common.http import ApiClient
from deploy.lab import Lab
from deploy.scenario import MachineCheck, Scenario
from deploy.topology import load
from tests.integration.conftest import Machine, run_cli, until, write_topology

DISK_MIB = 16


@pytest.fixture
async def lab2(tmp_path: Path) -> AsyncIterator[Lab]:
    net = random.randrange(30, 250)
    machines = [Machine(name="m1", disks={"disk0": DISK_MIB}), Machine(name="m2", disks={"disk0": DISK_MIB})]
    the_lab = Lab(load(write_topology(tmp_path / "lab.toml", net, machines=machines)), tmp_path / "lab")
    try:
        yield the_lab
    finally:
        left = the_lab.down()
        assert not left, f"daemons needed SIGKILL at teardown: {left}"


async def write_some(sc: Scenario, admin: Any, seconds: float = 2.0) -> dict[str, Any]:
    """Run the machine's workload, then wait until its MT holds every acknowledged write."""
    proc = sc.start_workload(4, seconds, [0])
    stats = await asyncio.to_thread(sc.finish_workload, proc, 60)
    assert stats["writes"] > 10
    return await sc.wait_machine_drained(admin)


async def verified(sc: Scenario, job: dict[str, Any], label: str) -> MachineCheck:
    check = await sc.check_machine_job(job, job.get("params", {}).get("point"), label, 0.0)
    assert check.ok, f"{label}: {check.detail}"
    return check


def drlab(lab: Lab, *args: str) -> str:
    return run_cli(lab, *args, timeout_s=120).stdout


def job_of(out: str) -> dict[str, Any]:
    """The job the CLI prints with ``--json`` after waiting for it (deploy/cli_progress.py)."""
    return dict(json.loads(out))


@pytest.mark.timeout(240)
async def test_failover_operations_and_a_recovery_plan(lab2: Lab, seed: int, tmp_path: Path) -> None:
    lab = lab2
    sc1, sc2 = (Scenario(lab, seed + i, machine=m) for i, m in enumerate(lab.topology.machines))
    await lab.up()
    async with lab.admin() as admin:
        api: ApiClient = admin._api
        await sc1.protect(admin, timeout_s=90)
        await sc2.protect(admin, timeout_s=90)
        await write_some(sc1, admin)
        await write_some(sc2, admin)

        # a test failover of m1; replication goes on under it
        m1 = f"/v1/machines/{sc1.machine_id}"
        test = await admin.wait_job((await api.post(f"{m1}/test-failover", {"image": True}))["job_id"], timeout_s=60)
        first = await verified(sc1, test, "test failover")
        assert test["result"]["failover"]["mode"] == "test"
        listing = await write_some(sc1, admin)
        assert listing["latest_wnum"] > first.wnum  # new writes still reach the MT
        assert {d["state"] for d in await admin.disks() if d["machine_id"] == sc1.machine_id} == {"protected"}
        changed = await admin.wait_job(
            (await api.post(f"{m1}/change-point", {"point": "latest", "image": True}))["job_id"], timeout_s=60)
        second = await verified(sc1, changed, "changed point")
        assert second.wnum == listing["latest_wnum"] > first.wnum
        cleaned = await admin.wait_job((await api.post(f"{m1}/cleanup-test-failover", {}))["job_id"], timeout_s=60)
        assert cleaned["state"] == "succeeded", cleaned

        # a plan of two groups: a script before m1, a manual step after it, then m2
        marker = tmp_path / "plan-script.out"
        groups = [{"machines": [sc1.machine_id],
                   "pre": [{"kind": "script", "name": "mark", "script": f'echo "$DRLAB_PLAN/$DRLAB_GROUP" > {marker}'}],
                   "post": [{"kind": "manual", "name": "apps", "instruction": "check the apps of m1"}]},
                  {"machines": [sc2.machine_id]}]
        await api.post("/v1/plans", {"name": "drill", "groups": groups})
        plan_id = (await api.post("/v1/plans/drill/failover", {"mode": "test", "image": True}))["job_id"]

        async def waiting() -> bool:
            job = await admin.job(plan_id)
            assert job["state"] in ("queued", "running"), job
            return bool(job["steps"]) and job["steps"][-1]["name"] == "waiting: check the apps of m1"
        await until("the plan waits for its manual step", 60, waiting)
        assert marker.read_text().strip() == "drill/1"
        assert drlab(lab, "job", "resume", plan_id).count("group 1 post 1: apps") == 1
        plan = await admin.wait_job(plan_id, timeout_s=90)
        assert plan["state"] == "succeeded", plan
        for sc in (sc1, sc2):
            op = await admin.job(plan["result"]["machines"][sc.machine_id]["job_id"])
            await verified(sc, op, f"plan test failover of {sc.machine.name}")
        ops = [await admin.job(plan["result"]["machines"][sc.machine_id]["job_id"]) for sc in (sc1, sc2)]
        assert ops[0]["ended_ns"] < ops[1]["created_ns"]  # group 2 after group 1 (and its manual step)
        clean = await admin.wait_job((await api.post("/v1/plans/drill/cleanup-test-failover", {}))["job_id"],
                                     timeout_s=60)
        assert clean["state"] == "succeeded", clean

        # an unplanned failover of m2 and its commit, through the CLI
        out = drlab(lab, "--json", "machine", "failover", sc2.machine_id, "--image", "--wait", "--timeout-s", "90")
        assert "step" in out and "failed over" in out
        unplanned = await verified(sc2, job_of(out), "unplanned failover")
        disk2 = sc2.disk_ids["disk0"]
        assert {d["state"] for d in await admin.disks() if d["disk_id"] == disk2} == {"failed-over"}
        committed = job_of(drlab(lab, "--json", "machine", "commit", sc2.machine_id, "--wait", "--timeout-s", "90"))
        assert committed["state"] == "succeeded", committed
        replica = Path(committed["result"]["disks"][0]["result"]["replica_path"])
        res = await asyncio.to_thread(oracle.verify, sc2.log_path, 0, DISK_MIB << 20, unplanned.wnum, replica)
        assert res.ok, f"the committed replica: {res.detail}"
        assert {d["state"] for d in await admin.disks() if d["disk_id"] == disk2} == {"committed"}
        mt = lab.topology.mts[0]
        mt_api = ApiClient(lab.topology.cs_url, tls.client_context(tls.IdentityFiles(lab.node_dir(mt) / "identity")))
        try:
            doc = (await mt_api.get("/v1/settings", params={"version": -1, "wait_s": 0}))["document"]
        finally:
            await mt_api.close()
        listed = {d["disk_id"] for d in doc["disks"]}
        assert disk2 not in listed and sc1.disk_ids["disk0"] in listed
        started = time.monotonic()
        # m1 still replicates
        assert (await write_some(sc1, admin))["latest_wnum"] > second.wnum
        assert time.monotonic() - started < 60

        # a planned failover of a plan (m1: its agent stops, drains, fails over at its final W), committed
        started = time.monotonic()
        await api.post("/v1/plans", {"name": "planned", "groups": [{"machines": [sc1.machine_id]}]})
        planned = job_of(drlab(lab, "--json", "plan", "failover", "planned", "--planned", "--wait",
                               "--timeout-s", "90"))
        assert planned["state"] == "succeeded" and planned["result"]["mode"] == "planned", planned
        op = await admin.job(planned["result"]["machines"][sc1.machine_id]["job_id"])
        assert op["kind"] == "machine-planned-failover" and op["result"]["source_wnum"] == op["result"]["wnum"], op
        commit = job_of(drlab(lab, "--json", "plan", "commit", "planned", "--wait", "--timeout-s", "90"))
        assert commit["state"] == "succeeded" and commit["kind"] == "plan-commit", commit
        assert {d["state"] for d in await admin.disks() if d["disk_id"] == sc1.disk_ids["disk0"]} == {"committed"}
        print(f"planned plan failover and commit: {time.monotonic() - started:.1f} s")
