"""Upgrading a PS in place keeps its cache: a PS data dir written by the earlier release (the
checked-in fixture tests/fixtures/formats/ps_datadir/v1: two cached batches and identity.json
without a format field) starts today's PSService, which uploads both batches to the MT unchanged
and then empties its cache. Stand-in CS and MT over real TLS (tests/ps/test_ps_service.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import time
from pathlib import Path

from psfakecs import FakeCS
from psfakemt import FakeMT

from common import tls
from common.config import PSConfig
from ps.service import PSService

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "formats" / "ps_datadir" / "v1"
DISK = "ab" * 16
MACHINE = "a1" * 16
PS_ID = "22" * 16
KEY = os.urandom(32)


def issue(ca: tuple[bytes, bytes], directory: Path, cid: str, role: str) -> tls.IdentityFiles:
    files = tls.IdentityFiles(directory)
    tls.issue_local(*ca, files, component_id=cid, role=role, hosts=["127.0.0.1"], meta={})
    return files


async def test_a_v1_ps_data_dir_starts_and_uploads_its_cached_batches(tmp_path: Path) -> None:
    ca = tls.make_ca()
    cs, mt = FakeCS(), FakeMT(KEY)
    cs_url = await cs.start(issue(ca, tmp_path / "cs", "cc" * 16, "cs"))
    mt_url = await mt.start(issue(ca, tmp_path / "mt", "11" * 16, "mt"))
    cfg = PSConfig(data_dir=tmp_path / "ps", cs_url=cs_url, data_port=0, heartbeat_interval_s=0.2,
                   settings_wait_s=1.0, retry_max_backoff_s=0.2, upload_window_batches=2, request_timeout_s=5.0,
                   cache_max_bytes=1 << 20)
    shutil.copytree(FIXTURE / "cache", cfg.data_dir / "cache")
    files = issue(ca, cfg.data_dir / "identity", PS_ID, "ps")  # key and certificate: this CA's
    shutil.copy(FIXTURE / "identity" / "identity.json", files.meta)  # the earlier release's identity.json
    assert "format" not in json.loads(files.meta.read_text())
    cached = {(1, seq): (FIXTURE / "cache" / DISK / f"00000001-{seq:012d}.batch").read_bytes() for seq in (1, 2)}
    cs.publish({"disks": [{"disk_id": DISK, "machine_id": MACHINE, "generation": 1, "size_bytes": 1 << 20,
                           "mt_url": mt_url, "mt_control_url": mt_url, "key_epoch": 1,
                           "key_b64": base64.b64encode(KEY).decode()}]})
    ps = PSService(cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        assert ps.component_id == PS_ID
        deadline = time.monotonic() + 15.0
        while not (mt.received == cached and not list((cfg.data_dir / "cache" / DISK).iterdir())):
            assert time.monotonic() < deadline, f"uploaded {sorted(mt.received)}"
            await asyncio.sleep(0.05)
    finally:
        await ps.stop()
        await mt.stop()
        await cs.stop()
