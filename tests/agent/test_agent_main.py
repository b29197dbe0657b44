"""``python -m agent`` as its own process: TOML config with [[disks]], runs until SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from agentfakes import BlockClient, FakeCS, FakePS, issue, replay, wait_until

from agent.__main__ import main
from common.config import dump_toml
from common.wire import blockio as bio

ROOT = Path(__file__).resolve().parents[2]


async def test_daemon_replicates_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    cs, ps = FakeCS(), FakePS()
    cs_url = await cs.start(issue(tmp_path / "cs", "c5" * 16, "cs"))
    ps_url = await ps.start(issue(tmp_path / "ps", "50" * 16, "ps"))
    issue(tmp_path / "agent" / "identity", "a2" * 16, "agent")
    conf = tmp_path / "agent.toml"
    conf.write_text(dump_toml({
        "data_dir": str(tmp_path / "agent"), "cs_url": cs_url, "socket_path": str(tmp_path / "a.sock"),
        "log_file": str(tmp_path / "agent.log"), "heartbeat_interval_s": 0.5, "settings_wait_s": 0.5,
        "disks": [{"name": "disk0", "path": str(tmp_path / "disk0.img"), "size_bytes": 1 << 20}]}))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent", "--config", str(conf),
                                                "--set", "batch_max_ms=20", cwd=ROOT)
    try:
        await wait_until(lambda: "disk0" in cs.disks and (tmp_path / "a.sock").exists(), 20, "agent up")
        cs.protect(ps_url, {"disk0": 1 << 20})
        client = await BlockClient.connect(tmp_path / "a.sock")
        resp, _ = await client.write(0, 1, 0, b"hello")
        assert resp.status == bio.Status.OK
        await client.close()
        await wait_until(lambda: replay(ps.received(cs.disks["disk0"], 1), 1 << 20)[:5] == b"hello", 20,
                         "the write at the PS")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await cs.stop()
        await ps.stop()
    state = json.loads((tmp_path / "agent" / "state.json").read_text())
    assert state["clean_shutdown"] is True and state["disks"][0]["generation"] == 1
    assert "pipeline_opened" in (tmp_path / "agent.log").read_text()


def test_bad_config_exits_with_2(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text('no_such_key = 1\n')
    assert main(["--config", str(conf)]) == 2
