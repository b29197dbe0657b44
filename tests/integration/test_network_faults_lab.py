"""Network faults on both hops of replication (process lab, every daemon its own process).

The PS and the MT *advertise* an address of their own (topology ``advertise``, deploy/topology.py)
where a TCP fault proxy (deploy/faultproxy.py) listens on the same ports and forwards to where they
really listen: agent -> PS and PS -> MT (data and control) go through the proxies, the CS and the
test talk to the daemons directly. Under a workload the proxies add latency, a bandwidth cap,
drops (FIN), resets (RST) and half-open connections (random, plus each one struck on purpose on
each hop's open connections); then PS <-> MT is partitioned (blackhole) until the CS raises the
RPO alert (the default policy's threshold lowered to a few seconds through the policy API), and
healed; then agent <-> PS (refuse: connections reset) the same way. Last, every daemon's link to the
CS (heartbeats, the settings long-poll, registration renewals: ``cs_url`` is a fault proxy on the
CS's own address, another port, as the CS's certificate names that address) is blackholed for a few
seconds: the MT still gets new points (the data path does not need the CS), no daemon dies, and
every component's heartbeat reaches the CS again soon after healing (the stall timeout bounds a
silent request).
Replication recovers by itself (the alert clears), the latest point equals the oracle's image byte
for byte, and the MT's apply log (mt/applylog.py) shows no batch applied twice.
``DRLAB_SEED=<n>`` replays the workload and the proxies' fault schedule.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from common import tls
from common.config import dump_toml
from common.http import ApiClient
from deploy.faultproxy import FaultProxy, Faults
from deploy.lab import Lab, alive
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
CS_CUT_S = 3.5  # longer than the stall timeout: a request stalled by the cut is given up during it
NS = 1_000_000_000


async def proxies_for(node: Node, seed: int) -> list[FaultProxy]:
    """One fault proxy per port of ``node``, on its advertised address, to where it listens."""
    out = []
    for i, port in enumerate(sorted(node.ports.values())):
        proxy = FaultProxy(node.config["address"], port, node.address, port, seed=seed + i)
        await proxy.start()
        out.append(proxy)
    return out


async def proxy_for_cs(cs: Node, seed: int) -> FaultProxy:
    """A fault proxy in front of the CS on the CS's own address (the one its certificate names), any
    free port; the CS keeps listening where it does, the test and the CLI talk to it directly."""
    proxy = FaultProxy(cs.address, 0, cs.address, cs.ports["api"], seed=seed)
    await proxy.start()
    return proxy


async def up_with_short_timeouts(lab: Lab, cs_url: str) -> None:
    """``lab.up`` with short health intervals in the CS's config file and, for the others, a short
    stall timeout (a half-open connection holds a request until it: 10 s by default) and ``cs_url``
    (the CS's fault proxy)."""
    await lab.init()
    lab.write_configs()
    cs = lab.topology.cs
    for node in lab.topology.nodes:
        extra = {"health": HEALTH} if node is cs else {"stall_timeout_s": STALL_TIMEOUT_S, "cs_url": cs_url}
        lab.config_path(node).write_text(dump_toml({**lab.config_for(node), **extra}))
    lab.start_node(cs)
    await lab.wait_cs(60)
    for node in lab.topology.nodes[1:]:
        lab.start_node(node)
    await lab.wait_healthy(60)
    await lab.assign_sites()


async def cut_the_cs_links(cs_link: FaultProxy, api: ApiClient, sc: Scenario, lab: Lab) -> tuple[float, float]:
    """Blackhole every daemon's link to the CS for CS_CUT_S under the workload: the MT gets a new point
    meanwhile, no heartbeat reaches the CS (the cut is real), no daemon dies, and after healing each
    component's heartbeat reaches the CS again. (seconds to the first new point, seconds until every
    heartbeat arrived after healing)."""
    newest = max(int(p["wnum_hi"]) for p in await sc.points())
    cut_ns = time.time_ns()
    cs_link.partition("blackhole")
    point = functools.partial(_reached, sc, newest + 1)
    await until("a new point on the MT while the CS is unreachable", CS_CUT_S, point)
    point_s = (time.time_ns() - cut_ns) / NS
    await asyncio.sleep(max(0.0, CS_CUT_S - point_s))
    late = {c["host_id"]: (c["last_heartbeat"] - cut_ns) / NS for c in await _components(api)
            if (c["last_heartbeat"] or 0) > cut_ns + NS // 2}  # one in flight at the cut may land
    assert not late, f"heartbeats reached the CS through the blackhole (s after the cut): {late}"
    cs_link.heal()
    healed_ns = time.time_ns()

    async def all_beat() -> bool:
        return all((c["last_heartbeat"] or 0) > healed_ns for c in await _components(api))

    await until("every component's heartbeat at the CS after healing", 3 * STALL_TIMEOUT_S, all_beat)
    beat_s = (time.time_ns() - healed_ns) / NS
    dead = [n.name for n, pid in ((n, lab.read_pids().get(n.name)) for n in lab.topology.nodes)
            if not pid or not alive(pid)]
    assert not dead, f"daemons died while the CS was unreachable: {dead}"
    return point_s, beat_s


async def _components(api: ApiClient) -> list[dict[str, Any]]:
    """The agent, the PS and the MT as the CS sees them (one page: the lab has three)."""
    items = (await api.get("/v1/components"))["items"]
    assert len(items) == 3, [c["host_id"] for c in items]
    return list(items)


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
    cs_link = await proxy_for_cs(topo.cs, seed + 20)
    sc = Scenario(lab, seed)
    started = time.monotonic()
    await lab.init()
    api = ApiClient(topo.cs_url, tls.client_context(lab.admin_files), timeout_s=15.0)
    admin = lab.admin()
    proc: subprocess.Popen[str] | None = None
    try:
        lab.write_configs()
        await asyncio.to_thread(sc.prefill, 0.25)
        await up_with_short_timeouts(lab, f"https://{topo.cs.address}:{cs_link.port}")
        await api.request("PATCH", "/v1/policies/default", json_body={"rpo_threshold_s": RPO_THRESHOLD_S})
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
        cs_started = time.monotonic()
        point_s, beat_s = await cut_the_cs_links(cs_link, api, sc, lab)
        cs_phase_s = time.monotonic() - cs_started
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
        assert cs_link.stats.connections > 0  # the daemons reached the CS through its proxy
        for name, links in (("agent<->PS", ps_links), ("PS<->MT", mt_links)):
            met = {k: sum(p.stats.met[k] for p in links) for k in ("drop", "reset", "half_open")}
            print(f"{name}: {sum(p.stats.connections for p in links)} connections, faults met {met}")
            assert all(met.values()), f"{name}: not every fault happened: {met}"
        print(f"{stats['writes']} writes; RPO alert raised {raised_s:.1f} s into the PS<->MT partition, cleared "
              f"{cleared_s:.1f} s after it healed; agent<->PS: {raised2_s:.1f} s, {cleared2_s:.1f} s; "
              f"CS links cut {CS_CUT_S} s: a new point {point_s:.1f} s into it, every heartbeat back "
              f"{beat_s:.1f} s after healing ({cs_phase_s:.1f} s phase); {report.batches} batches applied once each; "
              f"{time.monotonic() - started:.0f} s in all")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        await api.close()
        await admin.close()
        try:
            down_clean(lab)
        finally:
            for proxy in [*ps_links, *mt_links, cs_link]:
                await proxy.close()


async def _strike(links: list[FaultProxy], kind: str, direction: str) -> int:
    return sum(p.strike(kind, direction) for p in links)


async def _reached(sc: Scenario, wnum: int) -> bool:
    """The MT holds a point with every write up to ``wnum`` (the test reaches it directly)."""
    return any(int(p["wnum_hi"]) >= wnum for p in await sc.points())


async def _not(check: Callable[[], Awaitable[bool]]) -> bool:
    return not await check()
