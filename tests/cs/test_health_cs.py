"""Health evaluation on a real CS, heartbeats over HTTPS, time moved by the evaluator's injected
clock (short windows, no 15-minute waits): silence raises 806 / 78022 / 78174 and heartbeats
clear them; a window that ends between heartbeats raises from the evaluator, a spike shorter than
it raises nothing; windows survive a CS restart; two CS processes evaluating at once raise each
alert once; a component's health is its worst alert (API and `drlab components`); RPO per disk
against the machine's policy."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site
from sqlalchemy import select

from common import tls
from common.config import HealthConfig
from common.http import ApiClient
from cs import alerts
from cs.db.models import Component, Disk, HealthWindow, Machine, Policy
from cs.service import CSService
from deploy import cli
from tests.conftest import CSEnv, NewDbUrl, start_cs, stop_cs

WINDOW_S = 60.0
FAST = dict(evaluate_interval_s=3600.0, ps_cpu_window_s=WINDOW_S, ps_memory_window_s=WINDOW_S,
            ps_cache_free_window_s=WINDOW_S, churn_window_s=WINDOW_S)


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> int:
        return time.time_ns() + int(self.offset_s * 1e9)


@dataclass
class World:
    env: CSEnv
    site: Site
    clock: Clock
    admin: ApiClient

    async def evaluate(self, service: CSService | None = None) -> None:
        monitor = (service or self.env.service).health
        assert monitor is not None
        await monitor.run_once()

    async def alerts(self) -> dict[tuple[str, str, str | None], str]:
        """Open alerts: {(code, source host, disk): severity}."""
        items = (await self.admin.get("/v1/alerts", params={"active": 1}))["items"]
        return {(a["code"], a["source_host"], a["disk_id"]): a["severity"] for a in items}

    async def health(self) -> dict[str, str]:
        return {c["host_id"]: c["health"] for c in (await self.admin.get("/v1/components"))["items"]}


@pytest.fixture
async def world(tmp_path: Path, new_db_url: NewDbUrl) -> AsyncIterator[World]:
    env = await start_cs(tmp_path / "cs", db_url=await new_db_url(), health=HealthConfig(**FAST))  # type: ignore[arg-type]
    clock = Clock()
    assert env.service.health is not None
    env.service.health.clock = clock
    w = World(env, Site(env, tmp_path), clock, ApiClient(env.url, tls.client_context(env.admin_files), timeout_s=15))
    try:
        yield w
    finally:
        await w.admin.close()
        await w.site.close()
        await stop_cs(env)


async def beat(member: Enrolled, metrics: dict[str, Any] | None = None) -> None:
    await member.api.post("/v1/heartbeat", {"metrics": metrics or {}})


def ps_load(cpu: float = 10.0, mem: float = 20.0, free: float = 90.0) -> dict[str, Any]:
    return {"host": {"cpu_pct": cpu, "mem_pct": mem}, "cache_free_pct": free, "upload_backlog_age_s": 0.0,
            "throttle": {"active": False}, "disks": {}}


@pytest.mark.timeout(60)
async def test_silent_ps_mt_agent_raise_806_78022_78174_and_heartbeats_clear_them(world: World) -> None:
    ps, mt = await world.site.ps(), await world.site.mt()
    agent, _ = await world.site.agent()
    for m in (ps, mt, agent):
        await beat(m)
    world.clock.offset_s = 899.0
    await world.evaluate()
    assert await world.alerts() == {}
    world.clock.offset_s = 901.0
    await world.evaluate()
    assert await world.alerts() == {("806", "ps1", None): "critical", ("78022", "mt1", None): "critical",
                                    ("78174", "m1", None): "critical"}
    assert await world.health() == {"ps1": "critical", "mt1": "critical", "m1": "critical"}
    await beat(ps)  # the heartbeat itself clears the PS's alert
    assert set(await world.alerts()) == {("78022", "mt1", None), ("78174", "m1", None)}
    await beat(mt)
    await beat(agent)
    world.clock.offset_s = 0.0  # and the evaluator, at the same time, agrees
    await world.evaluate()
    assert await world.alerts() == {}
    assert await world.health() == {"ps1": "ok", "mt1": "ok", "m1": "ok"}


@pytest.mark.timeout(60)
async def test_a_window_ending_between_heartbeats_raises_from_the_evaluator(world: World) -> None:
    ps = await world.site.ps()
    await beat(ps, ps_load(cpu=99.0, mem=85.0))
    world.clock.offset_s = WINDOW_S - 5
    await world.evaluate()
    assert await world.alerts() == {}
    world.clock.offset_s = WINDOW_S + 1
    await world.evaluate()
    assert await world.alerts() == {("ps_cpu", "ps1", None): "critical", ("ps_memory", "ps1", None): "warning"}
    assert (await world.health())["ps1"] == "critical"
    await beat(ps, ps_load(cpu=10.0, mem=85.0))  # CPU back to normal: cleared by that heartbeat
    assert await world.alerts() == {("ps_memory", "ps1", None): "warning"}
    assert (await world.health())["ps1"] == "warning"
    await beat(ps, ps_load())
    assert await world.alerts() == {} and (await world.health())["ps1"] == "ok"


@pytest.mark.timeout(60)
async def test_a_spike_shorter_than_the_window_raises_nothing(world: World) -> None:
    ps = await world.site.ps()
    await beat(ps, ps_load(cpu=99.0, free=5.0))
    await beat(ps, ps_load())  # one calm heartbeat ends the spike
    world.clock.offset_s = 10 * WINDOW_S
    await world.evaluate()
    assert await world.alerts() == {}
    state = world.env.service.state
    assert state is not None
    async with state.db.read() as session:
        assert (await session.scalars(select(HealthWindow))).all() == []  # no window left open either


@pytest.mark.timeout(60)
async def test_windows_survive_a_restart_and_two_cs_processes_raise_once(world: World, tmp_path: Path) -> None:
    ps = await world.site.ps()
    await beat(ps, ps_load(cpu=90.0))  # the window opens on this CS ...
    await world.env.service.stop()
    first = CSService(world.env.cfg)  # ... restarted on the same database, with a second one beside it
    second = CSService(world.env.cfg)
    await first.start()
    await second.start()
    world.env.service = first
    try:
        for svc in (first, second):
            assert svc.health is not None
            svc.health.clock = world.clock
        world.clock.offset_s = WINDOW_S + 1
        await asyncio.gather(world.evaluate(first), world.evaluate(second), world.evaluate(first))
        admin = ApiClient(first.url, tls.client_context(world.env.admin_files), timeout_s=15)
        try:
            items = (await admin.get("/v1/alerts"))["items"]
        finally:
            await admin.close()
        assert [(a["code"], a["severity"], a["active"]) for a in items] == [("ps_cpu", "warning", True)]
    finally:
        await second.stop()


@pytest.mark.timeout(60)
async def test_rpo_alert_per_disk_against_the_machines_policy(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    mt = await world.site.mt()
    a1, disks1 = await world.site.agent("m1")
    a2, disks2 = await world.site.agent("m2")
    d1, d2 = disks1["disk0"], disks2["disk0"]
    state = world.env.service.state
    assert state is not None
    async with state.db.write() as session:
        now = time.time_ns()
        for disk in (await session.scalars(select(Disk))).all():
            disk.mt_id, disk.state = mt.component_id, "protected"
        if await session.get(Policy, "tight") is None:
            session.add(Policy(name="tight", rpo_threshold_s=60, retention_window_s=3600, app_consistent_interval_s=0,
                               crash_consistent_interval_s=None, multi_machine_consistency=False, created_ns=now,
                               updated_ns=now))
        await session.merge(Machine(machine_id=a1.component_id, name="m1", site_name=None, policy_name="tight",
                                    protection_state="protected", protected_ns=now, created_ns=now, updated_ns=now))
    point = time.time_ns()
    await beat(mt, {"disks": {d1: {"latest_point_ns": point}, d2: {"latest_point_ns": point}}})
    for a in (a1, a2):
        await beat(a)
    world.clock.offset_s = 30
    await world.evaluate()
    assert await world.alerts() == {}
    world.clock.offset_s = 90  # m1's policy allows 60 s; m2 has the default policy's threshold
    await world.evaluate()
    alerts = await world.alerts()
    assert alerts == {("rpo_exceeded", "m1", d1): "warning"}
    assert (await world.health()) == {"mt1": "ok", "m1": "warning", "m2": "ok"}
    capsys.readouterr()
    base = ["--cs-url", world.env.url, "--admin-dir", str(world.env.admin_files.directory)]
    assert await asyncio.to_thread(cli.main, [*base, "components"]) == 0
    out = capsys.readouterr().out
    assert "health" in out and "| warning" in out
    assert await asyncio.to_thread(cli.main, [*base, "--json", "components"]) == 0
    assert {c["host_id"]: c["health"] for c in json.loads(capsys.readouterr().out)}["m1"] == "warning"
    await beat(mt, {"disks": {d1: {"latest_point_ns": world.clock()}, d2: {"latest_point_ns": point}}})
    await world.evaluate()  # the MT caught up: cleared
    assert await world.alerts() == {}


@pytest.mark.timeout(60)
async def test_a_batch_of_heartbeats_is_observed_at_once_the_last_beat_of_each_counting(world: World) -> None:
    ps1, ps2 = await world.site.ps("ps1"), await world.site.ps("ps2", {"data": 19444})
    state = world.env.service.state
    assert state is not None
    throttled = {"throttle": {"active": True, "reason": "cache_free", "free_pct": 5.0, "threshold_pct": 20.0}}
    calm = {"throttle": {"active": False}}
    now = time.time_ns()
    async with state.db.write() as session:
        c1, c2 = [await session.get(Component, m.component_id) for m in (ps1, ps2)]
        assert c1 is not None and c2 is not None
        await alerts.observe_many(session, [(c1, calm, now), (c2, throttled, now), (c1, throttled, now + 1),
                                            (c2, calm, now + 2)], health=world.env.cfg.health)
    assert await world.alerts() == {("ps_throttled", "ps1", None): "critical"}
    async with state.db.write() as session:
        c1 = await session.get(Component, ps1.component_id)
        assert c1 is not None
        await alerts.observe_many(session, [(c1, calm, now + 3)], health=world.env.cfg.health)
    assert await world.alerts() == {}
