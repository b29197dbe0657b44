"""Disk resize end to end over real sockets (issue 7 point 7): a real CS, PS, MT and agent in-process
(loopback, port 0, TLS). The protected disk's file grows: the agent reports it, the CS puts the disk
in resync-required with a critical alert and replication stops (a write past the old size is
refused by the agent); a resync is refused; disable keeping points + protect replicates the disk at
its new size (a write past the old size then reaches the replica) and clears the alert."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.blockclient import BlockClient
from agent.service import AgentService
from common import errors, tls
from common.config import AgentConfig, DiskConfig, MTConfig, PSConfig
from common.http import ApiClient
from mt.service import MTService
from ps.service import PSService
from tests.conftest import CSEnv, start_cs, stop_cs

MiB = 1 << 20
SIZE = 4 * MiB
FAST: dict[str, Any] = dict(heartbeat_interval_s=0.3, settings_wait_s=0.5, request_timeout_s=5.0,
                            retry_max_backoff_s=0.2)


async def until(what: str, check: Callable[[], Awaitable[Any]], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.1)


class Lab:
    def __init__(self, env: CSEnv, admin: ApiClient, agent: AgentService, mt: MTService, image: Path) -> None:
        self.env, self.admin, self.agent, self.mt, self.image = env, admin, agent, mt, image
        self.machine_id = self.disk_id = ""

    async def disk(self) -> dict[str, Any]:
        return next(d for d in (await self.admin.get("/v1/disks"))["items"] if d["disk_id"] == self.disk_id)

    async def alerts(self) -> list[dict[str, Any]]:
        items = (await self.admin.get("/v1/alerts?active=1&limit=1000"))["items"]
        return [a for a in items if a["code"] == "disk_resized"]

    async def protected(self, generation: int, size: int) -> dict[str, Any] | None:
        d = await self.disk()
        done = (d["generation"], d["state"], d["size_bytes"]) == (generation, "protected", size) \
            and (d["last_resync"] or {}).get("state") == "done"
        return d if done else None


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    env = await start_cs(tmp_path / "cs")
    common = dict(cs_url=env.url, passphrase_file=env.passphrase_file, address="127.0.0.1", **FAST)
    mt = MTService(MTConfig(data_dir=tmp_path / "mt", host_id="mt1", data_port=0, control_port=0, **common))
    ps = PSService(PSConfig(data_dir=tmp_path / "ps", host_id="ps1", data_port=0, **common), poll_interval_s=0.1)
    image = tmp_path / "disk0.img"
    image.write_bytes(b"A" * 65536)
    os.truncate(image, SIZE)
    cfg = AgentConfig(data_dir=tmp_path / "agent", host_id="m1", socket_path=tmp_path / "agent.sock",
                      disks=[DiskConfig("disk0", image, SIZE)], batch_max_ms=50, **common)
    agent = AgentService(cfg)
    admin = ApiClient(env.url, tls.client_context(env.admin_files), timeout_s=15.0)
    s = Lab(env, admin, agent, mt, image)
    started: list[Any] = []
    try:
        for svc in (mt, ps, agent):
            await svc.start()
            started.append(svc)
        s.machine_id = agent.machine_id
        s.disk_id = (await admin.post(f"/v1/machines/{s.machine_id}/protect"))["disks"][0]["disk_id"]
        await until("protected", lambda: s.protected(1, SIZE))
        yield s
    finally:
        for svc in reversed(started):
            await svc.stop()
        await admin.close()
        await stop_cs(env)


@pytest.mark.timeout(60)
async def test_a_grown_disk_stops_until_disabled_and_enabled_again(lab: Lab) -> None:
    os.truncate(lab.image, 2 * SIZE)  # the disk is resized behind the agent's back
    disk = await until("resync-required", lambda: _state(lab, "resync-required"))
    assert (disk["size_bytes"], disk["generation"]) == (SIZE, 1)
    (alert,) = await lab.alerts()
    assert alert["severity"] == "critical" and "--keep-points" in alert["message"]
    async with BlockClient(lab.agent.cfg.socket_path) as client:
        with pytest.raises(errors.DrlabError):
            await client.write(0, 1, SIZE, b"past the old size")  # refused: never sent
    with pytest.raises(errors.Conflict, match="disable protection keeping its recovery points"):
        await lab.admin.post(f"/v1/disks/{lab.disk_id}/resync", {"reason": "user"})
    await until("agent stopped replicating", lambda: _no_pipeline(lab))

    job = await lab.admin.post(f"/v1/machines/{lab.machine_id}/disable-protection", {"keep_points": True})
    assert (await lab.env.admin.wait_job(job["job_id"], timeout_s=20.0, poll_s=0.1))["state"] == "succeeded"
    await lab.admin.post(f"/v1/machines/{lab.machine_id}/protect")
    done = await until("protected at the new size", lambda: lab.protected(2, 2 * SIZE), timeout_s=30.0)
    assert done["last_resync"]["mode"] == "checksum"  # against the kept replica
    assert await lab.alerts() == []
    assert lab.agent.disks[0].size_bytes == 2 * SIZE
    data = b"Z" * 4096
    async with BlockClient(lab.agent.cfg.socket_path) as client:
        await client.write(0, 2, SIZE + 8192, data)  # past the old size: now taken and replicated
    replica = lab.mt.cfg.data_dir / "replicas" / f"{lab.disk_id}.img"

    async def arrived() -> bool:
        return await asyncio.to_thread(_read, replica, SIZE + 8192, len(data)) == data

    await until("the write past the old size on the replica", arrived)
    assert replica.stat().st_size == 2 * SIZE


async def _state(lab: Lab, state: str) -> dict[str, Any] | None:
    d = await lab.disk()
    return d if d["state"] == state else None


async def _no_pipeline(lab: Lab) -> bool:
    return lab.agent.replicator is not None and not lab.agent.replicator.pipelines


def _read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)
