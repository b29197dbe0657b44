"""What the drills share: a fresh lab, machine operations run to the end, byte comparisons."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import oracle
from deploy.drills.steps import StepFailed, Steps, require
from deploy.lab import Lab, alive
from deploy.scenario import Scenario
from deploy.topology import DEFAULT_TOPOLOGY, Node, Topology
from deploy.topology import load as load_topology


@dataclass
class DrillParams:
    root: Path = Path(".lab/drill")
    topology: Path = DEFAULT_TOPOLOGY
    duration_s: float = 6.0  # of each workload phase
    rate_mb_s: float = 4.0
    prefill_fraction: float = 0.25
    seed: int = field(default_factory=lambda: random.randrange(1, 2**31))
    alternate: bool = False  # failback to a new on-prem machine (an alternate location), not the original
    cycles: int = 5  # the chaos drill's kill cycles
    report: Path | None = None  # the chaos drill's JSON summary


Body = Callable[[Lab, Any, Scenario, DrillParams, Steps], Awaitable[None]]


async def run_drill(name: str, params: DrillParams, body: Body, nsteps: int, say: Callable[[str], None],
                    topology: Topology | None = None) -> int:
    """A fresh lab (of ``params.topology``, or ``topology``) with its first machine prefilled, ``body``
    run against it, the lab down, the step table; 0 if every one of ``nsteps`` steps passed and no
    daemon needed SIGKILL."""
    lab = fresh_lab(params, topology)
    steps = Steps(say)
    say(f"drill {name}: seed {params.seed}, lab in {params.root}")
    sc = Scenario(lab, params.seed)
    await lab.init()
    lab.write_configs()
    await asyncio.to_thread(sc.prefill, params.prefill_fraction)
    try:
        await lab.up()
        async with lab.admin() as admin:
            await body(lab, admin, sc, params, steps)
    except Exception as exc:  # the failed step is in the table; anything else is reported here
        say(f"drill stopped: {type(exc).__name__}: {exc}")
    finally:
        leftover = lab.down()
    say(steps.table())
    ok = steps.ok and len(steps.done) == nsteps and not leftover
    say("DRILL PASSED" if ok else "DRILL FAILED" + (f" (SIGKILL needed: {leftover})" if leftover else ""))
    return 0 if ok else 1


def fresh_lab(params: DrillParams, topology: Topology | None = None) -> Lab:
    if params.root.exists():
        shutil.rmtree(params.root)
    return Lab(topology or load_topology(params.topology), params.root)


async def run_op(admin: Any, machine_id: str, op: str, body: dict[str, Any] | None = None,
                 timeout_s: float = 180.0) -> dict[str, Any]:
    """A machine operation (cs/machine_ops.py) run to its end; a failed one fails the step."""
    job = await admin.wait_job(await admin.machine_op(machine_id, op, body), timeout_s=timeout_s)
    if job["state"] != "succeeded":
        raise StepFailed(f"{op} of machine {machine_id} failed: {job.get('error')}")
    return dict(job)


async def oracle_failover(admin: Any, sc: Scenario, op: str, point: Any, label: str) -> dict[str, Any]:
    """A (test) failover of ``sc``'s machine with every disk's image, each checked by the oracle at
    the job's W."""
    body = {"point": point, "image": True, **({"mode": "unplanned"} if op == "failover" else {})}
    job = await run_op(admin, sc.machine_id, op, body)
    check = await sc.check_machine_job(job, point, label, 0.0)
    require(check.ok, f"{label}: the oracle refused the image at W {check.wnum}: {check.detail}")
    return job


async def same_bytes(expected: Path, actual: Path, what: str) -> None:
    mismatch = await asyncio.to_thread(oracle.compare, expected, actual)
    require(mismatch is None, f"{what}: {actual} differs from {expected} at offset "
                              f"{mismatch.offset if mismatch else '-'}")


def images(job: dict[str, Any]) -> dict[str, Path]:
    """Disk name -> failover image, from a machine failover operation's result (asked with
    ``"image": true``)."""
    return {d["name"]: Path(d["image_path"]) for d in job["result"]["disks"]}


async def committed_replicas(admin: Any, job: dict[str, Any]) -> dict[str, Path]:
    """Disk name -> the replica a commit wrote the point into (where the machine boots from)."""
    names = {d["disk_id"]: d["name"] for d in await admin.disks()}
    return {names[d["disk_id"]]: Path(d["result"]["replica_path"]) for d in job["result"]["disks"]}


def scribble(path: Path, count: int, seed: int, block: int = 65536) -> int:
    """Write ``count`` random blocks straight into a disk file (writes made on-premises after the
    failover point, that never replicated); returns the bytes written."""
    rng = random.Random(seed)
    size = path.stat().st_size
    fd = os.open(path, os.O_WRONLY)
    try:
        for _ in range(count):
            os.pwrite(fd, rng.randbytes(block), rng.randrange(0, size // block) * block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return count * block


async def last_resync(admin: Any, disk_id: str) -> dict[str, Any]:
    items = await admin.resyncs(disk_id)
    return dict(items[0]) if items else {}


def node_of(lab: Lab, site: str, role: str) -> Node:
    found = lab.topology.in_site(site, role)
    if not found:
        raise StepFailed(f"the lab topology has no {role} in the {site} site")
    return found[0]


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def require_all_dead(lab: Lab, names: list[str]) -> None:
    pids = lab.read_pids()
    living = [n for n in names if n in pids and alive(pids[n])]
    require(not living, f"still running after SIGKILL: {', '.join(living)}")


def nbd_workload(url: str, log: Path, seed: int, seconds: float, rate_mb_s: float = 4.0) -> dict[str, Any]:
    """The workload writing to a failover view over NBD (``agent.workload run --nbd``) to its end;
    its JSON stats (a failed run fails the step)."""
    cmd = [sys.executable, "-m", "agent.workload", "run", "--nbd", url, "--log", str(log), "--seed", str(seed),
           "--rate-mb-s", str(rate_mb_s), "--duration-s", str(seconds), "--hot-region-mib", "4", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    require(proc.returncode == 0, f"the NBD workload failed: {(proc.stdout + proc.stderr)[-1500:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


async def verify_over(base: Path, log: Path, size_bytes: int, wnum: int, image: Path, what: str) -> None:
    """``image`` = ``base`` + the logged writes up to ``wnum`` (the oracle), or the step fails."""
    res = await asyncio.to_thread(oracle.verify_over_base, base, log, 0, size_bytes, wnum, image)
    require(res.ok, f"{what}: the oracle refused {image}: {res.detail}")


async def protect_step(admin: Any, sc: Scenario, steps: Steps) -> None:
    """The drills' first step: the machine protected, its initial replication done."""
    async with steps.step("protect") as st:
        seconds = await sc.protect(admin)
        st.verified = f"initial replication of {sc.machine.name} to the cloud in {seconds:.1f} s"


async def workload_writing(sc: Scenario, proc: subprocess.Popen[str], before: int, timeout_s: float) -> None:
    """Until the workload ``proc`` has logged a write past wnum ``before``: a short workload's process
    may still be starting when half its duration is over, and a failover "while it writes" must not
    come first (the latest point would be the previous one, e.g. the initial replication's at W 0)."""
    deadline = time.monotonic() + timeout_s
    while sc.last_wnum() <= before:
        require(proc.poll() is None, f"the workload ended (exit {proc.returncode}) without a write")
        require(time.monotonic() < deadline, f"the workload wrote nothing within {timeout_s:.0f} s")
        await asyncio.sleep(0.05)


async def test_failover_step(admin: Any, sc: Scenario, params: DrillParams, steps: Steps, name: str) -> None:
    """A test failover to latest while the workload writes, checked by the oracle, then its cleanup;
    replication went on under the views (every write reaches the MT)."""
    async with steps.step(name) as st:
        before = sc.last_wnum()
        proc = sc.start_workload(params.rate_mb_s, params.duration_s)
        await asyncio.sleep(params.duration_s / 2)
        await workload_writing(sc, proc, before, params.duration_s + 30)
        job = await oracle_failover(admin, sc, "test-failover", "latest", name)
        await run_op(admin, sc.machine_id, "cleanup-test-failover")
        sc.finish_workload(proc, params.duration_s + 60)
        await sc.wait_machine_drained(admin)
        st.verified = (f"image at W {job['result']['wnum']} byte-exact while writes went on; views dropped; "
                       f"every write up to W {sc.last_wnum()} replicated")
