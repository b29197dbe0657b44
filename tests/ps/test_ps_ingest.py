"""The PS data app over real TLS, with identities from a local CA (no CS needed)."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from psbatches import corrupt_checksum, make_batch

from common import tls
from common.config import PSConfig
from ps.cache import BatchCache
from ps.ingest import IngestContext, build_app
from ps.state import Registry

DISK = "ab" * 16
UNKNOWN = "cd" * 16
MACHINE_A = "a1" * 16
MACHINE_B = "b2" * 16
SIZE = 1 << 20


@dataclass
class Server:
    url: str
    cache: BatchCache
    registry: Registry
    contexts: dict[str, ssl.SSLContext]
    woken: list[str]

    async def call(self, who: str, method: str, path: str, data: bytes | None = None) -> tuple[int, Any, Any]:
        connector = aiohttp.TCPConnector(ssl=self.contexts[who])
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.request(method, self.url + path, data=data) as resp:
                return resp.status, await resp.json(content_type=None), resp.headers

    async def put(self, who: str, gen: int, seq: int, data: bytes, disk: str = DISK) -> tuple[int, Any, Any]:
        return await self.call(who, "PUT", f"/v1/disks/{disk}/batches/{gen}/{seq}", data)

    def cached(self) -> list[str]:
        d = self.cache.root / DISK
        return sorted(p.name for p in d.iterdir()) if d.exists() else []


def identity(ca: tuple[bytes, bytes], tmp: Path, name: str, cid: str, role: str) -> tls.IdentityFiles:
    files = tls.IdentityFiles(tmp / name)
    tls.issue_local(*ca, files, component_id=cid, role=role, hosts=["127.0.0.1"], meta={"component_id": cid})
    return files


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    ca = tls.make_ca()
    ps_files = identity(ca, tmp_path, "ps", "22" * 16, "ps")
    contexts = {"a": tls.client_context(identity(ca, tmp_path, "a", MACHINE_A, "agent")),
                "b": tls.client_context(identity(ca, tmp_path, "b", MACHINE_B, "agent")),
                "admin": tls.client_context(identity(ca, tmp_path, "admin", "ad" * 16, "admin")),
                "mt": tls.client_context(identity(ca, tmp_path, "mt", "44" * 16, "mt")),
                "anon": tls.client_context(None, ca_pem=ca[1])}
    registry = Registry()
    registry.apply_document({"disks": [{
        "disk_id": DISK, "machine_id": MACHINE_A, "generation": 2, "size_bytes": SIZE, "mt_url": "",
        "mt_control_url": "", "key_epoch": 1, "key_b64": base64.b64encode(bytes(32)).decode()}]})
    pool = ThreadPoolExecutor(2)
    probe = make_batch(DISK, 2, 1)
    cache = BatchCache(tmp_path / "cache", 3 * len(probe) + 10, pool)
    cache.load()
    woken: list[str] = []
    cfg = PSConfig(data_dir=tmp_path, max_batch_bytes=64 * 1024)
    runner = web.AppRunner(build_app(IngestContext(cfg, registry, cache, pool, woken.append)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context(ps_files))
    await site.start()
    try:
        yield Server(f"https://127.0.0.1:{runner.addresses[0][1]}", cache, registry, contexts, woken)
    finally:
        await runner.cleanup()
        pool.shutdown()


async def test_valid_batch_is_cached_and_acknowledged(server: Server) -> None:
    data = make_batch(DISK, 2, 1)
    status, body, _ = await server.put("a", 2, 1, data)
    assert status == 201
    assert body == {"ps_durable": 1, "mt_received": 0, "mt_applied": 0}
    assert server.cached() == ["00000002-000000000001.batch"]
    assert (server.cache.root / DISK / server.cached()[0]).read_bytes() == data
    assert server.woken == [DISK]


async def test_resend_is_idempotent_and_other_checksum_conflicts(server: Server) -> None:
    data = make_batch(DISK, 2, 1)
    assert (await server.put("a", 2, 1, data))[0] == 201
    status, body, _ = await server.put("a", 2, 1, data)
    assert (status, body) == (200, {"ps_durable": 1, "mt_received": 0, "mt_applied": 0})
    status, body, _ = await server.put("a", 2, 1, make_batch(DISK, 2, 1, data=b"other"))
    assert status == 409 and body["code"] == "checksum_mismatch"
    assert (server.cache.root / DISK / server.cached()[0]).read_bytes() == data


def malformed_cases() -> dict[str, tuple[int, int, bytes]]:
    good = make_batch(DISK, 2, 1)
    return {
        "bad checksum": (2, 1, corrupt_checksum(good)),
        "truncated": (2, 1, good[:-100]),
        "empty": (2, 1, b""),
        "seq differs from URL": (2, 2, good),
        "generation differs from URL": (3, 1, good),
        "other disk in header": (2, 1, make_batch(UNKNOWN, 2, 1)),
        "record beyond the disk": (2, 1, make_batch(DISK, 2, 1, offset=SIZE - 100, data=b"y" * 200)),
    }


@pytest.mark.parametrize("case", list(malformed_cases()))
async def test_malformed_batch_is_refused_and_not_cached(server: Server, case: str) -> None:
    gen, seq, data = malformed_cases()[case]
    status, body, _ = await server.put("a", gen, seq, data)
    assert status == 400 and body["code"] == "malformed_batch", (case, body)
    assert server.cached() == [] and server.woken == []


async def test_no_client_certificate_is_401(server: Server) -> None:
    status, body, _ = await server.put("anon", 2, 1, make_batch(DISK, 2, 1))
    assert status == 401 and body["code"] == "unauthorized"
    assert server.cached() == []


async def test_root_is_a_bad_request(server: Server) -> None:
    for who in ("anon", "a"):
        status, body, _ = await server.call(who, "GET", "/")
        assert status == 400 and body["code"] == "bad_request"


async def test_wrong_caller_wrong_disk_wrong_role(server: Server) -> None:
    status, body, _ = await server.put("b", 2, 1, make_batch(DISK, 2, 1))
    assert status == 403 and body["code"] == "forbidden"
    status, body, _ = await server.put("mt", 2, 1, make_batch(DISK, 2, 1))
    assert status == 403 and body["code"] == "forbidden"
    status, body, _ = await server.put("a", 2, 1, make_batch(UNKNOWN, 2, 1), disk=UNKNOWN)
    assert status == 404 and body["code"] == "not_found"
    status, body, _ = await server.put("a", 2, 1, make_batch(DISK, 2, 1), disk="not-a-disk")
    assert status == 404
    assert server.cached() == []


async def test_stale_generation_is_409(server: Server) -> None:
    status, body, _ = await server.put("a", 1, 1, make_batch(DISK, 1, 1))
    assert status == 409 and body["code"] == "stale_generation"
    assert (await server.put("a", 3, 1, make_batch(DISK, 3, 1)))[0] == 201
    status, body, _ = await server.put("a", 2, 5, make_batch(DISK, 2, 5))
    assert status == 409 and body["code"] == "stale_generation", "a newer generation from the agent fences"
    assert server.cached() == ["00000003-000000000001.batch"]


async def test_full_cache_is_507_with_retry_after(server: Server) -> None:
    for seq in (1, 2, 3):
        assert (await server.put("a", 2, seq, make_batch(DISK, 2, seq)))[0] == 201
    status, body, headers = await server.put("a", 2, 4, make_batch(DISK, 2, 4))
    assert status == 507 and body["code"] == "throttled"
    assert int(headers["Retry-After"]) >= 1
    assert len(server.cached()) == 3


async def test_body_too_large_is_413(server: Server) -> None:
    data = make_batch(DISK, 2, 1, data=b"z" * 70_000)
    status, body, _ = await server.put("a", 2, 1, data)
    assert status == 413 and body["code"] == "too_large"
    assert server.cached() == []


async def test_status_for_owner_and_admin_only(server: Server) -> None:
    await server.put("a", 2, 1, make_batch(DISK, 2, 1))
    await server.put("a", 2, 2, make_batch(DISK, 2, 2))
    server.registry.progress_of(DISK).observe_mt(2, 1, 1)
    for who in ("a", "admin"):
        status, body, _ = await server.call(who, "GET", f"/v1/disks/{DISK}/status")
        assert status == 200
        assert body["generation"] == 2 and body["ps_durable"] == 2
        assert (body["mt_received"], body["mt_applied"], body["backlog_batches"]) == (1, 1, 2)
        assert body["backlog_bytes"] > 0
    assert (await server.call("b", "GET", f"/v1/disks/{DISK}/status"))[0] == 403
    assert (await server.call("anon", "GET", f"/v1/disks/{DISK}/status"))[0] == 401
    assert (await server.call("a", "GET", f"/v1/disks/{UNKNOWN}/status"))[0] == 404
