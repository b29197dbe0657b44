"""PSService with the real CS (cs_env) and the real MT, all in-process over real TLS: the PS
registers, learns its disk from its settings, enforces the data API's rules, and uploads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from psbatches import corrupt_checksum, make_batch

from common import auth, component, tls
from common.config import MTConfig, PSConfig
from common.http import ApiClient
from mt.service import MTService
from ps.service import PSService

SIZE = 1 << 20
BATCH_DATA = 16 * 1024


@dataclass
class Stack:
    cs_env: Any
    ps: PSService
    mt: MTService
    disk_id: str
    contexts: dict[str, Any]
    tmp: Path

    async def call(self, who: str, method: str, path: str, data: bytes | None = None) -> tuple[int, Any, Any]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.contexts[who])) as session:
            async with session.request(method, f"https://127.0.0.1:{self.ps.data_port}{path}", data=data) as resp:
                return resp.status, await resp.json(content_type=None), resp.headers

    async def put(self, who: str, gen: int, seq: int, data: bytes, disk: str | None = None) -> tuple[int, Any, Any]:
        return await self.call(who, "PUT", f"/v1/disks/{disk or self.disk_id}/batches/{gen}/{seq}", data)

    def batch(self, gen: int, seq: int, **kw: Any) -> bytes:
        return make_batch(self.disk_id, gen, seq, **kw)

    def cached_names(self) -> list[str]:
        d = self.ps.cfg.data_dir / "cache" / self.disk_id
        return sorted(p.name for p in d.iterdir()) if d.exists() else []


async def wait_until(pred: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def register(cs_env: Any, tmp: Path, role: str, host_id: str) -> tuple[tls.IdentityFiles, str]:
    files = tls.IdentityFiles(tmp / f"{role}-{host_id}")
    meta = await component.register(cs_env.url, auth.read_passphrase_file(str(cs_env.passphrase_file)),
                                    role=role, host_id=host_id, address="127.0.0.1", ports={}, files=files)
    return files, str(meta["component_id"])


async def agent_disk(cs_env: Any, files: tls.IdentityFiles) -> str:
    client = ApiClient(cs_env.url, tls.client_context(files), timeout_s=10.0)
    try:
        reply = await client.put("/v1/machines/self/disks", {"disks": [{"name": "disk0", "size_bytes": SIZE}]})
    finally:
        await client.close()
    return str(reply["disks"][0]["disk_id"])


async def cs_call(cs_env: Any, files: tls.IdentityFiles, method: str, path: str, body: Any = None) -> Any:
    client = ApiClient(cs_env.url, tls.client_context(files), timeout_s=10.0)
    try:
        return (await client.request(method, path, json_body=body))[1]
    finally:
        await client.close()


@pytest.fixture
def cs_env_or_skip(request: pytest.FixtureRequest) -> Any:
    """The CS's ``cs_env`` fixture (tests/conftest.py); these tests skip until it exists."""
    try:
        return request.getfixturevalue("cs_env")
    except pytest.FixtureLookupError:
        pytest.skip("the cs_env fixture (tests/conftest.py) is not there yet")


@pytest.fixture
async def stack(cs_env_or_skip: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    cs_env = cs_env_or_skip
    common = {"cs_url": cs_env.url, "passphrase_file": cs_env.passphrase_file, "address": "127.0.0.1",
              "heartbeat_interval_s": 0.5, "settings_wait_s": 1.0, "retry_max_backoff_s": 0.3,
              "request_timeout_s": 5.0}
    mt = MTService(MTConfig(data_dir=tmp_path / "mt", host_id="mt1", data_port=0, control_port=0, **common))
    ps = PSService(PSConfig(data_dir=tmp_path / "ps", host_id="ps1", data_port=0,
                            cache_max_bytes=4 * (BATCH_DATA + 1024), **common), poll_interval_s=0.1)
    await mt.start()
    await ps.start()
    try:
        a_files, machine_id = await register(cs_env, tmp_path, "agent", "m1")
        b_files, _ = await register(cs_env, tmp_path, "agent", "m2")
        disk_id = await agent_disk(cs_env, a_files)
        await cs_env.admin.protect(machine_id)
        deadline = time.monotonic() + 20
        while disk_id not in ps.registry.disks:
            assert time.monotonic() < deadline, "the PS never got the disk in its settings"
            await ps.refresh_settings()
            await asyncio.sleep(0.1)
        ca_pem = a_files.ca.read_bytes()
        contexts = {"a": tls.client_context(a_files), "b": tls.client_context(b_files),
                    "anon": tls.client_context(None, ca_pem=ca_pem), "a_files": a_files}
        yield Stack(cs_env, ps, mt, disk_id, contexts, tmp_path)
    finally:
        await ps.stop()
        await mt.stop()


async def test_agent_settings_point_at_this_ps(stack: Stack) -> None:
    doc = await cs_call(stack.cs_env, stack.contexts["a_files"], "GET", "/v1/settings?version=-1&wait_s=0")
    disk = next(d for d in doc["document"]["disks"] if d["disk_id"] == stack.disk_id)
    assert disk["ps_url"] == f"https://127.0.0.1:{stack.ps.data_port}"
    comps = await stack.cs_env.admin.components()
    assert any(c["component_id"] == stack.ps.component_id and c["role"] == "ps" for c in comps)


async def test_valid_batches_are_acked_uploaded_and_applied(stack: Stack) -> None:
    for seq in (1, 2, 3):
        status, body, _ = await stack.put("a", 1, seq, stack.batch(1, seq, offset=seq * 4096, data=b"q" * 4096))
        assert status == 201 and body["ps_durable"] == seq
    await wait_until(lambda: stack.ps.registry.progress_of(stack.disk_id).mt_of(1) == (3, 3)
                     and stack.cached_names() == [])
    status, body, _ = await stack.put("a", 1, 4, stack.batch(1, 4))
    assert status == 201 and body["mt_applied"] >= 3
    replica = (stack.mt.cfg.data_dir / "replicas" / f"{stack.disk_id}.img").read_bytes()
    assert replica[4096:4 * 4096] == b"q" * (3 * 4096)


async def test_refusals_are_json_and_cache_nothing(stack: Stack) -> None:
    good = stack.batch(1, 1)
    cases = {
        "bad checksum": (1, 1, corrupt_checksum(good)),
        "truncated": (1, 1, good[:-64]),
        "header/URL mismatch": (1, 2, good),
        "record beyond the disk": (1, 1, stack.batch(1, 1, offset=SIZE - 10, data=b"y" * 20)),
    }
    for name, (gen, seq, data) in cases.items():
        status, body, _ = await stack.put("a", gen, seq, data)
        assert (status, body["code"]) == (400, "malformed_batch"), name
    status, body, _ = await stack.put("anon", 1, 1, good)
    assert (status, body["code"]) == (401, "unauthorized")
    status, body, _ = await stack.call("anon", "GET", "/")
    assert (status, body["code"]) == (400, "bad_request")
    status, body, _ = await stack.put("b", 1, 1, good)
    assert (status, body["code"]) == (403, "forbidden")
    status, body, _ = await stack.put("a", 1, 1, make_batch("ee" * 16, 1, 1), disk="ee" * 16)
    assert (status, body["code"]) == (404, "not_found")
    assert stack.cached_names() == [] and stack.ps.registry.progress_of(stack.disk_id).ps_durable == 0


async def test_stale_generation_after_a_resync(stack: Stack) -> None:
    reply = await cs_call(stack.cs_env, stack.contexts["a_files"], "POST", f"/v1/disks/{stack.disk_id}/resync",
                          {"reason": "user"})
    new_gen = int(reply["generation"])
    assert new_gen >= 2
    deadline = time.monotonic() + 20
    while stack.ps.registry.generation(stack.disk_id) < new_gen:
        assert time.monotonic() < deadline
        await stack.ps.refresh_settings()
        await asyncio.sleep(0.1)
    status, body, _ = await stack.put("a", new_gen - 1, 1, stack.batch(new_gen - 1, 1))
    assert (status, body["code"]) == (409, "stale_generation")
    assert stack.cached_names() == []


async def test_full_cache_throttles_with_retry_after(stack: Stack) -> None:
    await stack.mt.stop()  # nothing drains the cache any more
    statuses = []
    for seq in range(1, 8):
        status, body, headers = await stack.put("a", 1, seq, stack.batch(1, seq, data=b"f" * BATCH_DATA))
        statuses.append(status)
        if status == 507:
            assert body["code"] == "throttled" and int(headers["Retry-After"]) >= 1
            break
    assert statuses[-1] == 507 and statuses[:-1] == [201] * (len(statuses) - 1)
    assert len(stack.cached_names()) == len(statuses) - 1
