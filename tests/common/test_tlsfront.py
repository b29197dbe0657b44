"""The threaded TLS front (common/tlsfront.py): native routes, relaying to a unix-socket app,
keep-alive, limits and timeouts, and the peer-certificate header only the front may set."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

from common import errors, tls
from common.daemon import bind_socket
from common.frontproto import PEER_CERT_HEADER, Head, Limits
from common.http import FRONTED, identity, make_app
from common.tlsfront import TLSFront, encode_peercert
from tests.tlsraw import raw_exchange

MAX = 1000


@dataclass
class Echo:
    """A native route: PUT /native/{anything}; refuses bodies over MAX and the path /native/refuse."""
    seen: list[tuple[str, int]] = field(default_factory=list)
    path: str = ""

    def admit(self, length: int) -> None:
        if self.path.endswith("/refuse"):
            raise errors.Conflict("refused before the body")
        if length > MAX:
            raise errors.TooLarge(f"{length} > {MAX}")

    def finish(self, body: bytearray) -> tuple[int, Any]:
        self.seen.append((self.path, len(body)))
        return 201, {"bytes": len(body), "first": body[:1].decode()}


@dataclass
class World:
    port: int
    ctx: dict[str, ssl.SSLContext]
    echo: Echo
    front: TLSFront
    peer: dict[str, str]  # who -> the header value the front would send for them

    def conn(self, who: str) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx[who], timeout=10)

    def raw(self, who: str, data: bytes, wait_s: float = 5.0, *, until_answered: bool = False) -> bytes:
        """Send ``data`` on a new TLS connection; everything received until it closes (or ``wait_s``);
        ``until_answered``: until one whole answer is in (tests/tlsraw.py)."""
        return raw_exchange(self.port, self.ctx[who], data, wait_s, until_answered=until_answered)


def call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw


async def whoami(request: web.Request) -> web.Response:
    ident = identity(request)
    return web.json_response({"id": ident.component_id, "role": ident.role, "got_header":
                              request.headers.get(PEER_CERT_HEADER) is not None})


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ca = tls.make_ca()
    files = {}
    for who, role in (("server", "ps"), ("agent", "agent"), ("admin", "admin")):
        files[who] = tls.IdentityFiles(tmp_path / who)
        tls.issue_local(*ca, files[who], component_id=who * 2, role=role, hosts=["127.0.0.1"],
                        meta={"component_id": who})
    ctx = {who: tls.client_context(files[who]) for who in ("agent", "admin")}
    ctx["anon"] = tls.client_context(None, ca_pem=ca[1])
    app = make_app()
    app[FRONTED] = True
    app.router.add_get("/whoami", whoami)
    app.router.add_put("/put", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    path = tmp_path / "app.sock"
    await web.UnixSite(runner, str(path)).start()
    echo = Echo()

    def native(head: Head, peercert: dict[str, Any]) -> Echo | None:
        if head.method != "PUT" or not head.path.startswith("/native/"):
            return None
        echo.path = head.path
        return echo

    limits = Limits(max_connections=2, idle_timeout_s=1.0, head_timeout_s=0.5, io_timeout_s=0.5,
                    min_body_rate=1 << 30, relay_max_bytes=4096)
    front = TLSFront(bind_socket("127.0.0.1", 0), tls.server_context(files["server"]), str(path), native, limits)
    front.start()
    peer = {"admin": encode_peercert({"subject": [[["commonName", "admin"]], [["organizationalUnitName", "admin"]]],
                                      "serialNumber": "01"}) or ""}
    try:
        yield World(front.sock.getsockname()[1], ctx, echo, front, peer)
    finally:
        await asyncio.to_thread(front.stop)
        front.sock.close()
        await runner.cleanup()


async def test_keep_alive_mixes_native_and_relayed_requests(world: World) -> None:
    def run() -> list[tuple[int, Any]]:
        conn = world.conn("agent")
        out = [call(conn, "PUT", "/native/a", b"x" * 10), call(conn, "GET", "/whoami"),
               call(conn, "PUT", "/native/b", b"y" * MAX), call(conn, "PUT", "/put", b"abc")]
        sock = conn.sock
        out.append(call(conn, "GET", "/whoami"))
        assert conn.sock is sock, "one connection throughout"
        conn.close()
        return out

    out = await asyncio.to_thread(run)
    assert out[0] == (201, {"bytes": 10, "first": "x"}) and out[2] == (201, {"bytes": MAX, "first": "y"})
    assert out[1] == (200, {"id": "agentagent", "role": "agent", "got_header": True}) == out[4]
    assert out[3][0] == 200
    assert world.echo.seen == [("/native/a", 10), ("/native/b", MAX)]


async def test_a_client_peer_cert_header_is_not_believed(world: World) -> None:
    forged = {PEER_CERT_HEADER: world.peer["admin"], PEER_CERT_HEADER.lower(): world.peer["admin"]}

    def run() -> tuple[Any, Any]:
        anon = call(world.conn("anon"), "GET", "/whoami", headers=forged)
        agent = call(world.conn("agent"), "GET", "/whoami", headers=forged)
        return anon, agent

    anon, agent = await asyncio.to_thread(run)
    assert anon[0] == 401 and anon[1]["code"] == "unauthorized"
    assert agent == (200, {"id": "agentagent", "role": "agent", "got_header": True})


async def test_a_fronted_app_over_tcp_ignores_the_header(world: World) -> None:
    app = make_app()
    app[FRONTED] = True
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        status, body = await asyncio.to_thread(call, conn, "GET", "/whoami", None,
                                               {PEER_CERT_HEADER: world.peer["admin"]})
        assert status == 401 and body["code"] == "unauthorized"
    finally:
        await runner.cleanup()


async def test_refusal_before_the_body_drains_it_and_keeps_the_connection(world: World) -> None:
    def run() -> list[tuple[int, Any]]:
        conn = world.conn("agent")
        return [call(conn, "PUT", "/native/refuse", b"z" * 500), call(conn, "PUT", "/native/ok", b"k")]

    refused, ok = await asyncio.to_thread(run)
    assert refused[0] == 409 and refused[1]["code"] == "conflict"
    assert ok == (201, {"bytes": 1, "first": "k"})
    assert world.echo.seen == [("/native/ok", 1)]


async def test_too_large_is_answered_before_the_body_is_sent(world: World) -> None:
    head = b"PUT /native/big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n"
    # the front lingers ~2 s before closing (to read a body that is sent anyway): not waited out here
    out = await asyncio.to_thread(world.raw, "agent", head, 5.0, until_answered=True)
    assert out.startswith(b"HTTP/1.1 413 ") and b'"too_large"' in out and b"Connection: close" in out
    out = await asyncio.to_thread(world.raw, "agent", head.replace(b"/native/big", b"/put"), 5.0,
                                  until_answered=True)
    assert out.startswith(b"HTTP/1.1 413 "), "relayed bodies are bounded too"
    assert world.echo.seen == []


@pytest.mark.parametrize("data, status", [
    (b"PUT /native/x HTTP/1.1\r\nHost: x\r\n\r\n", b"411"),
    (b"PUT /native/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"411"),
    (b"BLAH\r\n\r\n", b"400"),
    (b"GET /whoami HTTP/1.1\r\nBad Header\r\n\r\n", b"400"),
    (b"GET /whoami HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"400"),
])
async def test_bad_requests_get_json_errors_and_close(world: World, data: bytes, status: bytes) -> None:
    out = await asyncio.to_thread(world.raw, "agent", data, 5.0)
    assert out.startswith(b"HTTP/1.1 " + status + b" ")
    assert b"Connection: close" in out and b'"code"' in out
    assert world.echo.seen == []


async def test_slow_clients_time_out(world: World) -> None:
    started = time.monotonic()
    out = await asyncio.to_thread(world.raw, "agent", b"GET /whoami HTTP/1.1\r\nHost", 5.0)
    assert out.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 4
    out = await asyncio.to_thread(world.raw, "agent", b"PUT /native/x HTTP/1.1\r\nContent-Length: 10\r\n\r\nab", 5.0)
    assert out.startswith(b"HTTP/1.1 408 ")
    assert world.echo.seen == []


async def test_an_idle_connection_is_closed_quietly(world: World) -> None:
    started = time.monotonic()
    assert await asyncio.to_thread(world.raw, "agent", b"", 5.0) == b""
    assert time.monotonic() - started < 4


async def test_connections_over_the_bound_get_503(world: World) -> None:
    def run() -> bytes:
        held = [world.conn("agent") for _ in range(2)]
        for conn in held:
            assert call(conn, "GET", "/whoami")[0] == 200
        try:
            return world.raw("agent", b"GET /whoami HTTP/1.1\r\n\r\n", 5.0)
        finally:
            for conn in held:
                conn.close()

    out = await asyncio.to_thread(run)
    assert out.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in out


async def test_stop_ends_the_connection_threads(world: World) -> None:
    conn = world.conn("agent")
    assert (await asyncio.to_thread(call, conn, "GET", "/whoami"))[0] == 200
    started = time.monotonic()
    await asyncio.to_thread(world.front.stop)
    assert time.monotonic() - started < 3
    assert not world.front._live


async def test_refusals_of_the_front_itself_are_logged(world: World, tmp_path: Path) -> None:
    foreign = tls.IdentityFiles(tmp_path / "foreign")
    tls.issue_local(*tls.make_ca(), foreign, component_id="ff" * 16, role="agent", hosts=["127.0.0.1"], meta={})
    world.ctx["foreign"] = tls.client_context(foreign, ca_pem=None)
    world.ctx["foreign"].check_hostname, world.ctx["foreign"].verify_mode = False, ssl.CERT_NONE
    with structlog.testing.capture_logs() as events:
        await asyncio.to_thread(world.raw, "agent", b"BLAH\r\n\r\n", 5.0)
        await asyncio.to_thread(world.raw, "agent", b"GET /whoami HTTP/1.1\r\nHost", 5.0)
        try:  # TLS 1.3: the refusal may arrive after the client's side of the handshake
            answer = await asyncio.to_thread(world.raw, "foreign", b"GET /whoami HTTP/1.1\r\n\r\n", 5.0)
        except (ssl.SSLError, ConnectionError):
            answer = b""
        assert answer == b""
        for _ in range(200):  # the handshake's refusal is logged by the front's thread
            if any(e["event"] == "tls_handshake_refused" for e in events):
                break
            await asyncio.sleep(0.05)
    refused = sorted((e["status"], e["code"]) for e in events if e["event"] == "request_refused")
    assert refused == [(400, "bad_request"), (408, "timeout")]
    assert [e for e in events if e["event"] == "tls_handshake_refused"]
