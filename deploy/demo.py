"""`make demo`: the whole product once, end to end, on the default lab.

Lab up; a 256 MiB disk half prefilled; protection enabled and initial replication to the MT;
a seeded workload writes through the agent for a while; then failover to latest and to three
points spread over the run, each image checked byte for byte by the oracle against the
workload's write log; a table; the lab down. Exit status 0 only if every check passed.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import report
from deploy.lab import Lab
from deploy.scenario import PointCheck, Scenario
from deploy.topology import DEFAULT_TOPOLOGY
from deploy.topology import load as load_topology


@dataclass
class DemoParams:
    root: Path = Path(".lab/demo")
    topology: Path = DEFAULT_TOPOLOGY
    duration_s: float = 20.0
    rate_mb_s: float = 20.0
    prefill_fraction: float = 0.5
    seed: int = field(default_factory=lambda: random.randrange(1, 2**31))


def say(text: str) -> None:
    print(text, flush=True)


async def run(params: DemoParams) -> int:
    topo = load_topology(params.topology)
    if params.root.exists():
        shutil.rmtree(params.root)
    lab = Lab(topo, params.root)
    sc = Scenario(lab, params.seed)
    say(f"drlab demo: seed {params.seed}, lab in {params.root}")
    await lab.init()
    lab.write_configs()
    say(f"prefilling {sc.disk.name} ({sc.disk.size_bytes >> 20} MiB) to {params.prefill_fraction:.0%}")
    await asyncio.to_thread(sc.prefill, params.prefill_fraction)
    checks: list[PointCheck] = []
    facts: dict[str, Any] = {}
    try:
        t0 = time.monotonic()
        await lab.up()
        say(f"lab up in {time.monotonic() - t0:.1f} s: " + ", ".join(f"{n.name}@{n.address}" for n in topo.nodes))
        async with lab.admin() as admin:
            facts["ir_s"] = await sc.protect(admin, progress=True)
            say(f"initial replication done in {facts['ir_s']:.1f} s")
            since = time.time_ns()
            say(f"workload: {params.duration_s:.0f} s at {params.rate_mb_s:.0f} MB/s through the agent")
            proc = sc.start_workload(params.rate_mb_s, params.duration_s)
            facts["stats"] = await asyncio.to_thread(sc.finish_workload, proc, params.duration_s + 120)
            await sc.wait_drained()
            checks.append(await sc.failover_and_verify(admin, "latest", "latest"))
            for i, t in enumerate(sc.spread_times(3)):
                checks.append(await sc.failover_and_verify(admin, {"time_ns": t}, f"T{i + 1}"))
            facts["rpo"] = await sc.rpo_ms(since)
            facts["npoints"] = len(await sc.points())
    finally:
        leftover = lab.down()
    print_tables(checks, facts, sc.disk.size_bytes, params)
    ok = len(checks) == 4 and all(c.ok for c in checks) and not leftover
    if leftover:
        say(f"processes that needed SIGKILL: {leftover}")
    say("DEMO PASSED: every point verified byte-exact" if ok else "DEMO FAILED")
    return 0 if ok else 1


def print_tables(checks: list[PointCheck], facts: dict[str, Any], size_bytes: int, params: DemoParams) -> None:
    rows = []
    for c in checks:
        pt = c.result.get("point", {})
        rows.append([c.label, c.requested, f"{pt.get('gen', '-')}/{pt.get('seq', '-')}", pt.get("wnum_hi", "-"),
                     pt.get("accuracy", "-"), f"{c.seconds:.2f}", "yes" if c.ok else "NO", c.detail])
    say("")
    say(report.table(["point", "requested", "gen/seq", "writes<=", "accuracy", "failover s", "verified", "oracle"],
                     rows))
    stats = facts.get("stats", {})
    p50, p99, nbatches = facts.get("rpo", (0.0, 0.0, 0))
    say(report.table(["metric", "value"], [
        ["initial replication", f"{size_bytes * params.prefill_fraction / 1e6:.0f} MB prefilled, "
                                f"{facts.get('ir_s', 0.0):.1f} s"],
        ["workload", f"{stats.get('writes', 0)} writes, {stats.get('bytes', 0) / 1e6:.0f} MB, "
                     f"{stats.get('mb_s', 0.0):.1f} MB/s for {params.duration_s:.0f} s"],
        ["recovery points", f"{facts.get('npoints', 0)} in the catalog, {nbatches} during the workload"],
        ["RPO p50 / p99 (MT-durable - first write)", f"{p50:.0f} ms / {p99:.0f} ms"],
        ["seed", str(params.seed)],
    ]))


def main(params: DemoParams) -> int:
    return asyncio.run(run(params))
