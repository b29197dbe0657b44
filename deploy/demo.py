"""`make demo`: the whole product once, end to end, on the default lab.

Lab up; a 256 MiB disk half prefilled; protection enabled and initial replication to the MT;
a seeded workload writes through the agent for a while; then failover to latest and to three
points spread over the run, each image checked byte for byte by the oracle against the
workload's write log; a table; the lab down. Exit status 0 only if every check passed.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import errors, oracle, tls
from common.http import ApiClient
from common.wire import writelog
from deploy import report
from deploy.lab import Lab
from deploy.topology import DEFAULT_TOPOLOGY, Topology
from deploy.topology import load as load_topology


@dataclass
class DemoParams:
    root: Path = Path(".lab/demo")
    topology: Path = DEFAULT_TOPOLOGY
    duration_s: float = 20.0
    rate_mb_s: float = 20.0
    prefill_fraction: float = 0.5
    seed: int = field(default_factory=lambda: random.randrange(1, 2**31))


@dataclass
class PointCheck:
    label: str
    requested: str
    result: dict[str, Any]
    ok: bool
    detail: str
    seconds: float


def say(text: str) -> None:
    print(text, flush=True)


async def wait_protected(admin: Any, disk_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last = -1
    while True:
        disk = next(d for d in await admin.disks() if d["disk_id"] == disk_id)
        if disk.get("state") == "protected":
            return dict(disk)
        pct = int(disk.get("percent") or 0)
        if pct // 25 != last // 25:
            say(f"  initial replication: {pct} %")
            last = pct
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"disk {disk_id} not protected after {timeout_s:.0f} s (state {disk.get('state')})")
        await asyncio.sleep(0.2)


def run_workload_process(socket: Path, log_path: Path, params: DemoParams) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "agent.workload", "run", "--socket", str(socket), "--log", str(log_path),
           "--seed", str(params.seed), "--rate-mb-s", str(params.rate_mb_s),
           "--duration-s", str(params.duration_s), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=params.duration_s + 120, check=False)
    if proc.returncode != 0:
        raise errors.DrlabError(f"workload failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def prefill(image: Path, size_bytes: int, log_path: Path, params: DemoParams) -> None:
    cmd = [sys.executable, "-m", "agent.workload", "prefill", "--image", str(image), "--disk-index", "0",
           "--size-bytes", str(size_bytes), "--fraction", str(params.prefill_fraction), "--log", str(log_path),
           "--seed", str(params.seed)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)


def choose_times(log_path: Path, n: int = 3) -> list[int]:
    """Ack times spread over the workload run (quartiles of its writes)."""
    acks = [r.ack_ns for r in writelog.read_records(log_path) if r.kind == writelog.KIND_WRITE]
    if len(acks) < n + 1:
        raise errors.DrlabError("the workload wrote too little to choose points")
    return [acks[(i + 1) * len(acks) // (n + 1)] for i in range(n)]


async def failover_and_verify(admin: Any, disk_id: str, point: Any, label: str, log_path: Path,
                              size_bytes: int) -> PointCheck:
    started = time.monotonic()
    job_id = await admin.failover(disk_id, point)
    job = await admin.wait_job(job_id, timeout_s=120)
    seconds = time.monotonic() - started
    requested = point if isinstance(point, str) else f"t={point['time_ns']}"
    if job["state"] != "succeeded":
        return PointCheck(label, requested, {}, False, f"job {job['state']}: {job.get('error')}", seconds)
    result = job["result"]
    res = await asyncio.to_thread(oracle.verify, log_path, 0, size_bytes, int(result["point"]["wnum_hi"]),
                                  Path(result["image_path"]))
    detail = "byte-exact" if res.ok else f"first mismatch at offset {res.first_mismatch_offset}"
    return PointCheck(label, requested, result, bool(res.ok), detail, seconds)


async def rpo_stats(lab: Lab, topo: Topology, disk_id: str, since_ns: int) -> tuple[float, float, int, int]:
    mt = topo.mts[0]
    client = ApiClient(f"https://{mt.address}:{mt.ports['control']}", tls.client_context(lab.admin_files))
    try:
        points = (await client.get(f"/v1/disks/{disk_id}/points", params={"limit": 1_000_000}))["items"]
    finally:
        await client.close()
    recent = [p for p in points if p["t_first_ns"] >= since_ns and p.get("accuracy") == "exact"]
    lags_ms = [(p["received_ns"] - p["t_first_ns"]) / 1e6 for p in recent]
    return report.percentile(lags_ms, 50), report.percentile(lags_ms, 99), len(recent), len(points)


async def run(params: DemoParams) -> int:
    topo = load_topology(params.topology)
    machine, disk = topo.machines[0], topo.machines[0].disks[0]
    if params.root.exists():
        shutil.rmtree(params.root)
    lab = Lab(topo, params.root)
    log_path = lab.node_dir(machine) / "writes.log"
    say(f"drlab demo — seed {params.seed}, lab in {params.root}")
    await lab.init()
    lab.write_configs()
    say(f"prefilling {disk.name} ({disk.size_bytes >> 20} MiB) to {params.prefill_fraction:.0%}")
    await asyncio.to_thread(prefill, lab.disk_path(machine, disk.name), disk.size_bytes, log_path, params)
    checks: list[PointCheck] = []
    try:
        t0 = time.monotonic()
        await lab.up()
        say(f"lab up in {time.monotonic() - t0:.1f} s: " + ", ".join(f"{n.name}@{n.address}" for n in topo.nodes))
        async with lab.admin() as admin:
            comps = await admin.components()
            machine_id = next(c["component_id"] for c in comps if c["role"] == "agent" and c["host_id"] == machine.name)
            await admin.protect(machine_id)
            disk_id = next(d["disk_id"] for d in await admin.disks() if d["machine_id"] == machine_id)
            t0 = time.monotonic()
            await wait_protected(admin, disk_id, timeout_s=180)
            ir_s = time.monotonic() - t0
            say(f"initial replication done in {ir_s:.1f} s")
            since = time.time_ns()
            say(f"workload: {params.duration_s:.0f} s at {params.rate_mb_s:.0f} MB/s through the agent")
            stats = await asyncio.to_thread(run_workload_process, lab.agent_socket(machine), log_path, params)
            say(f"  {stats['writes']} writes, {stats['bytes'] / 1e6:.0f} MB, {stats['mb_s']:.1f} MB/s")
            checks.append(await failover_and_verify(admin, disk_id, "latest", "latest", log_path, disk.size_bytes))
            last_wnum = max(r.wnum for r in writelog.read_records(log_path))
            latest = checks[-1]
            if latest.ok and int(latest.result["point"]["wnum_hi"]) < last_wnum:
                latest.ok, latest.detail = False, f"latest misses writes {latest.result['point']['wnum_hi']}..{last_wnum}"
            for i, t in enumerate(choose_times(log_path)):
                checks.append(await failover_and_verify(admin, disk_id, {"time_ns": t}, f"T{i + 1}", log_path,
                                                        disk.size_bytes))
            p50, p99, nbatches, npoints = await rpo_stats(lab, topo, disk_id, since)
    finally:
        leftover = lab.down()
    print_table(checks, stats, p50, p99, nbatches, npoints, ir_s, disk.size_bytes, params)
    ok = bool(checks) and all(c.ok for c in checks) and not leftover
    if leftover:
        say(f"processes needed SIGKILL: {leftover}")
    say("DEMO PASSED: every point verified byte-exact" if ok else "DEMO FAILED")
    return 0 if ok else 1


def print_table(checks: list[PointCheck], stats: dict[str, Any], p50: float, p99: float, nbatches: int,
                npoints: int, ir_s: float, size_bytes: int, params: DemoParams) -> None:
    rows = []
    for c in checks:
        pt = c.result.get("point", {})
        rows.append([c.label, c.requested, f"{pt.get('gen', '-')}/{pt.get('seq', '-')}", pt.get("wnum_hi", "-"),
                     pt.get("accuracy", "-"), f"{c.seconds:.2f}", "yes" if c.ok else "NO", c.detail])
    say("")
    say(report.table(["point", "requested", "gen/seq", "writes<=", "accuracy", "failover s", "verified", "oracle"],
                     rows))
    say(report.table(["metric", "value"], [
        ["initial replication", f"{size_bytes * params.prefill_fraction / 1e6:.0f} MB prefilled, {ir_s:.1f} s"],
        ["workload", f"{stats.get('writes', 0)} writes, {stats.get('mb_s', 0):.1f} MB/s for {params.duration_s:.0f} s"],
        ["recovery points (batches)", f"{npoints} in catalog, {nbatches} during the workload"],
        ["RPO p50 / p99 (MT-durable - first write)", f"{p50:.0f} ms / {p99:.0f} ms"],
        ["seed", str(params.seed)],
    ]))


def main(params: DemoParams) -> int:
    return asyncio.run(run(params))
