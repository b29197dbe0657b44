"""The real PS uploads to the real MT (each with a stand-in CS serving its settings): batches an
agent identity PUTs to the PS end up applied on the MT, in order, byte-exact."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path

import aiohttp
from mtbatches import DISK_SIZE, BatchMaker
from mtfakecs import FakeCS

from common import tls
from common.config import MTConfig, PSConfig
from mt.service import MTService
from ps.service import PSService

DISK, MT_ID, PS_ID, AGENT_ID = "ab" * 16, "11" * 16, "22" * 16, "66" * 16


def issue(ca: tuple[bytes, bytes], directory: Path, cid: str, role: str, cs_url: str = "") -> tls.IdentityFiles:
    files = tls.IdentityFiles(directory)
    tls.issue_local(*ca, files, component_id=cid, role=role, hosts=["127.0.0.1"],
                    meta={"component_id": cid, "role": role, "cs_url": cs_url})
    return files


async def test_ps_uploads_to_mt_which_applies_in_order(tmp_path: Path) -> None:
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
        mt_url = f"https://127.0.0.1:{mt.data_port}"
        cs_ps.publish({"disks": [{"disk_id": DISK, "machine_id": AGENT_ID, "generation": 1, "size_bytes": DISK_SIZE,
                                  "mt_url": mt_url, "mt_control_url": f"https://127.0.0.1:{mt.control_port}",
                                  "key_epoch": 1, "key_b64": key_b64}]})
        await mt.wait_settings()
        await ps.start()
        await ps.wait_settings()
        maker = BatchMaker(bytes.fromhex(DISK), seed=13)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=agent_ctx)) as session:
            for seq in range(1, 21):
                url = f"https://127.0.0.1:{ps.data_port}/v1/disks/{DISK}/batches/1/{seq}"
                async with session.put(url, data=maker.make()) as resp:
                    assert resp.status == 201, await resp.text()
        deadline = time.monotonic() + 30
        while mt.workers[DISK].store.applied != (1, 20):
            assert time.monotonic() < deadline, f"MT applied only {mt.workers[DISK].store.applied}"
            await asyncio.sleep(0.05)
        image = await asyncio.to_thread((mt_cfg.data_dir / "replicas" / f"{DISK}.img").read_bytes)
        assert image == maker.images[(1, 20)]
        points = await asyncio.to_thread(mt.workers[DISK].store.catalog.all, DISK)
        assert [p.seq for p in points] == list(range(1, 21))
        deadline = time.monotonic() + 10
        while ps.registry.progress_of(DISK).mt_applied != 20:
            assert time.monotonic() < deadline, "the PS never learnt that everything was applied"
            await asyncio.sleep(0.05)
    finally:
        await ps.stop()
        await mt.stop()
        await cs_ps.stop()
        await cs_mt.stop()
