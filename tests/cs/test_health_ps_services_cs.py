"""Point 6 of issue 7 on a real CS (SQLite and PostgreSQL), heartbeats over HTTPS: a PS heartbeat
with a stopped service raises ``ps_services_not_running`` naming it and a later one with every
service running clears it; a component whose clock is off by more than the threshold raises
``clock_skew`` and clears once in sync; a malformed ``time_ns`` is 400 and changes nothing;
``drlab ps list`` shows each PS's load from its heartbeat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site, raw

from common import tls
from common.config import HealthConfig
from common.http import ApiClient
from deploy import cli
from tests.conftest import CSEnv, NewDbUrl, start_cs, stop_cs

RUNNING = {"ingest": "running", "uploader": "running", "control": "running", "discovery": "running",
           "push_install": "running"}


@pytest.fixture
async def world(tmp_path: Path, new_db_url: NewDbUrl) -> AsyncIterator[tuple[CSEnv, Site, ApiClient]]:
    env = await start_cs(tmp_path / "cs", db_url=await new_db_url(), health=HealthConfig(evaluate_interval_s=3600.0))
    site = Site(env, tmp_path)
    admin = ApiClient(env.url, tls.client_context(env.admin_files), timeout_s=15)
    try:
        yield env, site, admin
    finally:
        await admin.close()
        await site.close()
        await stop_cs(env)


async def open_alerts(admin: ApiClient) -> dict[tuple[str, str], dict[str, Any]]:
    items = (await admin.get("/v1/alerts", params={"active": 1}))["items"]
    return {(a["code"], a["source_host"]): a for a in items}


async def beat(member: Enrolled, metrics: dict[str, Any], **body: Any) -> None:
    await member.api.post("/v1/heartbeat", {"metrics": metrics, **body})


@pytest.mark.timeout(60)
async def test_a_stopped_ps_service_raises_and_a_later_heartbeat_clears(world: tuple[CSEnv, Site, ApiClient]) -> None:
    _, site, admin = world
    ps = await site.ps()
    await beat(ps, {"services": RUNNING})
    assert await open_alerts(admin) == {}
    await beat(ps, {"services": {**RUNNING, "uploader": "stopped"}})
    alert = (await open_alerts(admin))[("ps_services_not_running", "ps1")]
    assert alert["severity"] == "warning" and alert["message"].endswith("process server: uploader")
    await beat(ps, {"services": RUNNING})
    assert await open_alerts(admin) == {}


@pytest.mark.timeout(60)
async def test_clock_skew_raises_for_an_agent_and_clears_in_sync(world: tuple[CSEnv, Site, ApiClient]) -> None:
    _, site, admin = world
    agent, _ = await site.agent()
    await beat(agent, {}, time_ns=time.time_ns() - 600 * 10**9, rtt_ns=2_000_000)
    alert = (await open_alerts(admin))[("clock_skew", "m1")]
    assert alert["severity"] == "warning" and "behind the configuration server" in alert["message"]
    comps = {c["host_id"]: c for c in (await admin.get("/v1/components"))["items"]}
    assert -601 < comps["m1"]["metrics"]["clock_skew_s"] < -599
    status, body = await raw(site.env.url, agent.ssl, "POST", "/v1/heartbeat", {"metrics": {}, "time_ns": "now"})
    assert status == 400 and "time_ns" in body["message"]
    comps = {c["host_id"]: c for c in (await admin.get("/v1/components"))["items"]}
    assert comps["m1"]["metrics"]["clock_skew_s"] < -599  # the refused heartbeat changed nothing
    await beat(agent, {}, time_ns=time.time_ns())
    assert await open_alerts(admin) == {}


@pytest.mark.timeout(60)
async def test_ps_list_shows_each_ps_load(world: tuple[CSEnv, Site, ApiClient],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    env, site, _ = world
    ps = await site.ps()
    agent, _ = await site.agent()
    await beat(ps, {"cache_free_pct": 87.5, "upload_bytes_per_s": 3_000_000, "machine_count": 1,
                    "services": {**RUNNING, "discovery": "stopped"},
                    "disks": {"ab" * 16: {"backlog_bytes": 5_000_000}},
                    "machines": {agent.component_id: {"churn_bytes_per_s": 1_250_000, "disks": 1}}})
    argv = ["--cs-url", env.url, "--admin-dir", str(env.admin_files.directory), "ps", "list"]
    assert await asyncio.to_thread(cli.main, argv) == 0
    out = capsys.readouterr().out
    ps_row = next(line for line in out.splitlines() if line.startswith("| ps1 "))
    assert [c.strip() for c in ps_row.strip("|").split("|")] == ["ps1", "87.5", "5.0", "3.00", "1",
                                                               "stopped: discovery", "", ""]
    assert any("| m1 " in line and "1.25" in line for line in out.splitlines())
