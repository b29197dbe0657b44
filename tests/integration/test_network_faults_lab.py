"""Network faults on both hops of replication (process lab, every daemon its own process).

The PS and the MT *advertise* an address of their own (topology ``advertise``, deploy/topology.py)
where a TCP fault proxy (deploy/faultproxy.py) listens on the same ports and forwards to where they
really listen: agent -> PS and PS -> MT (data and control) go through the proxies, the CS and the
test talk to the daemons directly. Under a workload the proxies add latency, a bandwidth cap,
drops (FIN), resets (RST) and half-open connections (random, plus each one struck on purpose on
each hop's open connections); then PS <-> MT is partitioned (blackhole) until the CS raises the
RPO alert (the default policy's threshold lowered to a few seconds), and healed; then agent <-> PS
(refuse: connections reset) the same way.
Replication recovers by itself (the alert clears), the latest point equals the oracle's image byte
for byte, and the MT's apply log (mt/applylog.py) shows no batch applied twice.
``DRLAB_SEED=<n>`` replays the workload and the proxies' fault schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

import pytest

from common import tls
from common.config import dump_toml
from common.http import ApiClient
from deploy.faultproxy import FaultProxy, Faults
from deploy.lab import Lab
from deploy.scenario import Scenario
from deploy.topology import Node, load
from mt import applylog
from tests.integration.conftest import down_clean, until, write_topology

RPO_THRESHOLD_S = 4
HEALTH = {"evaluate_interval_s": 0.5}
STALL_TIMEOUT_S = 3.0  # a silent peer is given up after this; requests keep the default 30 s bound
NOISY = Faults(latency_s=0.02, jitter_s=0.02, bandwidth_bps=3e6, drop_p=0.15, reset_p=0.15, half_open_p=0.1,
               fault_window_s=2.0)
STRIKES = (("half_open", "up"), ("reset", "up"), ("drop", "up"), ("half_open", "down"))


async def proxies_for(node: Node, seed: int) -> list[FaultProxy]:
    """One fault proxy per port of ``node``, on its advertised address, to where it listens."""
    out = []
    for i, port in enumerate(sorted(node.ports.values())):
        proxy = FaultProxy(node.config["address"], port, node.address, port, seed=seed + i)
        await proxy.start()
        out.append(proxy)
    return out


async def up_with_short_timeouts(lab: Lab) -> None:
    """``lab.up`` with short health intervals in the CS's config file and a short stall timeout for
    the others (a half-open connection holds a request until it: 10 s by default)."""
    await lab.init()
    lab.write_configs()
    cs = lab.topology.cs
    for node in lab.topology.nodes:
        extra = {"health": HEALTH} if node is cs else {"stall_timeout_s": STALL_TIMEOUT_S}
        lab.config_path(node).write_text(dump_toml({**lab.config_for(node), **extra}))
    lab.start_node(cs)
    await lab.wait_cs(60)
    for node in lab.topology.nodes[1:]:
        lab.start_node(node)
    await lab.wait_healthy(60)
    await lab.assign_sites()


def lower_rpo_threshold(lab: Lab, seconds: int) -> None:
    """The API refuses a threshold under 60 s (cs/policies.py BOUNDS): the lab writes the default
    policy's threshold into the CS's database (SQLite) directly; the health engine reads it there."""
    with contextlib.closing(sqlite3.connect(lab.cs_dir / "cs.db", timeout=10)) as db, db:
        db.execute("UPDATE policies SET rpo_threshold_s = ? WHERE name = 'default'", (seconds,))


async def make_noise(every: list[FaultProxy], hops: tuple[list[FaultProxy], ...]) -> None:
    """Random noise on every link, and each fault of STRIKES struck at least once on each hop's
    open connections (waiting for one to be open); then a clean network again."""
    for proxy in every:
        proxy.set(**asdict(NOISY))
    for kind, direction in STRIKES:
        for links in hops:
            await until(f"a connection to strike ({kind})", 10, functools.partial(_strike, links, kind, direction))
        await asyncio.sleep(1.5)
    for proxy in every:
        proxy.set(**asdict(Faults()))


async def partition_until_alert(links: list[FaultProxy], mode: str, alert: Callable[[], Awaitable[bool]]
                                ) -> tuple[float, float]:
    """Cut ``links`` until ``alert`` is raised, then heal them until it clears: (seconds to raise,
    seconds to clear)."""
    cut = time.monotonic()
    for proxy in links:
        proxy.partition(mode)
    await until(f"the RPO alert raised during the partition ({mode})", 25, alert)
    raised_s = time.monotonic() - cut
    for proxy in links:
        proxy.heal()
    healed = time.monotonic()
    await until(f"the RPO alert cleared after the partition ({mode})", 40, lambda: _not(alert))
    return raised_s, time.monotonic() - healed


@pytest.mark.timeout(180)
async def test_replication_survives_a_noisy_network_and_a_partition(tmp_path: Path) -> None:
    seed = int(os.environ.get("DRLAB_SEED") or random.randrange(1, 2**31))
    print(f"DRLAB_SEED={seed}")
    net = random.Random(seed).randrange(30, 250)
    topo = load(write_topology(tmp_path / "lab.toml", net, 32, ps_extra=f', advertise = "127.{net}.1.201"',
                               mt_extra=f', advertise = "127.{net}.2.202"'))
    lab = Lab(topo, tmp_path / "lab")
    machine, ps, mt = topo.machines[0], topo.pss[0], topo.mts[0]
    ps_links, mt_links = await proxies_for(ps, seed), await proxies_for(mt, seed + 10)
    sc = Scenario(lab, seed)
    started = time.monotonic()
    await lab.init()
    api = ApiClient(topo.cs_url, tls.client_context(lab.admin_files), timeout_s=15.0)
    admin = lab.admin()
    proc: subprocess.Popen[str] | None = None
    try:
        lab.write_configs()
        await asyncio.to_thread(sc.prefill, 0.25)
        await up_with_short_timeouts(lab)
        lower_rpo_threshold(lab, RPO_THRESHOLD_S)
        await sc.protect(admin, timeout_s=90)

        async def rpo_alert() -> bool:
            items = (await api.get("/v1/alerts", params={"active": 1}))["items"]
            return any(a["code"] == "rpo_exceeded" and a["source_host"] == machine.name for a in items)

        proc = sc.start_workload(rate_mb_s=1, duration_s=150)  # until SIGTERM: RPO needs new writes to clear
        await make_noise(ps_links + mt_links, (ps_links, mt_links))
        written = sc.last_wnum()
        await until("replication caught up after the noise", 30, functools.partial(_reached, sc, written))
        await until("RPO back under its threshold after the noise", 30, lambda: _not(rpo_alert))
        raised_s, cleared_s = await partition_until_alert(mt_links, "blackhole", rpo_alert)
        raised2_s, cleared2_s = await partition_until_alert(ps_links, "refuse", rpo_alert)  # every connection reset
        proc.send_signal(signal.SIGTERM)
        stats = await asyncio.to_thread(sc.finish_workload, proc, 30)
        await sc.wait_drained(60)
        check = await sc.failover_and_verify(admin, "latest", "latest")
        assert check.ok, check.detail
        assert int(check.result["point"]["wnum_hi"]) >= sc.last_wnum()

        lab.kill_node(mt, signal.SIGTERM)  # the apply log is read on a stopped MT
        report = applylog.check_apply_log(lab.node_dir(mt))
        assert report.ok and report.batches > 0, report.to_doc()
        assert sum(p.stats.refused for p in ps_links) > 0  # the agent tried while refused
        for name, links in (("agent<->PS", ps_links), ("PS<->MT", mt_links)):
            met = {k: sum(p.stats.met[k] for p in links) for k in ("drop", "reset", "half_open")}
            print(f"{name}: {sum(p.stats.connections for p in links)} connections, faults met {met}")
            assert all(met.values()), f"{name}: not every fault happened: {met}"
        print(f"{stats['writes']} writes; RPO alert raised {raised_s:.1f} s into the PS<->MT partition, cleared "
              f"{cleared_s:.1f} s after it healed; agent<->PS: {raised2_s:.1f} s, {cleared2_s:.1f} s; "
              f"{report.batches} batches applied once each; "
              f"{time.monotonic() - started:.0f} s in all")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        await api.close()
        await admin.close()
        try:
            down_clean(lab)
        finally:
            for proxy in ps_links + mt_links:
                await proxy.close()


async def _strike(links: list[FaultProxy], kind: str, direction: str) -> int:
    return sum(p.strike(kind, direction) for p in links)


async def _reached(sc: Scenario, wnum: int) -> bool:
    """The MT holds a point with every write up to ``wnum`` (the test reaches it directly)."""
    return any(int(p["wnum_hi"]) >= wnum for p in await sc.points())


async def _not(check: Callable[[], Awaitable[bool]]) -> bool:
    return not await check()
