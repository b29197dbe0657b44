"""A lab for the end-to-end benchmarks: CS, one on-prem PS, one cloud MT and N machines, each with
one sparse disk, on a loopback range of its own, in a temporary directory removed afterwards.

It starts the real daemons (deploy/lab.py) and drives them as a user would (protection through
the CS, workloads as processes writing through each agent); it measures each daemon's CPU time
and peak RSS from /proc.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import cpu_seconds
from deploy.lab import Lab
from deploy.scenario import Scenario
from deploy.topology import load as load_topology


def topology_toml(net: int, machines: int, disk_mib: int, ps_extra: str = "") -> str:
    hosts = "".join(f'\n[[onprem.machines]]\nname = "m{i}"\ndisks = [{{ name = "disk0", size_mib = {disk_mib} }}]\n'
                    for i in range(1, machines + 1))
    return (f'[cloud]\ncs = {{ address = "127.{net}.2.1", port = 443 }}\n'
            f'mt = [{{ name = "mt1", address = "127.{net}.2.2", data_port = 9443, control_port = 9080 }}]\n'
            f'[onprem]\nps = [{{ name = "ps1", address = "127.{net}.1.1", data_port = 9443{ps_extra} }}]\n' + hosts)


def lab_net(seed: int) -> int:
    """The second octet of a lab's loopback range: from the seed, the process and the time, so that
    benchmarks running at once never share addresses."""
    return random.Random(f"{seed}:{os.getpid()}:{time.time_ns()}").randrange(30, 250)


def new_lab(root: Path, machines: int, disk_mib: int, seed: int, ps_extra: str = "") -> Lab:
    """A lab of :func:`topology_toml` in ``root`` (not started)."""
    topo_file = root / "lab.toml"
    topo_file.write_text(topology_toml(lab_net(seed), machines, disk_mib, ps_extra))
    return Lab(load_topology(topo_file), root / "lab")


def lab_cpu(lab: Lab) -> dict[str, float]:
    """CPU seconds so far of every daemon of ``lab``, by node name."""
    return {name: cpu_seconds(pid) for name, pid in lab.read_pids().items()}


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of ``pid`` in MiB; 0.0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class BenchLab:
    lab: Lab
    root: Path
    scenarios: list[Scenario] = field(default_factory=list)

    def pids(self) -> dict[str, int]:
        return self.lab.read_pids()

    def cpu(self) -> dict[str, float]:
        return lab_cpu(self.lab)

    def peak_rss(self) -> dict[str, float]:
        return {name: round(peak_rss_mib(pid), 1) for name, pid in self.pids().items()}

    async def protect_all(self, seed: int) -> float:
        """Protect every machine (in turn) and wait for initial replication; seconds in all."""
        total = 0.0
        async with self.lab.admin() as admin:
            for i, sc in enumerate(self.scenarios):
                sc.seed = seed + i
                total += await sc.protect(admin, timeout_s=600.0)
        return total


@asynccontextmanager
async def bench_lab(machines: int, disk_mib: int, seed: int, ps_extra: str = "") -> AsyncIterator[BenchLab]:
    root = Path(tempfile.mkdtemp(prefix="drlab-bench-lab-"))
    lab = new_lab(root, machines, disk_mib, seed, ps_extra)
    bl = BenchLab(lab, root, [Scenario(lab, seed + i, m) for i, m in enumerate(lab.topology.machines)])
    try:
        await lab.init()
        lab.write_configs()
        await lab.up()
        yield bl
    finally:
        left = await asyncio.to_thread(lab.down)
        if left:
            print(f"benchmark lab: processes that needed SIGKILL: {left}")
        if os.environ.get("DRLAB_BENCH_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after.get(k, 0.0) - v, 3) for k, v in before.items()}


def role_of(name: str) -> str:
    return {"cs": "cs", "ps1": "ps", "mt1": "mt"}.get(name, "agent")


def by_role(values: dict[str, float]) -> dict[str, Any]:
    out: dict[str, float] = {}
    for name, v in values.items():
        out[role_of(name)] = out.get(role_of(name), 0.0) + v
    return out
