"""Disks leaving and joining protection, every daemon its own process: exclude one disk of a machine
of two (its MT files go, the other disk keeps replicating and a machine failover covers it alone,
byte for byte by the oracle); add a disk (the agent restarted with a third disk: it reaches
protected alone and the machine's failover covers it); disable keeping the points (the MT keeps
replica, journal and points; enabling again resumes on them), then disable without (files gone).
Each of exclude and disable is a job (cs/release_jobs.py) that ends once the MT's heartbeat no
longer lists the released disks."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from common import errors, tls
from common.http import ApiClient
from deploy.lab import Lab
from deploy.scenario import MachineCheck, Scenario, wait_state
from deploy.topology import load
from tests.integration.conftest import Machine, until, write_topology

MIB = 16


def topology(path: Path, net: int, names: tuple[str, ...]) -> Path:
    return write_topology(path, net, machines=[Machine(disks=dict.fromkeys(names, MIB))])


@pytest.fixture
async def lab2(tmp_path: Path) -> AsyncIterator[tuple[Lab, int]]:
    net = random.randrange(30, 250)
    the_lab = Lab(load(topology(tmp_path / "lab.toml", net, ("disk0", "disk1"))), tmp_path / "lab")
    try:
        yield the_lab, net
    finally:
        left = the_lab.down()
        assert not left, f"daemons needed SIGKILL at teardown: {left}"


def mt_files(lab: Lab, disk_id: str) -> list[Path]:
    root = lab.node_dir(lab.topology.mts[0])
    return [p for p in (root / "replicas" / f"{disk_id}.img", root / "journal" / disk_id) if p.exists()]


def catalog_points(lab: Lab, disk_id: str) -> int:
    db = sqlite3.connect(f"file:{lab.node_dir(lab.topology.mts[0]) / 'catalog.db'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM points WHERE disk_id = ?", (disk_id,)).fetchone()[0])
    finally:
        db.close()


async def machine_failover(sc: Scenario, admin: Any, names: list[str], disks: list[int], label: str) -> MachineCheck:
    """A workload across ``disks``, then the machine's latest point checked by the oracle; the job
    must cover exactly ``names``."""
    proc = sc.start_workload(4, 2, disks)
    stats = await asyncio.to_thread(sc.finish_workload, proc, 60)
    assert stats["writes"] > 20
    await sc.wait_machine_drained(admin)
    check = await sc.machine_failover_and_verify(admin, "latest", label)
    assert check.ok, check.detail
    assert sorted(d["name"] for d in check.result["disks"]) == names
    return check


@pytest.mark.timeout(240)
async def test_exclude_add_and_disable(lab2: tuple[Lab, int], tmp_path: Path, seed: int) -> None:
    lab, net = lab2
    await lab.up()
    sc = Scenario(lab, seed)
    api = ApiClient(lab.topology.cs_url, tls.client_context(lab.admin_files))
    try:
        async with lab.admin() as admin:
            await sc.protect(admin, timeout_s=60)
            d0, d1 = sc.disk_ids["disk0"], sc.disk_ids["disk1"]
            assert mt_files(lab, d1)

            out = await run_job(api, admin, f"/v1/disks/{d1}/exclude", {})
            assert out["released"] == [d1] and out["mt_release"] == {d1: "released"}  # its real MT's heartbeat
            await until("the excluded disk's MT files deleted", 30, lambda: _none(mt_files(lab, d1)))
            assert catalog_points(lab, d1) == 0
            sc.disk_ids = {"disk0": d0}  # the machine is its remaining disk now
            await machine_failover(sc, admin, ["disk0"], [0, 1], "after exclude")  # disk1 written, not replicated

            # add a disk: the agent restarted with a third one reports it; protect starts it alone
            lab3 = Lab(load(topology(tmp_path / "lab.toml", net, ("disk0", "disk1", "disk2"))), lab.root)
            agent = lab3.topology.machines[0]
            lab.kill_node(agent, signal.SIGTERM)
            lab3.write_config(agent)
            lab3.start_node(agent)
            d2 = await until("the new disk reported", 30, lambda: _disk_id(admin, sc.machine_id, "disk2"))
            await wait_state(admin, d0, "protected", 30)
            gen0 = await _generation(admin, d0)
            views = {v["disk_id"]: v for v in await admin.protect(sc.machine_id)}
            assert views[d2]["state"] == "enabling" and views[d1]["state"] == "unprotected"  # excluded stays out
            assert views[d0]["generation"] == gen0
            await wait_state(admin, d2, "protected", 60)
            sc3 = Scenario(lab3, seed)
            sc3.machine_id, sc3.disk_ids = sc.machine_id, {"disk0": d0, "disk2": d2}
            await machine_failover(sc3, admin, ["disk0", "disk2"], [0, 2], "after add")

            # disable keeping the points: the MT keeps them; enabling again resumes on them
            before = catalog_points(lab, d0)
            out = await run_job(api, admin, f"/v1/machines/{sc.machine_id}/disable-protection", {"keep_points": True})
            assert sorted(out["released"]) == sorted([d0, d2]) and out["protection_state"] == "unprotected"
            assert out["mt_release"] == {d0: "released", d2: "released"}
            mt = lab.topology.mts[0]
            mt_api = ApiClient(f"https://{mt.address}:{mt.ports['control']}", tls.client_context(lab.admin_files))
            try:
                await until("the MT released the disks", 30, lambda: _released(mt_api, [d0, d2]))
            finally:
                await mt_api.close()
            assert len(mt_files(lab, d0)) == 2 and len(mt_files(lab, d2)) == 2
            assert catalog_points(lab, d0) == before > 0
            await admin.protect(sc.machine_id)
            await wait_state(admin, d0, "protected", 60)
            resync = (await api.get(f"/v1/disks/{d0}/resyncs"))["items"][0]
            assert resync["mode"] == "checksum"  # compared against the kept replica
            assert catalog_points(lab, d0) > before  # the old points and the new ones

            out = await run_job(api, admin, f"/v1/machines/{sc.machine_id}/disable-protection", {"keep_points": False})
            assert sorted(out["released"]) == sorted([d0, d2])
            await until("every MT file deleted", 30, lambda: _none(mt_files(lab, d0) + mt_files(lab, d2)))
            assert catalog_points(lab, d0) == catalog_points(lab, d2) == 0
    finally:
        await api.close()


async def run_job(api: ApiClient, admin: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``path`` (202, a job), wait for the job: its result (it must succeed, steps in order)."""
    status, reply = await api.request("POST", path, json_body=body)
    assert status == 202, reply
    job = await admin.wait_job(reply["job_id"], timeout_s=60.0, poll_s=0.2)
    assert job["state"] == "succeeded", job
    assert [s["name"] for s in job["steps"]] == ["released", "MT released"]
    return dict(job["result"])


async def _none(items: list[Any]) -> bool:
    return not items


async def _disk_id(admin: Any, machine_id: str, name: str) -> str | None:
    return next((d["disk_id"] for d in await admin.disks() if d["machine_id"] == machine_id and d["name"] == name),
                None)


async def _generation(admin: Any, disk_id: str) -> int:
    return int(next(d["generation"] for d in await admin.disks() if d["disk_id"] == disk_id))


async def _released(mt_api: ApiClient, disk_ids: list[str]) -> bool:
    for disk_id in disk_ids:
        try:
            await mt_api.get(f"/v1/disks/{disk_id}/status")
            return False
        except errors.NotFound:
            continue
    return True
