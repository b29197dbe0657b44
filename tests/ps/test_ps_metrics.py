"""The PS's ``GET /metrics`` (data port, admin certificate only) after batches went PS -> MT, and
its JSON log lines of ingest and upload carrying component, disk, gen and seq."""

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
from psbatches import make_batch
from psfakecs import FakeCS

from common import logging as dlog
from common import tls
from common.config import MTConfig, PSConfig
from mt.service import MTService
from ps.service import PSService
from tests.scrape import get, issue, samples

DISK, MACHINE, PS_ID, MT_ID, ADMIN_ID = "ab" * 16, "a1" * 16, "22" * 16, "11" * 16, "44" * 16
SIZE = 1 << 20
KEY_B64 = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
async def replicated(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """A PS and an MT (settings from stand-in CSs) after 12 batches went through, logging JSON."""
    log_file = tmp_path / "ps.log"
    dlog.setup("ps", log_file, level=logging.DEBUG)
    ca = tls.make_ca()
    cs = FakeCS()
    cs_url = await cs.start(issue(ca, tmp_path / "cs", "cc" * 16, "cs"))
    common = {"cs_url": cs_url, "heartbeat_interval_s": 0.5, "settings_wait_s": 1.0, "retry_max_backoff_s": 0.3}
    mt_cfg = MTConfig(data_dir=tmp_path / "mt", data_port=0, control_port=0, **common)  # type: ignore[arg-type]
    ps_cfg = PSConfig(data_dir=tmp_path / "ps", data_port=0, **common)  # type: ignore[arg-type]
    issue(ca, mt_cfg.data_dir / "identity", MT_ID, "mt", cs_url)
    issue(ca, ps_cfg.data_dir / "identity", PS_ID, "ps", cs_url)
    cs.publish({"disks": [{"disk_id": DISK, "ps_id": PS_ID, "generation": 1, "size_bytes": SIZE, "key_epoch": 1,
                           "key_b64": KEY_B64}], "jobs": []}, component_id=MT_ID)
    mt, ps = MTService(mt_cfg), PSService(ps_cfg, poll_interval_s=0.1)
    await mt.start()
    try:
        await mt.wait_settings()
        cs.publish({"disks": [{"disk_id": DISK, "machine_id": MACHINE, "generation": 1, "size_bytes": SIZE,
                               "mt_url": f"https://127.0.0.1:{mt.data_port}", "key_epoch": 1, "key_b64": KEY_B64,
                               "mt_control_url": f"https://127.0.0.1:{mt.control_port}"}]}, component_id=PS_ID)
        await ps.start()
        await ps.wait_settings()
        agent = tls.client_context(issue(ca, tmp_path / "agent", MACHINE, "agent"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=agent)) as session:
            for seq in range(1, 13):
                url = f"https://127.0.0.1:{ps.data_port}/v1/disks/{DISK}/batches/1/{seq}"
                async with session.put(url, data=make_batch(DISK, 1, seq, offset=seq * 4096)) as resp:
                    assert resp.status == 201, await resp.text()
        deadline = time.monotonic() + 20
        while ps.registry.progress_of(DISK).mt_of(1) != (12, 12):
            assert time.monotonic() < deadline, "the batches never reached the MT"
            await asyncio.sleep(0.05)
        yield {"ps": ps, "mt": mt, "agent": agent, "log": log_file,
               "admin": tls.client_context(issue(ca, tmp_path / "admin", ADMIN_ID, "admin")),
               "anonymous": tls.client_context(None, ca_pem=ca[1])}
    finally:
        await ps.stop()
        await mt.stop()
        await cs.stop()
        structlog.contextvars.clear_contextvars()


async def test_the_admin_scrapes_throughput_backlog_and_cache(replicated: dict[str, Any]) -> None:
    ps = replicated["ps"]
    status, text = await get(replicated["admin"], f"https://127.0.0.1:{ps.data_port}/metrics")
    assert status == 200, text
    got = samples(text)
    disk = (("disk", DISK),)
    assert got["drlab_ps_received_batches_total"][disk] == 12
    assert got["drlab_ps_received_bytes_total"][disk] > 12 * 4096  # headers and records
    assert got["drlab_ps_uploaded_batches_total"][disk] == 12
    assert 0 < got["drlab_ps_uploaded_bytes_total"][disk] < got["drlab_ps_received_bytes_total"][disk]  # lz4
    assert got["drlab_ps_backlog_bytes"][disk] == 0 and got["drlab_ps_backlog_batches"][disk] == 0
    assert got["drlab_ps_mt_applied_seq"][disk] == 12
    assert 0 < got["drlab_ps_cache_free_bytes"][()] <= got["drlab_ps_cache_max_bytes"][()]
    assert got["drlab_ps_throttled"][()] == 0 and got["drlab_ps_throttle_refusals_total"][()] == 0


async def test_metrics_refuse_a_caller_without_a_certificate_or_with_an_agent_one(replicated: dict[str, Any]) -> None:
    url = f"https://127.0.0.1:{replicated['ps'].data_port}/metrics"
    status, body = await get(replicated["anonymous"], url)
    assert status == 401 and json.loads(body)["code"] == "unauthorized"
    status, body = await get(replicated["agent"], url)
    assert status == 403 and json.loads(body)["code"] == "forbidden"


async def test_json_log_lines_of_ingest_and_upload_carry_component_disk_gen_seq(replicated: dict[str, Any]) -> None:
    lines = [json.loads(line) for line in replicated["log"].read_text().splitlines() if line.strip()]
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_event.setdefault(line["event"], []).append(line)
    for event in ("batch_cached", "batch_uploaded"):
        seen = by_event.get(event, [])
        assert {e["seq"] for e in seen} == set(range(1, 13)), event
        for e in seen:
            assert (e["component"], e["disk"], e["gen"]) == ("ps", DISK, 1), e
    applied = by_event.get("batch_applied", [])
    assert applied and all(e["component"] == "mt" and e["disk"] == DISK for e in applied)  # same process
