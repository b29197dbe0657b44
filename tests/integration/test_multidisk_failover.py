"""A machine of three disks as a whole-lab drill (CS, MT, PS and the agent each its own process, the
workload a process writing across the three disks with one write counter): the machine fails over
to its latest point — under load and after it — and to two earlier machine points, one chosen by
its W, one by its time; each time the oracle finds all three images at the same W, byte for byte.
The negative: each disk's own "latest", taken one after the other, is not one machine state."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from common import oracle
from deploy.lab import Lab
from deploy.scenario import MachineCheck, Scenario
from deploy.topology import load
from tests.integration.conftest import Machine
from tests.integration.conftest import write_topology as lab_topology

DISK_MIB = 64
NAMES = ("disk0", "disk1", "disk2")


def write_topology(path: Path, net: int) -> Path:
    return lab_topology(path, net, machines=[Machine(disks=dict.fromkeys(NAMES, DISK_MIB))])


@pytest.fixture
async def lab3(tmp_path: Path) -> AsyncIterator[Lab]:
    net = random.randrange(30, 250)
    the_lab = Lab(load(write_topology(tmp_path / "lab.toml", net)), tmp_path / "lab")
    try:
        yield the_lab
    finally:
        left = the_lab.down()
        assert not left, f"daemons needed SIGKILL at teardown: {left}"


def assert_one_w(check: MachineCheck, sc: Scenario) -> None:
    assert check.ok, check.detail
    assert check.verdict is not None and list(check.verdict.disks) == list(NAMES)
    assert all(r.wnum_hi == check.wnum for r in check.verdict.disks.values())  # the same W on every disk
    own = {sc.disk_index(d["name"]): int(d["point"]["wnum_hi"]) for d in check.result["disks"]}
    assert oracle.machine_consistency(sc.log_path, own).ok  # and the disks' own points agree with it


async def per_disk_latest(admin: Any, sc: Scenario) -> dict[int, int]:
    """What failing the disks over one by one gives: each disk's own latest when its job ran."""
    out = {}
    for name in NAMES:
        job = await admin.wait_job(await admin.failover(sc.disk_ids[name], "latest", image=True), timeout_s=60)
        assert job["state"] == "succeeded", job
        wnum_hi = int(job["result"]["point"]["wnum_hi"])
        res = await asyncio.to_thread(oracle.verify, sc.log_path, sc.disk_index(name), DISK_MIB << 20, wnum_hi,
                                      Path(job["result"]["image_path"]))
        assert res.ok, f"{name} at its own point {wnum_hi}: {res.detail}"  # right for the disk alone
        out[sc.disk_index(name)] = wnum_hi
        await asyncio.sleep(0.3)
    return out


async def cli_machine_failover(lab: Lab, sc: Scenario, wnum: int) -> MachineCheck:
    """`drlab failover --machine ID --wnum W --image`, as an operator runs it (the oracle reads the images)."""
    started = time.monotonic()
    cmd = [sys.executable, "-m", "deploy.cli", "--topology", str(lab.root.parent / "lab.toml"), "--dir",
           str(lab.root), "--json", "failover", "--machine", sc.machine_id, "--wnum", str(wnum), "--image",
           "--timeout-s", "60"]
    proc = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    job = json.loads(proc.stdout)
    assert job["kind"] == "machine-failover" and job["machine_id"] == sc.machine_id
    return await sc.check_machine_job(job, {"wnum": wnum}, "by wnum (drlab)", time.monotonic() - started)


@pytest.mark.timeout(90)
async def test_a_machine_of_three_disks_fails_over_at_one_w(lab3: Lab, seed: int) -> None:
    lab, sc = lab3, Scenario(lab3, seed)
    started = time.monotonic()
    await lab.up()
    async with lab.admin() as admin:
        await sc.protect(admin, timeout_s=60)
        proc = sc.start_workload(6, 9, [0, 1, 2], "--hot-region-mib", "16")
        try:
            await asyncio.sleep(2.0)
            # the negative: per-disk points taken independently are not one machine state
            own = await per_disk_latest(admin, sc)
            mixed = oracle.machine_consistency(sc.log_path, own)
            assert not mixed.ok, f"per-disk latest points {own} happened to agree"
            print(f"per-disk latest: {own} -> {mixed.describe()}")
            # the machine's latest while the workload writes: every disk at one W
            under_load = await sc.machine_failover_and_verify(admin, "latest", "latest under load")
            assert_one_w(under_load, sc)
        finally:
            stats = await asyncio.to_thread(sc.finish_workload, proc, 60)
        assert stats["writes"] > 100 and {r.disk for r in sc.acked_writes()} == {0, 1, 2}

        listing = await sc.wait_machine_drained(admin)
        items = listing["items"]
        assert len(items) >= 10 and listing["latest_wnum"] == items[-1]["wnum"]
        latest = await sc.machine_failover_and_verify(admin, "latest", "latest")
        assert_one_w(latest, sc)
        assert latest.wnum == listing["latest_wnum"] >= min(sc.last_writes().values())
        assert latest.wnum > under_load.wnum

        by_wnum, by_time = items[len(items) // 3], items[2 * len(items) // 3]
        checks = [await cli_machine_failover(lab, sc, by_wnum["wnum"]),
                  await sc.machine_failover_and_verify(admin, {"time_ns": by_time["t_ns"]}, "by time")]
        for check, item in zip(checks, (by_wnum, by_time), strict=True):
            assert_one_w(check, sc)
            assert check.wnum == item["wnum"] < latest.wnum
            chosen = {d["disk_id"]: (d["point"]["gen"], d["point"]["seq"]) for d in check.result["disks"]}
            assert chosen == {d: (p["gen"], p["seq"]) for d, p in item["disks"].items()}
        for check in (under_load, latest, *checks):
            print(f"{check.label}: W={check.wnum} in {check.seconds:.2f} s\n{check.detail}")
    assert time.monotonic() - started < 60, f"the drill took {time.monotonic() - started:.0f} s"
