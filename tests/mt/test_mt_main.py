"""``python -m mt``: bad configuration, and a real process that serves and exits on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from mtfakecs import FakeCS

from common import tls
from common.config import dump_toml

REPO = Path(__file__).resolve().parents[2]


def test_unknown_config_key_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "mt.toml"
    cfg.write_text('data_dirr = "x"\n')
    proc = subprocess.run([sys.executable, "-m", "mt", "--config", str(cfg)], capture_output=True, text=True,
                          timeout=30, cwd=REPO, check=False)
    assert proc.returncode == 2 and "data_dirr" in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_process_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    ca = tls.make_ca()
    cs = FakeCS()
    cs_files = tls.IdentityFiles(tmp_path / "cs-id")
    tls.issue_local(*ca, cs_files, component_id="55" * 16, role="cs", hosts=["127.0.0.1"], meta={})
    cs_url = await cs.start(cs_files)
    data_dir = tmp_path / "mt"
    tls.issue_local(*ca, tls.IdentityFiles(data_dir / "identity"), component_id="11" * 16, role="mt",
                    hosts=["127.0.0.1"], meta={"component_id": "11" * 16, "role": "mt", "cs_url": cs_url})
    control = free_port()
    cfg = tmp_path / "mt.toml"
    cfg.write_text(dump_toml({"data_dir": str(data_dir), "cs_url": cs_url, "data_port": free_port(),
                              "control_port": control, "heartbeat_interval_s": 0.2, "settings_wait_s": 1.0}))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "mt", "--config", str(cfg), cwd=REPO,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        status = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context(None, ca[1]))) as s:
            while status != 401:
                assert time.monotonic() < deadline, "the MT did not start serving"
                try:
                    async with s.get(f"https://127.0.0.1:{control}/v1/disks/{'ab' * 16}/status") as resp:
                        status = resp.status
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        while not cs.heartbeats:
            assert time.monotonic() < deadline, "no heartbeat reached the CS"
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await cs.stop()
