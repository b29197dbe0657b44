"""Multi-machine bookmarks as a whole-lab drill: every daemon its own process (CS, MT, PS, two agents),
the causal workload as a process writing through both agents' block sockets, group bookmarks by the
CS's two-phase protocol (one through the `drlab` command), and failover of both disks by tag through
the CS and the MT: each image is the oracle's and no effect is without its cause."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent import causal
from common import oracle, tls
from common.http import ApiClient
from common.wire import writelog
from deploy.lab import Lab
from deploy.topology import load
from tests.integration.conftest import Machine
from tests.integration.conftest import write_topology as lab_topology

MiB = 1 << 20
DISK_MIB = 8
ROOT = Path(__file__).resolve().parents[2]


def write_topology(path: Path, net: int) -> Path:
    hosts = (("ma", 10), ("mb", 11))
    return lab_topology(path, net, machines=[
        Machine(name, {"disk0": DISK_MIB}, f'address = "127.{net}.1.{host}"') for name, host in hosts])


def free_net() -> int:
    """A loopback /16 whose lab addresses nobody listens on (other labs may run at the same time)."""
    for _ in range(50):
        net = random.randrange(30, 250)
        try:
            for host, port in ((f"127.{net}.2.1", 8443), (f"127.{net}.2.2", 9443), (f"127.{net}.1.1", 9443)):
                with socket.socket() as sock:
                    sock.bind((host, port))
            return net
        except OSError:
            continue
    raise RuntimeError("no free loopback network for the lab")


@pytest.fixture
async def lab2(tmp_path: Path) -> AsyncIterator[Lab]:
    net = free_net()
    the_lab = Lab(load(write_topology(tmp_path / "lab.toml", net)), tmp_path / "lab")
    try:
        yield the_lab
    finally:
        left = the_lab.down()
        assert not left, f"daemons needed SIGKILL at teardown: {left}"


async def until_ok(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout_s} s"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(120)
async def test_group_bookmarks_across_two_machine_processes(lab2: Lab, seed: int) -> None:
    lab = lab2
    started = time.monotonic()
    await lab.up()
    api = ApiClient(lab.topology.cs_url, tls.client_context(lab.admin_files), timeout_s=30)
    a_log, b_log = lab.root / "a-writes.log", lab.root / "b-writes.log"
    proc: asyncio.subprocess.Process | None = None
    try:
        comps = (await api.get("/v1/components"))["items"]
        ids = {c["host_id"]: c["component_id"] for c in comps if c["role"] == "agent"}
        disks = {m: (await api.post(f"/v1/machines/{ids[m]}/protect"))["disks"][0]["disk_id"] for m in ("ma", "mb")}

        async def protected() -> bool:
            items = (await api.get("/v1/disks"))["items"]
            return all(d["state"] == "protected" for d in items if d["disk_id"] in disks.values())

        await until_ok(protected, 60, "both disks protected")
        await api.put("/v1/groups/pair", {"machines": [ids["ma"], ids["mb"]]})
        up_s = time.monotonic() - started
        machines = {n.name: n for n in lab.topology.machines}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.causal", "run", "--a-socket", str(lab.agent_socket(machines["ma"])),
            "--b-socket", str(lab.agent_socket(machines["mb"])), "--a-log", str(a_log), "--b-log", str(b_log),
            "--slots", str(DISK_MIB * MiB // 4096), "--duration-s", "8", "--pause-ms", "3", "--seed", str(seed),
            "--json", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        await asyncio.sleep(1.0)
        done = []
        for i in range(6):
            bm = await api.post("/v1/bookmarks", {"group": "pair", "name": f"lab{i}", "timeout_s": 5,
                                                  "consistency": ("app", "crash")[i % 2]})
            while bm["state"] not in ("committed", "aborted"):
                await asyncio.sleep(0.02)
                bm = await api.get(f"/v1/bookmarks/{bm['bookmark_id']}")
            done.append(bm)
            await asyncio.sleep(0.3)
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "deploy.cli", "--topology", str(lab.root.parent / "lab.toml"), "--dir",
            str(lab.root), "--json", "bookmark", "create", "--group", "pair", "--name", "lab-cli", "--wait",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        out, err = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0, err.decode()[-2000:]
        done.append(json.loads(out))
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        stats = json.loads(stdout.decode().strip().splitlines()[-1])
        assert [b["state"] for b in done] == ["committed"] * len(done), [b["reason"] for b in done]

        mt = lab.topology.mts[0]
        points_api = ApiClient(f"https://{mt.address}:{mt.ports['control']}", tls.client_context(lab.admin_files))
        try:
            for machine, log_path in (("ma", a_log), ("mb", b_log)):
                last = max(r.wnum for r in writelog.read_records(log_path))

                async def drained(disk: str = disks[machine], last: int = last) -> bool:
                    items = (await points_api.get(f"/v1/disks/{disk}/points", params={"limit": 1}))["items"]
                    return bool(items) and items[-1]["wnum_hi"] >= last

                await until_ok(drained, 30, f"{machine} drained")
        finally:
            await points_api.close()

        checked = []
        for bm in (done[0], done[len(done) // 2], done[-1]):
            images = {}
            for machine, log_path in (("ma", a_log), ("mb", b_log)):
                job = await api.post(f"/v1/disks/{disks[machine]}/failover",
                                     {"point": {"tag": bm["tag"]}, "image": True})
                result = await until_ok(lambda j=job["job_id"]: job_result(api, j), 60, "failover job")
                assert result["state"] == "succeeded", result
                point = result["result"]["point"]
                member = next(m for m in bm["members"] if m["machine_id"] == ids[machine])
                assert member["points"][disks[machine]] == {"gen": point["gen"], "seq": point["seq"]}
                image = Path(result["result"]["image_path"])
                verdict = await asyncio.to_thread(oracle.verify, log_path, 0, DISK_MIB * MiB, point["wnum_hi"], image)
                assert verdict.ok, (bm["tag"], machine, verdict.detail)
                images[machine] = image
            got = await asyncio.to_thread(causal.check, a_log, b_log, images["ma"], images["mb"])
            assert got.violations == [], (bm["tag"], got.violations[:5])
            checked.append((bm["tag"], got.effects))
        assert checked[-1][1] > checked[0][1] > 0
        freeze = [m["freeze_ms"] for b in done for m in b["members"]]
        latency = [b["latency_ms"] for b in done]
        print(f"\nlab: up and protected in {up_s:.1f} s; causal {stats['causes']} causes / {stats['effects']} effects; "
              f"{len(done)} group bookmarks committed; member freeze p50 {statistics.median(freeze):.1f} ms "
              f"max {max(freeze):.1f} ms; tag latency p50 {statistics.median(latency):.1f} ms "
              f"max {max(latency):.1f} ms; checked {checked}; total {time.monotonic() - started:.1f} s")
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await api.close()


async def job_result(api: ApiClient, job_id: str) -> dict[str, Any] | None:
    job = await api.get(f"/v1/jobs/{job_id}")
    return dict(job) if job["state"] in ("succeeded", "failed") else None
