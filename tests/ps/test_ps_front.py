"""The PS data port behind the threaded TLS front (ps/front.py, common/tlsfront.py): batch PUTs
served natively with the same checks and answers as the data app, everything else relayed."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import http.client
import json
import ssl
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from psbatches import make_batch

from common import tls
from common.config import PSConfig
from common.daemon import bind_socket
from common.frontproto import PEER_CERT_HEADER, Limits
from common.http import FRONTED
from common.tlsfront import encode_peercert
from ps import check
from ps.cache import BatchCache
from ps.front import DataFront
from ps.ingest import IngestContext, build_app
from ps.state import Registry
from tests.tlsraw import raw_exchange

DISK = "ab" * 16
UNKNOWN = "cd" * 16
MACHINE_A = "a1" * 16
MACHINE_B = "b2" * 16
MAX = 64 * 1024


@dataclass
class PS:
    port: int
    cache: BatchCache
    registry: Registry
    ctx: dict[str, ssl.SSLContext]
    serials: dict[str, int]
    woken: list[str]
    front: DataFront

    def conn(self, who: str) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx[who], timeout=10)

    async def call(self, who: str, method: str, path: str, body: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, http.client.HTTPResponse]:
        return await asyncio.to_thread(exchange, self.conn(who), method, path, body, headers)

    async def put(self, who: str, gen: int, seq: int, data: bytes, disk: str = DISK) -> tuple[int, Any]:
        status, body, _ = await self.call(who, "PUT", f"/v1/disks/{disk}/batches/{gen}/{seq}", data)
        return status, body

    async def raw(self, who: str, data: bytes) -> bytes:
        """The front's answer to ``data`` on a new TLS connection (read until the answer is whole: the
        front's linger before it closes a refused connection is not waited out)."""
        return await asyncio.to_thread(functools.partial(raw_exchange, self.port, self.ctx[who], data,
                                                         until_answered=True))

    def cached(self) -> list[str]:
        d = self.cache.root / DISK
        return sorted(p.name for p in d.iterdir()) if d.exists() else []


def exchange(conn: http.client.HTTPSConnection, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any, http.client.HTTPResponse]:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    try:
        return resp.status, json.loads(raw), resp
    except ValueError:
        return resp.status, raw.decode(), resp


@pytest.fixture
async def ps(tmp_path: Path) -> AsyncIterator[PS]:
    ca = tls.make_ca()
    files: dict[str, tls.IdentityFiles] = {}
    for who, cid, role in (("ps", "22" * 16, "ps"), ("a", MACHINE_A, "agent"), ("b", MACHINE_B, "agent"),
                           ("admin", "ad" * 16, "admin"), ("mt", "44" * 16, "mt"), ("revoked", MACHINE_A, "agent")):
        files[who] = tls.IdentityFiles(tmp_path / "ids" / who)
        tls.issue_local(*ca, files[who], component_id=cid, role=role, hosts=["127.0.0.1"], meta={"component_id": cid})
    ctx = {who: tls.client_context(f) for who, f in files.items() if who != "ps"}
    ctx["anon"] = tls.client_context(None, ca_pem=ca[1])
    serials = {who: int(tls.serial_hex(f.cert.read_bytes()), 16) for who, f in files.items()}
    registry = Registry()
    registry.apply_document({"revoked_serials": [serials["revoked"]], "disks": [{
        "disk_id": DISK, "machine_id": MACHINE_A, "generation": 2, "size_bytes": 1 << 20, "mt_url": "",
        "mt_control_url": "", "key_epoch": 1, "key_b64": base64.b64encode(bytes(32)).decode()}]})
    pool = ThreadPoolExecutor(2)
    cache = BatchCache(tmp_path / "cache", 1 << 30, pool)
    cache.load()
    woken: list[str] = []
    cfg = PSConfig(data_dir=tmp_path, max_batch_bytes=MAX)
    ictx = IngestContext(cfg, registry, cache, pool, woken.append)
    app = build_app(ictx)
    app[FRONTED] = True
    runner = web.AppRunner(app)
    await runner.setup()
    front = DataFront(ictx, Limits(relay_max_bytes=MAX, head_timeout_s=0.5, io_timeout_s=0.5,
                                   min_body_rate=1 << 30))
    sock = bind_socket("127.0.0.1", 0)
    await front.start(runner, sock, tls.server_context(files["ps"]))
    try:
        yield PS(sock.getsockname()[1], cache, registry, ctx, serials, woken, front)
    finally:
        await front.stop()
        sock.close()
        await runner.cleanup()
        pool.shutdown()


async def test_batch_put_end_to_end_with_keep_alive(ps: PS) -> None:
    data = make_batch(DISK, 2, 1)
    path = f"/v1/disks/{DISK}/batches/2/1"

    def run() -> list[tuple[int, Any]]:
        conn = ps.conn("a")
        out = [exchange(conn, "PUT", path, data)[:2], exchange(conn, "PUT", path, data)[:2],
               exchange(conn, "GET", f"/v1/disks/{DISK}/status")[:2]]
        first = conn.sock
        out.append(exchange(conn, "PUT", f"/v1/disks/{DISK}/batches/2/2", make_batch(DISK, 2, 2))[:2])
        assert conn.sock is first, "one connection for all four"
        return out

    created, again, status, second = await asyncio.to_thread(run)
    assert created == (201, {"ps_durable": 1, "mt_received": 0, "mt_applied": 0})
    assert again == (200, {"ps_durable": 1, "mt_received": 0, "mt_applied": 0})
    assert status[0] == 200 and status[1]["ps_durable"] == 1 and status[1]["backlog_batches"] == 1
    assert second[0] == 201
    assert ps.cached() == ["00000002-000000000001.batch", "00000002-000000000002.batch"]
    assert (ps.cache.root / DISK / ps.cached()[0]).read_bytes() == data
    assert ps.woken == [DISK, DISK]


async def test_refusals_match_the_data_app(ps: PS) -> None:
    batch = make_batch(DISK, 2, 1)
    cases = [("mt", 403, "forbidden"), ("admin", 403, "forbidden"), ("b", 403, "forbidden"),
             ("anon", 401, "unauthorized"), ("revoked", 401, "unauthorized")]
    for who, status, code in cases:
        got = await ps.put(who, 2, 1, batch)
        assert (got[0], got[1]["code"]) == (status, code), who
    got = await ps.put("a", 2, 1, make_batch(UNKNOWN, 2, 1), disk=UNKNOWN)
    assert (got[0], got[1]["code"]) == (404, "not_found")
    got = await ps.put("a", 1, 1, make_batch(DISK, 1, 1))
    assert (got[0], got[1]["code"]) == (409, "stale_generation")
    got = await ps.put("a", 2, 1, batch[:-1])
    assert (got[0], got[1]["code"]) == (400, "malformed_batch")
    assert ps.cached() == [] and ps.woken == []


async def test_a_draining_disk_is_503_and_a_throttled_cache_507_with_retry_after(ps: PS) -> None:
    disk = ps.registry.disks[DISK]
    ps.registry.disks[DISK] = dataclasses.replace(disk, draining=True)
    status, body, resp = await ps.call("a", "PUT", f"/v1/disks/{DISK}/batches/2/1", make_batch(DISK, 2, 1))
    assert (status, body["code"]) == (503, "unavailable")
    ps.registry.disks[DISK] = disk
    ps.cache.max_bytes = 10
    status, body, resp = await ps.call("a", "PUT", f"/v1/disks/{DISK}/batches/2/1", make_batch(DISK, 2, 1))
    assert (status, body["code"]) == (507, "throttled") and int(resp.getheader("Retry-After") or 0) >= 1
    assert ps.cached() == []


async def test_oversized_body_is_413_before_it_is_read(ps: PS) -> None:
    head = f"PUT /v1/disks/{DISK}/batches/2/1 HTTP/1.1\r\nHost: ps\r\nContent-Length: {MAX + 1}\r\n\r\n"
    out = await ps.raw("a", head.encode())  # no body sent: the answer comes anyway
    assert out.startswith(b"HTTP/1.1 413 ") and b'"too_large"' in out
    assert ps.cached() == []


@pytest.mark.parametrize("data, status", [
    (f"PUT /v1/disks/{DISK}/batches/2/1 HTTP/1.1\r\nHost: ps\r\n\r\n".encode(), b"411"),
    (b"PUT /v1/disks/x HTTP/1.1 extra\r\n\r\n", b"400"),
    (f"PUT /v1/disks/{DISK}/batches/2/1 HTTP/1.1\r\nHost ps\r\nContent-Length: 1\r\n\r\nx".encode(), b"400"),
    (f"PUT /v1/disks/{DISK}/batches/2/1 HTTP/1.1\r\nContent-Length: 100\r\n\r\nslow".encode(), b"408"),
    (b"GET /v1/disks/", b"408"),
])
async def test_bad_or_slow_requests(ps: PS, data: bytes, status: bytes) -> None:
    out = await ps.raw("a", data)
    assert out.startswith(b"HTTP/1.1 " + status + b" ") and b'"code"' in out
    assert ps.cached() == []


async def test_relayed_routes(ps: PS) -> None:
    for who in ("anon", "a"):
        status, body, _ = await ps.call(who, "GET", "/")
        assert (status, body["code"], body["message"]) == (400, "bad_request", check.ROOT_MESSAGE)
    status, text, resp = await ps.call("admin", "GET", "/metrics")
    assert status == 200 and "drlab_ps" in text and resp.getheader("Content-Type", "").startswith("text/plain")
    assert (await ps.call("a", "GET", "/metrics"))[0] == 403
    assert (await ps.call("anon", "GET", "/metrics"))[0] == 401
    status, body, _ = await ps.call("admin", "GET", "/v1/check")
    assert status == 200 and body["caller_role"] == "admin"
    assert (await ps.call("a", "GET", "/no/such/path"))[0] == 404
    assert (await ps.call("a", "DELETE", f"/v1/disks/{DISK}/batches/2/1"))[0] == 405


async def test_a_peer_cert_header_from_the_client_is_not_believed(ps: PS) -> None:
    admin = encode_peercert({"subject": [[["commonName", "ad" * 16]], [["organizationalUnitName", "admin"]]],
                             "serialNumber": "01"}) or ""
    owner = encode_peercert({"subject": [[["commonName", MACHINE_A]], [["organizationalUnitName", "agent"]]],
                             "serialNumber": "01"}) or ""
    assert (await ps.call("anon", "GET", "/metrics", headers={PEER_CERT_HEADER: admin}))[0] == 401
    assert (await ps.call("a", "GET", "/metrics", headers={PEER_CERT_HEADER: admin}))[0] == 403
    assert (await ps.call("b", "GET", f"/v1/disks/{DISK}/status", headers={PEER_CERT_HEADER: owner}))[0] == 403
    status, _, _ = await ps.call("b", "PUT", f"/v1/disks/{DISK}/batches/2/1", make_batch(DISK, 2, 1),
                                 headers={PEER_CERT_HEADER: owner})
    assert status == 403 and ps.cached() == []


async def test_the_app_socket_is_private(ps: PS) -> None:
    assert ps.front.path is not None
    assert ps.front.path.stat().st_mode & 0o777 == 0o600
    assert ps.front.path.parent.stat().st_mode & 0o777 == 0o700
