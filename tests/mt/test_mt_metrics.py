"""The MT's ``GET /metrics`` (control port 9080, admin certificate only) after a PS uploaded batches
that the MT applied, and its JSON log lines of staging and apply carrying component, disk, gen, seq."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from mtbatches import DISK_SIZE, BatchMaker
from mtfakecs import FakeCS

from common import logging as dlog
from common import tls
from common.config import MTConfig, PSConfig
from mt.service import MTService
from ps.service import PSService
from tests.scrape import get, issue, samples

DISK, MT_ID, PS_ID, AGENT_ID, ADMIN_ID = "ab" * 16, "11" * 16, "22" * 16, "66" * 16, "44" * 16
BATCHES = 10


@pytest.fixture
async def applied(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """An MT that applied BATCHES batches a real PS uploaded (stand-in CSs), logging JSON."""
    log_file = tmp_path / "mt.log"
    dlog.setup("mt", log_file, level=logging.DEBUG)
    ca = tls.make_ca()
    key_b64 = base64.b64encode(os.urandom(32)).decode()
    cs_files = issue(ca, tmp_path / "cs-id", "55" * 16, "cs")
    cs_mt, cs_ps = FakeCS(), FakeCS()
    mt_cs_url, ps_cs_url = await cs_mt.start(cs_files), await cs_ps.start(cs_files)
    mt_cfg = MTConfig(data_dir=tmp_path / "mt", cs_url=mt_cs_url, data_port=0, control_port=0,
                      heartbeat_interval_s=0.5, settings_wait_s=1.0)
    ps_cfg = PSConfig(data_dir=tmp_path / "ps", cs_url=ps_cs_url, data_port=0, heartbeat_interval_s=0.5,
                      settings_wait_s=1.0, retry_max_backoff_s=0.2)
    issue(ca, mt_cfg.data_dir / "identity", MT_ID, "mt", mt_cs_url)
    issue(ca, ps_cfg.data_dir / "identity", PS_ID, "ps", ps_cs_url)
    agent_ctx = tls.client_context(issue(ca, tmp_path / "agent-id", AGENT_ID, "agent"))
    cs_mt.publish({"disks": [{"disk_id": DISK, "ps_id": PS_ID, "generation": 1, "size_bytes": DISK_SIZE,
                              "key_epoch": 1, "key_b64": key_b64}], "jobs": []})
    mt, ps = MTService(mt_cfg), PSService(ps_cfg, poll_interval_s=0.1)
    await mt.start()
    try:
        cs_ps.publish({"disks": [{"disk_id": DISK, "machine_id": AGENT_ID, "generation": 1, "size_bytes": DISK_SIZE,
                                  "mt_url": f"https://127.0.0.1:{mt.data_port}", "key_epoch": 1, "key_b64": key_b64,
                                  "mt_control_url": f"https://127.0.0.1:{mt.control_port}"}]})
        await mt.wait_settings()
        await ps.start()
        await ps.wait_settings()
        maker = BatchMaker(bytes.fromhex(DISK), seed=5)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=agent_ctx)) as session:
            for seq in range(1, BATCHES + 1):
                url = f"https://127.0.0.1:{ps.data_port}/v1/disks/{DISK}/batches/1/{seq}"
                async with session.put(url, data=maker.make()) as resp:
                    assert resp.status == 201, await resp.text()
        deadline = time.monotonic() + 30
        while mt.workers[DISK].store.applied != (1, BATCHES):
            assert time.monotonic() < deadline, f"MT applied only {mt.workers[DISK].store.applied}"
            await asyncio.sleep(0.05)
        yield {"mt": mt, "log": log_file, "agent": agent_ctx,
               "ps": tls.client_context(tls.IdentityFiles(ps_cfg.data_dir / "identity")),
               "admin": tls.client_context(issue(ca, tmp_path / "admin", ADMIN_ID, "admin")),
               "anonymous": tls.client_context(None, ca_pem=ca[1])}
    finally:
        await ps.stop()
        await mt.stop()
        await cs_ps.stop()
        await cs_mt.stop()
        structlog.contextvars.clear_contextvars()


async def test_the_admin_scrapes_applied_bytes_latency_and_staging(applied: dict[str, Any]) -> None:
    mt = applied["mt"]
    status, text = await get(applied["admin"], f"https://127.0.0.1:{mt.control_port}/metrics")
    assert status == 200, text
    got = samples(text)
    disk = (("disk", DISK),)
    assert got["drlab_mt_applied_bytes_total"][disk] == mt.workers[DISK].store.applied_bytes > 0
    assert got["drlab_mt_applied_seq"][disk] == BATCHES and got["drlab_mt_received_seq"][disk] == BATCHES
    assert got["drlab_mt_generation"][disk] == 1
    assert got["drlab_mt_staged_batches"][disk] == 0 and got["drlab_mt_staged_bytes"][disk] == 0
    latency = {dict(k)["quantile"]: v for k, v in got["drlab_mt_apply_latency_seconds"].items()}
    assert set(latency) == {"0.5", "0.9", "0.99"} and 0 <= latency["0.5"] <= latency["0.99"] < 30
    assert got["drlab_mt_lag_seconds"][(("disk", DISK), ("quantile", "0.99"))] >= 0  # the batches' own clock
    newest = mt.workers[DISK].store.catalog.latest(DISK)
    assert got["drlab_mt_latest_point_timestamp_seconds"][disk] == pytest.approx(newest.t_last_ns / 1e9)
    assert got["drlab_mt_retention_paused"][disk] == 0 and got["drlab_mt_apply_failures"][disk] == 0


async def test_metrics_are_on_the_control_port_for_the_admin_only(applied: dict[str, Any]) -> None:
    mt = applied["mt"]
    url = f"https://127.0.0.1:{mt.control_port}/metrics"
    status, body = await get(applied["anonymous"], url)
    assert status == 401 and json.loads(body)["code"] == "unauthorized"
    for who in ("agent", "ps"):
        status, body = await get(applied[who], url)
        assert status == 403 and json.loads(body)["code"] == "forbidden", who
    status, body = await get(applied["admin"], f"https://127.0.0.1:{mt.data_port}/metrics")
    assert status == 404 and json.loads(body)["code"] == "not_found"  # not on the data port


async def test_json_log_lines_of_staging_and_apply_carry_component_disk_gen_seq(applied: dict[str, Any]) -> None:
    lines = [json.loads(line) for line in applied["log"].read_text().splitlines() if line.strip()]
    for event in ("batch_staged", "batch_applied"):
        seen = [e for e in lines if e["event"] == event]
        assert {e["seq"] for e in seen} == set(range(1, BATCHES + 1)), event
        for e in seen:
            assert (e["component"], e["disk"], e["gen"]) == ("mt", DISK, 1), e
    assert all("component" in e for e in lines)


async def test_the_heartbeat_carries_each_disks_apply_failures_and_why_applying_stopped(
        applied: dict[str, Any]) -> None:
    """What the CS's ``mt_apply_failing`` / ``mt_apply_stopped`` rules read (cs/health/rules.py)."""
    mt = applied["mt"]
    disk = mt.metrics()["disks"][DISK]
    assert disk["apply_failures"] == 0 and disk["apply_stopped"] is None
    store, worker = mt.workers[DISK].store, mt.workers[DISK]
    store.broken, worker.failures = "an apply that failed could not be rolled back (disk full)", 4
    try:
        disk = mt.metrics()["disks"][DISK]
        assert disk["apply_failures"] == 4 and disk["apply_stopped"] == store.broken
    finally:
        store.broken, worker.failures = None, 0
