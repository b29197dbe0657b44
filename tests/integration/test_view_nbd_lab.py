"""The failed-over machine writes to its failover view over NBD (mt/viewnbd.py), in a process lab:
a test failover's view, written by the workload's ``--nbd`` mode, reads back over NBD exactly as
the oracle says (the failover image + the NBD workload's writes); an unplanned failover's view,
written the same way then committed, puts those writes in the committed replica."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from common import oracle
from common.nbdclient import NbdClient, NbdError
from deploy.drills.common import nbd_workload, run_op
from deploy.lab import Lab
from deploy.scenario import Scenario
from deploy.topology import load
from tests.integration.conftest import LabMaker, write_topology

DISK_MIB = 16


def test_the_lab_mt_serves_views_on_its_own_loopback_address(tmp_path: Path) -> None:
    lab = Lab(load(write_topology(tmp_path / "lab.toml", 77)), tmp_path / "lab")
    (mt,) = [n for n in lab.nodes if n.role == "mt"]
    cfg = lab.config_for(mt)
    assert (cfg["listen_host"], cfg["view_nbd_port"]) == ("127.77.2.2", 10809)
    assert "view_nbd_host" not in cfg  # = listen_host


async def view_url(admin: Any, job: dict[str, Any]) -> tuple[str, Path]:
    """The NBD URL of the machine's (only) disk's view, and its failover image (the base)."""
    (disk,) = job["result"]["disks"]
    child = await admin.job(disk["job_id"])
    url = str(child["result"]["nbd_url"])
    assert url.endswith(f":10809/{disk['job_id']}"), url
    return url, Path(disk["image_path"])


async def read_all(url: str, dest: Path) -> None:
    async with NbdClient.from_url(url) as nbd:
        data = await nbd.read(0, nbd.size_bytes)
    await asyncio.to_thread(dest.write_bytes, data)


@pytest.mark.timeout(240)
async def test_failed_over_machine_writes_its_view_over_nbd(make_lab: LabMaker, seed: int, tmp_path: Path) -> None:
    lab: Lab = make_lab(DISK_MIB)
    sc = Scenario(lab, seed)
    size = sc.disk.size_bytes
    await lab.up()
    async with lab.admin() as admin:
        await sc.protect(admin, timeout_s=90)
        stats = await asyncio.to_thread(sc.finish_workload, sc.start_workload(4, 2, [0]), 60)
        assert stats["writes"] > 10
        await sc.wait_machine_drained(admin)

        # a test failover; the machine writes to its view over NBD; the view reads back as the oracle says
        test = await run_op(admin, sc.machine_id, "test-failover", {"image": True})
        url, base = await view_url(admin, test)
        log1 = tmp_path / "view-test.log"
        nbd_stats = await asyncio.to_thread(nbd_workload, url, log1, seed + 1, 3)
        assert nbd_stats["writes"] > 10 and nbd_stats["error"] is None, nbd_stats
        await read_all(url, tmp_path / "view.img")
        res = await asyncio.to_thread(oracle.verify_over_base, base, log1, 0, size, nbd_stats["last_wnum"],
                                      tmp_path / "view.img")
        assert res.ok, f"the view over NBD: {res.detail}"
        assert await asyncio.to_thread(oracle.compare, base, tmp_path / "view.img") is not None  # it did change
        # the failover image stays the point's; cleanup drops the view and its export
        verdict = await asyncio.to_thread(oracle.verify, sc.log_path, 0, size, test["result"]["wnum"], base)
        assert verdict.ok, verdict.detail
        await run_op(admin, sc.machine_id, "cleanup-test-failover")
        with pytest.raises(NbdError):
            await NbdClient.from_url(url).connect()

        # an unplanned failover, NBD writes, commit: the committed replica holds them
        real = await run_op(admin, sc.machine_id, "failover", {"point": "latest", "mode": "unplanned", "image": True})
        url2, base2 = await view_url(admin, real)
        log2 = tmp_path / "view-real.log"
        stats2 = await asyncio.to_thread(nbd_workload, url2, log2, seed + 2, 2)
        assert stats2["writes"] > 5 and stats2["error"] is None, stats2
        committed = await run_op(admin, sc.machine_id, "commit")
        replica = Path(committed["result"]["disks"][0]["result"]["replica_path"])
        res = await asyncio.to_thread(oracle.verify_over_base, base2, log2, 0, size, stats2["last_wnum"], replica)
        assert res.ok, f"the committed replica: {res.detail}"
        with pytest.raises(NbdError):  # committed: no longer served
            await NbdClient.from_url(url2).connect()
