"""Issue 7 points 4 and 5 end to end, over real sockets: a real CS, PS, MT and agent in-process
(loopback, port 0, real TLS), the operator's ``drlab ps proxy|bandwidth`` commands run as real
processes, and a real HTTP CONNECT proxy with credentials on loopback (tests/ps/psproxy.py).

The proxy is set with the CLI (password on stdin) before protection: the initial copy reaches the
MT through the proxy's tunnels and the replica equals the source; the password is never shown by
``show``. A bandwidth limit set with the CLI reaches the PS at run time; ``clear`` undoes both,
without a restart.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import workload
from agent.service import AgentService
from common import tls
from common.config import AgentConfig, DiskConfig, MTConfig, PSConfig
from common.http import ApiClient
from mt.service import MTService
from ps.service import PSService
from tests.conftest import CSEnv, start_cs, stop_cs
from tests.ps.psproxy import ConnectProxy

MiB = 1 << 20
SIZE = 4 * MiB
ROOT = Path(__file__).resolve().parents[2]
FAST: dict[str, Any] = dict(heartbeat_interval_s=0.5, settings_wait_s=0.5, request_timeout_s=5.0,
                            retry_max_backoff_s=0.2)
PASSWORD = "e2e-proxy-secret"


async def drlab(env: CSEnv, *args: str, stdin: str = "") -> Any:
    """``drlab --json --cs-url … --admin-dir … ARGS`` as a real process; its JSON answer."""
    admin_dir = str(env.admin_files.directory)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "deploy.cli", "--json", "--cs-url", env.url, "--admin-dir", admin_dir, *args,
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode == 0, (out.decode()[-2000:], err.decode()[-2000:])
    return json.loads(out)


async def until(pred: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_proxy_and_bandwidth_set_by_the_cli_apply_at_run_time(tmp_path: Path) -> None:
    env = await start_cs(tmp_path / "cs")
    proxy = ConnectProxy("ps-user", PASSWORD)
    await proxy.start()
    common = dict(cs_url=env.url, passphrase_file=env.passphrase_file, address="127.0.0.1", **FAST)
    mt = MTService(MTConfig(data_dir=tmp_path / "mt", host_id="mt1", data_port=0, control_port=0, **common))
    ps = PSService(PSConfig(data_dir=tmp_path / "ps", host_id="ps1", data_port=0, **common), poll_interval_s=0.1)
    image = tmp_path / "disk0.img"
    await asyncio.to_thread(workload.prefill, image, 0, SIZE, 0.75, tmp_path / "writes.log", 3)
    agent = AgentService(AgentConfig(data_dir=tmp_path / "agent", host_id="m1", socket_path=tmp_path / "agent.sock",
                                     disks=[DiskConfig("disk0", image, SIZE)], batch_max_ms=50, **common))
    admin = ApiClient(env.url, tls.client_context(env.admin_files), timeout_s=15.0)
    started: list[Any] = []
    try:
        for svc in (mt, ps, agent):
            await svc.start()
            started.append(svc)
        ps_id = ps.component_id
        shown = await drlab(env, "ps", "proxy", "set", ps_id, "--url", proxy.url, "--username", "ps-user",
                            stdin=PASSWORD + "\n")
        assert shown == {"ps_id": ps_id, "url": proxy.url, "username": "ps-user", "password_set": True}
        assert PASSWORD not in json.dumps(await drlab(env, "ps", "proxy", "show", ps_id))
        await until(lambda: ps.metrics()["uplink"]["proxy"] == proxy.url)  # no restart

        machine = next(c["component_id"] for c in (await admin.get("/v1/components"))["items"] if c["role"] == "agent")
        disk_id = (await admin.post(f"/v1/machines/{machine}/protect"))["disks"][0]["disk_id"]

        async def protected() -> bool:
            disk = next(d for d in (await admin.get("/v1/disks"))["items"] if d["disk_id"] == disk_id)
            return bool(disk["state"] == "protected" and (disk["last_resync"] or {}).get("state") == "done")

        deadline = time.monotonic() + 40
        while not await protected():
            assert time.monotonic() < deadline, "the initial copy did not finish"
            await asyncio.sleep(0.1)
        uploaded = ps.registry.progress_of(disk_id).uploaded_bytes
        assert proxy.tunnels > 0 and proxy.refused == 0 and proxy.bytes_up > uploaded > 0  # all through the tunnels
        replica = mt.cfg.data_dir / "replicas" / f"{disk_id}.img"
        assert replica.read_bytes() == image.read_bytes()

        bw = await drlab(env, "ps", "bandwidth", "set", ps_id, "--mb-s", "20", "--window", "00:00-23:59=5")
        assert bw["bytes_per_s"] == 20_000_000 and bw["windows"][0]["bytes_per_s"] == 5_000_000
        await until(lambda: ps.metrics()["uplink"]["bytes_per_s"] in (5_000_000, 20_000_000))
        await drlab(env, "ps", "bandwidth", "clear", ps_id)
        cleared = await drlab(env, "ps", "proxy", "clear", ps_id)
        assert cleared["url"] is None
        await until(lambda: ps.metrics()["uplink"] == {"proxy": None, "proxy_error": None, "bytes_per_s": 0})
    finally:
        for svc in reversed(started):
            await svc.stop()
        await admin.close()
        await proxy.stop()
        await stop_cs(env)
