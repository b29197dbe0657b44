"""Throttling in the process lab: a PS with a small cache (8 MiB), a workload, and an MT that is
stopped (SIGSTOP) for a few seconds. The PS really answers 507s (counted from its heartbeat
metrics and its log), the CS shows a ``ps_throttled`` alert while it throttles and clears it once
the uploader drained the cache after the MT came back, nothing acknowledged is lost and failover
to latest equals the oracle's image."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from common import tls
from common.http import ApiClient
from deploy.lab import Lab
from deploy.scenario import Scenario
from deploy.topology import load
from tests.integration.conftest import until
from tests.integration.conftest import write_topology as lab_topology

MiB = 1 << 20
CACHE_MIB = 8  # a few batches: no batch the agent cuts outgrows batch_max_bytes (4 MiB)


def write_topology(path: Path, net: int) -> Path:
    return lab_topology(path, net, 64, ps_extra=f", cache_mib = {CACHE_MIB}")


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    net = random.randrange(30, 250)
    the_lab = Lab(load(write_topology(tmp_path / "lab.toml", net)), tmp_path / "lab")
    try:
        yield the_lab
    finally:
        mt_pid = the_lab.read_pids().get("mt1")
        if mt_pid:
            with_cont(mt_pid)
        left = the_lab.down()
        assert not left, f"daemons needed SIGKILL at teardown: {left}"


def with_cont(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def ps_log_events(lab: Lab) -> list[dict[str, Any]]:
    events = []
    for line in lab.log_path(lab.topology.pss[0]).read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


@pytest.mark.timeout(90)
async def test_small_ps_cache_throttles_alerts_clears_and_loses_nothing(lab: Lab) -> None:
    assert lab.config_for(lab.topology.pss[0])["cache_max_bytes"] == CACHE_MIB * MiB
    seed = int(os.environ.get("DRLAB_SEED") or random.randrange(1, 2**31))
    print(f"DRLAB_SEED={seed}")
    sc = Scenario(lab, seed)
    started = time.monotonic()
    await lab.init()
    lab.write_configs()
    await asyncio.to_thread(sc.prefill, 0.25)
    await lab.up()
    api = ApiClient(lab.topology.cs_url, tls.client_context(lab.admin_files), timeout_s=15.0)
    admin = lab.admin()
    try:
        await sc.protect(admin, timeout_s=60)

        async def ps_throttle() -> dict[str, Any]:
            ps = next(c for c in await admin.components() if c["role"] == "ps")
            return dict(ps["metrics"].get("throttle") or {})

        async def open_alerts() -> list[dict[str, Any]]:
            return [a for a in (await api.get("/v1/alerts", params={"active": 1}))["items"]
                    if a["code"] == "ps_throttled"]

        assert not (await ps_throttle())["active"] and await open_alerts() == []
        proc = sc.start_workload(rate_mb_s=8, duration_s=10)
        await asyncio.sleep(1.0)
        mt_pid = lab.read_pids()["mt1"]
        os.kill(mt_pid, signal.SIGSTOP)  # the MT stalls: the PS cache fills up
        try:
            [alert] = await until("the CS shows the throttle alert", 20, open_alerts)
            during = await ps_throttle()
            await asyncio.sleep(2.0)  # the agent keeps getting 507s and retrying
        finally:
            os.kill(mt_pid, signal.SIGCONT)
        assert during["active"] and during["reason"] == "cache_free" and during["since_ns"] > 0
        assert (alert["severity"], alert["source_host"], alert["disk_id"]) == ("critical", "ps1", None)
        assert await until("the alert cleared after the drain", 30, lambda: _none(open_alerts))
        stats = await asyncio.to_thread(sc.finish_workload, proc, 60)
        after = await ps_throttle()
        assert not after["active"] and after["free_pct"] >= 25.0
        refusals = int(after["refusals_total"])
        [cleared] = [a for a in (await api.get("/v1/alerts"))["items"] if a["alert_id"] == alert["alert_id"]]
        assert cleared["cleared_ns"] is not None and cleared["cleared_ns"] > cleared["raised_ns"]

        await sc.wait_drained(60)
        check = await sc.failover_and_verify(admin, "latest", "latest")
        assert check.ok, check.detail
        assert int(check.result["point"]["wnum_hi"]) >= sc.last_wnum()
    finally:
        await api.close()
        await admin.close()
    events = ps_log_events(lab)
    throttled_507 = [e for e in events if e.get("event") == "request_refused" and e.get("status") == 507]
    starts = [e for e in events if e.get("event") == "throttle_started"]
    stops = [e for e in events if e.get("event") == "throttle_stopped"]
    open_s = (cleared["cleared_ns"] - cleared["raised_ns"]) / 1e9
    print(f"\n{stats['writes']} writes, {refusals} x 507 from the PS ({len(throttled_507)} logged), "
          f"throttle started {len(starts)} x / stopped {len(stops)} x, alert open {open_s:.1f} s, "
          f"whole test {time.monotonic() - started:.1f} s")
    assert refusals > 0 and len(throttled_507) == refusals
    assert starts and len(stops) == len(starts) and all(e["reason"] == "cache_free" for e in starts + stops)


async def _none(fn: Callable[[], Awaitable[list[Any]]]) -> bool:
    return not await fn()
