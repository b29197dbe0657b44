"""The agent against the real CS (fixture ``cs_env``), with the real PS and MT: register by
passphrase, report disks, get protected by the admin, replicate, reach 'protected'."""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agentfakes import BlockClient, wait_until

from agent.service import AgentService
from common.config import AgentConfig, DiskConfig, MTConfig, PSConfig
from common.wire import blockio as bio

ps_service = pytest.importorskip("ps.service")
mt_service = pytest.importorskip("mt.service")

SIZE = 2 << 20
FAST: dict[str, Any] = dict(heartbeat_interval_s=0.5, settings_wait_s=0.5,
                            request_timeout_s=5.0, retry_max_backoff_s=0.2)


@pytest.fixture
def env(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("cs_env")
    except pytest.FixtureLookupError:
        pytest.skip("the cs_env fixture (tests/conftest.py) is not available yet")


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def component_cfg(cls: type[Any], env: Any, tmp_path: Path, name: str, **extra: Any) -> Any:
    return cls(data_dir=tmp_path / name, cs_url=env.url, passphrase_file=env.passphrase_file, host_id=name,
               **FAST, **extra)


@pytest.fixture
async def services(env: Any, tmp_path: Path) -> AsyncIterator[tuple[Any, AgentService, Any]]:
    mt = mt_service.MTService(component_cfg(MTConfig, env, tmp_path, "mt1", data_port=0, control_port=0))
    await mt.start()
    ps = ps_service.PSService(component_cfg(PSConfig, env, tmp_path, "ps1", data_port=0))
    await ps.start()
    source = bytearray(SIZE)
    source[4096:8192] = random.Random(3).randbytes(4096)
    (tmp_path / "disk0.img").write_bytes(bytes(source))
    agent = AgentService(component_cfg(AgentConfig, env, tmp_path, "m1", socket_path=tmp_path / "a.sock",
                                       disks=[DiskConfig("disk0", tmp_path / "disk0.img", SIZE)],
                                       batch_max_ms=20, resync_chunk_bytes=256 << 10))
    await agent.start()
    try:
        yield env, agent, mt
    finally:
        await agent.stop()
        await ps.stop()
        await mt.stop()


async def test_register_protect_replicate_with_the_real_cs(services: tuple[Any, AgentService, Any],
                                                           tmp_path: Path) -> None:
    env, agent, mt = services
    components = await maybe_await(env.admin.components())
    items = components["items"] if isinstance(components, dict) else components
    assert any(c["component_id"] == agent.machine_id and c["role"] == "agent" for c in items)
    await maybe_await(env.admin.protect(agent.machine_id))
    client = await BlockClient.connect(tmp_path / "a.sock")
    rng = random.Random(9)
    for wnum in range(1, 101):
        resp, _ = await client.write(0, wnum, rng.randrange(SIZE - 4096), rng.randbytes(4096))
        assert resp.status == bio.Status.OK
    await client.close()
    await wait_until(lambda: agent.disk_status("disk0")["state"] == "protected", 40, "protected")
    status = agent.disk_status("disk0")
    replica = tmp_path / "mt1" / "replicas" / f"{status['disk_id']}.img"
    source = (tmp_path / "disk0.img")
    await wait_until(lambda: replica.exists() and replica.read_bytes() == source.read_bytes(), 30, "replica")

    async def cs_says_protected() -> bool:
        disks = await maybe_await(env.admin.disks())
        items = disks["items"] if isinstance(disks, dict) else disks
        return any(d["disk_id"] == status["disk_id"] and d["state"] == "protected" for d in items)

    for _ in range(100):
        if await cs_says_protected():
            break
        await asyncio.sleep(0.1)
    assert await cs_says_protected()
