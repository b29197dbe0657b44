"""What the real components report for the health rules, in-process (CS, PS, MT, agent on
loopback, real TLS): the PS its host CPU / memory and upload backlog age, the MT each disk's
latest point, the agent its churn and how its sends fare. Then the rules on those reports: a PS
that goes away makes the agent's disk raise 78186 (cleared when it is back), writing faster than
the supported churn raises 78188, and an MT that stops makes the disk's RPO pass its threshold."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.blockclient import BlockClient
from agent.service import AgentService
from common import tls
from common.config import AgentConfig, DiskConfig, HealthConfig, MTConfig, PSConfig
from common.http import ApiClient
from cs.db.models import Policy
from mt.service import MTService
from ps.service import PSService
from tests.conftest import CSEnv, NewDbUrl, start_cs, stop_cs

MiB = 1 << 20
SIZE = 4 * MiB
FAST: dict[str, Any] = dict(heartbeat_interval_s=0.3, settings_wait_s=5.0, request_timeout_s=3.0,
                            retry_max_backoff_s=0.2)
HEALTH = HealthConfig(evaluate_interval_s=0.2, ps_unreachable_after_s=1.0, churn_disk_max_bytes_per_s=100_000,
                      churn_machine_max_bytes_per_s=100_000, churn_window_s=0.0)


@dataclass
class Stack:
    tmp: Path
    cs: CSEnv
    admin: ApiClient
    mt: MTService
    ps: PSService
    agent: AgentService
    disk_id: str = ""
    wnum: int = 0  # the block client's write numbers: increasing from 1

    async def components(self) -> dict[str, dict[str, Any]]:
        return {c["role"]: c for c in (await self.admin.get("/v1/components"))["items"]}

    async def alerts(self) -> dict[tuple[str, str | None], str]:
        items = (await self.admin.get("/v1/alerts", params={"active": 1}))["items"]
        return {(a["code"], a["disk_id"]): a["severity"] for a in items}


async def until(what: str, check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.1)


@pytest.fixture
async def stack(tmp_path: Path, new_db_url: NewDbUrl) -> AsyncIterator[Stack]:
    env = await start_cs(tmp_path / "cs", db_url=await new_db_url(), health=HEALTH)
    common = dict(cs_url=env.url, passphrase_file=env.passphrase_file, address="127.0.0.1", **FAST)
    mt = MTService(MTConfig(data_dir=tmp_path / "mt", host_id="mt1", data_port=0, control_port=0, **common))
    ps = PSService(PSConfig(data_dir=tmp_path / "ps", host_id="ps1", data_port=0, **common), poll_interval_s=0.05)
    agent = AgentService(AgentConfig(data_dir=tmp_path / "m1", host_id="m1", socket_path=tmp_path / "m1.sock",
                                     disks=[DiskConfig("disk0", tmp_path / "m1-disk0.img", SIZE)], batch_max_ms=50,
                                     crash_consistent_interval_s=0, app_consistent_interval_s=0, **common))
    admin = ApiClient(env.url, tls.client_context(env.admin_files), timeout_s=15.0)
    s = Stack(tmp_path, env, admin, mt, ps, agent)
    await mt.start()
    await ps.start()
    await agent.start()
    try:
        yield s
    finally:
        await agent.stop()
        await s.ps.stop()
        await s.mt.stop()
        await admin.close()
        await stop_cs(env)


async def write(stack: Stack, nbytes: int, seconds: float) -> None:
    """``nbytes`` of random writes spread over ``seconds``."""
    chunk = 64 * 1024
    async with BlockClient(stack.agent.cfg.socket_path) as client:
        for i in range(nbytes // chunk):
            stack.wnum += 1
            await client.write(0, stack.wnum, (i * chunk) % SIZE, os.urandom(chunk))
            await asyncio.sleep(seconds / max(1, nbytes // chunk))


@pytest.mark.timeout(90)
async def test_components_report_what_the_rules_need_and_the_rules_follow(stack: Stack) -> None:
    s = stack
    [disk] = (await s.admin.post(f"/v1/machines/{s.agent.machine_id}/protect"))["disks"]
    s.disk_id = disk["disk_id"]
    await until("protected", lambda: _true(s.agent.disk_status("disk0")["state"] == "protected"))

    # the reports
    await write(s, 512 * 1024, 1.0)  # ~0.5 MB/s: above the 0.1 MB/s this CS supports
    comps = await until("fresh reports", lambda: _reported(s))
    ps, mt, agent = comps["ps"]["metrics"], comps["mt"]["metrics"], comps["agent"]["metrics"]
    assert 0.0 <= ps["host"]["cpu_pct"] <= 100.0 and 0.0 < ps["host"]["mem_pct"] < 100.0
    assert ps["upload_backlog_age_s"] >= 0.0
    assert mt["disks"][s.disk_id]["latest_point_ns"] > 0
    assert agent["disks"]["disk0"]["ps_unreachable_s"] == 0.0 and agent["disks"]["disk0"]["upload_failing_s"] == 0.0
    assert (await until("78188 for the fast disk", lambda: _with(s, ("78188", s.disk_id))))[("78188", s.disk_id)] \
        == "warning"
    await until("78188 cleared", lambda: _without(s, "78188"))  # idle: churn falls to 0, the alert clears

    # the PS goes away: the agent's sends fail to connect, 78186 after ps_unreachable_after_s
    await s.ps.stop()
    await write(s, 128 * 1024, 0.2)
    await until("78186 raised", lambda: _with(s, ("78186", s.disk_id)))
    assert (await s.components())["agent"]["health"] == "critical"
    s.ps.cfg.data_port = s.ps.data_port  # back on its registered port
    s.ps = PSService(s.ps.cfg, poll_interval_s=0.05)
    await s.ps.start()
    await until("78186 cleared once the PS is back", lambda: _without(s, "78186"), timeout_s=45)

    # RPO: the MT stops; its latest point ages past the machine's policy threshold while it writes on
    assert await _without(s, "rpo_exceeded")
    state = s.cs.service.state
    assert state is not None
    async with state.db.write() as session:  # the policy API's floor is 60 s: a test-sized one directly
        policy = await session.get(Policy, "default")
        assert policy is not None
        policy.rpo_threshold_s = 3
    await s.mt.stop()
    await write(s, 128 * 1024, 0.2)
    await until("rpo_exceeded raised", lambda: _with(s, ("rpo_exceeded", s.disk_id)), timeout_s=20)
    assert (await s.alerts())[("rpo_exceeded", s.disk_id)] == "warning"
    s.mt.cfg.data_port, s.mt.cfg.control_port = s.mt.data_port, s.mt.control_port
    s.mt = MTService(s.mt.cfg)
    await s.mt.start()
    await until("rpo cleared by fresh points", lambda: _without(s, "rpo_exceeded"), timeout_s=30)


async def _true(value: bool) -> bool:
    return value


async def _reported(s: Stack) -> dict[str, dict[str, Any]] | None:
    comps = await s.components()
    ok = ("host" in comps["ps"]["metrics"] and s.disk_id in comps["mt"]["metrics"].get("disks", {})
          and comps["mt"]["metrics"]["disks"][s.disk_id].get("latest_point_ns")
          and "churn_bytes_per_s" in comps["agent"]["metrics"])
    return comps if ok else None


async def _with(s: Stack, key: tuple[str, str | None]) -> dict[tuple[str, str | None], str] | None:
    alerts = await s.alerts()
    return alerts if key in alerts else None


async def _without(s: Stack, code: str) -> bool:
    return not any(k[0] == code for k in await s.alerts())
