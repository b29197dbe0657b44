"""The MT apply alerts on a real CS (SQLite and PostgreSQL), heartbeats over HTTPS: an MT heartbeat
with a disk failing its applies raises ``mt_apply_failing`` and one whose applying stopped raises
``mt_apply_stopped`` with the reason; a later heartbeat with the disk applying again clears both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site

from common import tls
from common.config import HealthConfig
from common.http import ApiClient
from tests.conftest import CSEnv, NewDbUrl, start_cs, stop_cs

DISK = "cd" * 16
REASON = "an apply that failed could not be rolled back ([Errno 28] No space left on device)"


@pytest.fixture
async def world(tmp_path: Path, new_db_url: NewDbUrl) -> AsyncIterator[tuple[Site, ApiClient]]:
    env: CSEnv = await start_cs(tmp_path / "cs", db_url=await new_db_url(),
                                health=HealthConfig(evaluate_interval_s=3600.0))
    site = Site(env, tmp_path)
    admin = ApiClient(env.url, tls.client_context(env.admin_files), timeout_s=15)
    try:
        yield site, admin
    finally:
        await admin.close()
        await site.close()
        await stop_cs(env)


async def open_alerts(admin: ApiClient) -> dict[tuple[str, str | None], dict[str, Any]]:
    items = (await admin.get("/v1/alerts", params={"active": 1}))["items"]
    return {(a["code"], a.get("disk_id")): a for a in items}


async def beat(member: Enrolled, failures: int, stopped: str | None) -> None:
    disk: dict[str, Any] = {"mt_applied": 5, "apply_failures": failures, "apply_stopped": stopped, "retention": {}}
    await member.api.post("/v1/heartbeat", {"metrics": {"disks": {DISK: disk}}})


@pytest.mark.timeout(60)
async def test_failing_then_stopped_applies_raise_and_a_later_heartbeat_clears(world: tuple[Site, ApiClient]) -> None:
    site, admin = world
    mt = await site.mt()
    await beat(mt, 2, None)
    assert await open_alerts(admin) == {}
    await beat(mt, 3, None)
    alerts = await open_alerts(admin)
    assert set(alerts) == {("mt_apply_failing", DISK)}
    failing = alerts[("mt_apply_failing", DISK)]
    assert failing["severity"] == "warning" and failing["source_host"] == "mt1"
    assert "3 times in a row" in failing["message"]
    await beat(mt, 6, REASON)
    alerts = await open_alerts(admin)
    assert set(alerts) == {("mt_apply_failing", DISK), ("mt_apply_stopped", DISK)}
    stopped = alerts[("mt_apply_stopped", DISK)]
    assert stopped["severity"] == "critical" and REASON in stopped["message"]
    await beat(mt, 0, None)  # the MT restarted and applies again
    assert await open_alerts(admin) == {}
    cleared = (await admin.get("/v1/alerts", params={"active": 0}))["items"]
    assert {a["code"] for a in cleared if a.get("disk_id") == DISK} >= {"mt_apply_failing", "mt_apply_stopped"}
