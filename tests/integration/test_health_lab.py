"""Replication keeps running while the CS is down, and alerts catch up when it returns (process
lab, every daemon its own process; the CS with short health windows).

The CS is stopped in the middle of a workload: the agent still sends, the PS still uploads and
the MT's recovery points keep growing (read from the MT's control port, no CS involved). While
the CS is away the machine's agent is stopped too. The CS restarts on the same data directory and
port: its evaluator raises 78174 for the silent machine within a few seconds, PS and MT stay
healthy, `drlab components` shows the machine critical; the agent's return clears the alert, and
failover to latest equals the oracle's image.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable

import pytest

from common import tls
from common.config import dump_toml
from common.http import ApiClient
from deploy.lab import Lab
from deploy.scenario import Scenario
from tests.integration.conftest import until

AGENT_TIMEOUT_S = 4.0
HEALTH = {"evaluate_interval_s": 0.5, "agent_heartbeat_timeout_s": AGENT_TIMEOUT_S,
          "ps_heartbeat_timeout_s": 120.0, "mt_heartbeat_timeout_s": 120.0}


async def up_with_health(lab: Lab) -> None:
    """``lab.up`` with a ``[health]`` table in the CS's config file."""
    await lab.init()
    lab.write_configs()
    cs = lab.topology.cs
    lab.config_path(cs).write_text(dump_toml({**lab.config_for(cs), "health": HEALTH}))
    lab.start_node(cs)
    await lab.wait_cs(60)
    for node in lab.topology.nodes[1:]:
        lab.start_node(node)
    await lab.wait_healthy(60)


@pytest.mark.timeout(180)
async def test_replication_runs_while_the_cs_is_down_and_alerts_catch_up(lab: Lab) -> None:
    seed = int(os.environ.get("DRLAB_SEED") or random.randrange(1, 2**31))
    print(f"DRLAB_SEED={seed}")
    sc = Scenario(lab, seed)
    await up_with_health(lab)
    cs, machine = lab.topology.cs, lab.topology.machines[0]
    admin = lab.admin()
    api = ApiClient(lab.topology.cs_url, tls.client_context(lab.admin_files), timeout_s=15.0)
    try:
        await sc.protect(admin, timeout_s=90)

        async def open_alerts() -> set[tuple[str, str]]:
            items = (await api.get("/v1/alerts", params={"active": 1}))["items"]
            return {(a["code"], a["source_host"]) for a in items}

        async def health() -> dict[str, str]:
            return {c["host_id"]: c["health"] for c in (await api.get("/v1/components"))["items"]}

        assert await open_alerts() == set()
        proc = sc.start_workload(rate_mb_s=2, duration_s=6)
        await asyncio.sleep(1.0)
        lab.kill_node(cs, signal.SIGTERM)  # the CS goes away in the middle of the workload
        cs_down = time.monotonic()
        before = len(await sc.points())
        more = await until("the MT keeps receiving without the CS", 20,
                           lambda: _grown(sc, before))
        stats = await asyncio.to_thread(sc.finish_workload, proc, 60)
        await sc.wait_drained(60)  # every acknowledged write reached the MT, the CS still down
        lab.kill_node(machine, signal.SIGTERM)  # and the machine's agent goes silent meanwhile
        await asyncio.sleep(AGENT_TIMEOUT_S + 1.0)
        down_s = time.monotonic() - cs_down

        lab.start_node(cs)  # same data directory, same address and port
        await lab.wait_cs(60)
        raised = time.monotonic()
        await until("78174 raised for the silent machine", 20, lambda: _has(open_alerts, ("78174", machine.name)))
        catch_up_s = time.monotonic() - raised
        assert await open_alerts() == {("78174", machine.name)}  # PS and MT heartbeat again: healthy
        states = await health()
        assert states[machine.name] == "critical" and states["ps1"] == "ok" and states["mt1"] == "ok"

        lab.start_node(machine)
        await until("78174 cleared once the agent is back", 30, lambda: _empty(open_alerts))
        assert (await health())[machine.name] == "ok"
        check = await sc.failover_and_verify(admin, "latest", "latest")
        assert check.ok, check.detail
        print(f"\n{stats['writes']} writes; CS down {down_s:.1f} s while the MT got {more} new points; "
              f"78174 raised {catch_up_s:.1f} s after the CS answered again")
    finally:
        await api.close()
        await admin.close()


async def _grown(sc: Scenario, before: int) -> int:
    return max(0, len(await sc.points()) - before)


async def _has(fn: Callable[[], Awaitable[set[tuple[str, str]]]], item: tuple[str, str]) -> bool:
    return item in await fn()


async def _empty(fn: Callable[[], Awaitable[set[tuple[str, str]]]]) -> bool:
    return not await fn()
