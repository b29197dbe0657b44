"""common/bulkhttp.py through ApiClient: large bodies leave over blocking mutual-TLS sockets in
worker threads, with ApiClient's answers and errors; small ones still go through aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from common import errors, tls
from common.http import BULK_MIN_BYTES, ApiClient


@dataclass
class Server:
    url: str
    client_ctx: ssl.SSLContext
    runner: web.AppRunner
    seen: list[tuple[str, int, str]] = field(default_factory=list)  # (path, body bytes, thread of the sender)
    peers: set[str] = field(default_factory=set)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    ca_key, ca_cert = tls.make_ca("bulk test CA")
    srv_id, cli_id = tls.IdentityFiles(tmp_path / "server"), tls.IdentityFiles(tmp_path / "client")
    tls.issue_local(ca_key, ca_cert, srv_id, component_id="srv", role="ps", hosts=["127.0.0.1"], meta={})
    tls.issue_local(ca_key, ca_cert, cli_id, component_id="cli", role="agent", hosts=[], meta={})
    state: dict[str, Server] = {}
    released = asyncio.Event()  # set at teardown: a /slow request still held ends then, not after 4 s

    async def put(request: web.Request) -> web.Response:
        body = await request.read()
        s = state["s"]
        s.seen.append((request.path, len(body), request.headers.get("X-Sender", "")))
        s.peers.add(str(request.transport.get_extra_info("peername") if request.transport else None))
        if request.path.endswith("/full"):
            return web.json_response({"code": "cache_full", "message": "no room"}, status=507,
                                     headers={"Retry-After": "2"})
        if request.path.endswith("/slow"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), 4)
        if request.path.endswith("/stale"):
            return web.json_response({"code": "stale_generation", "message": "gen 1 < 2"}, status=409)
        return web.json_response({"stored": len(body)}, status=201)

    ctx = tls.server_context(srv_id)
    ctx.verify_mode = ssl.CERT_REQUIRED
    app = web.Application(client_max_size=64 << 20)
    app.router.add_put("/{tail:.*}", put)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=0.3)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    s = Server(f"https://127.0.0.1:{runner.addresses[0][1]}", tls.client_context(cli_id), runner)
    state["s"] = s
    yield s
    released.set()
    await runner.cleanup()


def sender_thread() -> dict[str, str]:
    return {"X-Sender": threading.current_thread().name}


async def test_a_large_body_goes_from_a_worker_thread_and_gets_the_answer(server: Server) -> None:
    client = ApiClient(server.url, server.client_ctx, timeout_s=10, bulk_threads=2)
    try:
        body = bytes(range(256)) * (4 << 12)  # 4 MiB
        status, reply = await client.request("PUT", "/v1/batches/1/1", data=body, headers=sender_thread())
        assert (status, reply) == (201, {"stored": len(body)})
        status, reply = await client.request("PUT", "/v1/small", data=b"x" * (BULK_MIN_BYTES - 1))
        assert (status, reply) == (201, {"stored": BULK_MIN_BYTES - 1})
        assert [(p, n) for p, n, _ in server.seen] == [("/v1/batches/1/1", len(body)),
                                                       ("/v1/small", BULK_MIN_BYTES - 1)]
    finally:
        await client.close()


async def test_refusals_are_the_api_clients_errors_with_retry_after(server: Server) -> None:
    client = ApiClient(server.url, server.client_ctx, timeout_s=10, bulk_threads=1)
    try:
        with pytest.raises(errors.DrlabError) as full:
            await client.request("PUT", "/v1/full", data=bytes(BULK_MIN_BYTES))
        assert full.value.status == 507 and full.value.retry_after_s == 2.0 and full.value.code == "cache_full"
        with pytest.raises(errors.StaleGeneration):
            await client.request("PUT", "/v1/stale", data=bytes(BULK_MIN_BYTES))
    finally:
        await client.close()


async def test_connections_are_kept_and_one_closed_while_idle_is_replaced(server: Server) -> None:
    client = ApiClient(server.url, server.client_ctx, timeout_s=10, bulk_threads=1)
    try:
        for i in range(3):
            await client.request("PUT", f"/v1/b/{i}", data=bytes(BULK_MIN_BYTES))
        assert len(server.peers) == 1  # one keep-alive connection for the three
        await asyncio.sleep(0.8)  # past the server's keep-alive: it closes the idle connection
        status, _ = await client.request("PUT", "/v1/b/again", data=bytes(BULK_MIN_BYTES))
        assert status == 201 and len(server.peers) == 2
    finally:
        await client.close()


async def test_a_closed_client_sends_again_on_new_connections(server: Server) -> None:
    client = ApiClient(server.url, server.client_ctx, timeout_s=5, bulk_threads=1)
    try:
        await client.request("PUT", "/v1/b/1", data=bytes(BULK_MIN_BYTES))
        await client.close()  # as with its aiohttp session: the next request opens what it needs
        assert (await client.request("PUT", "/v1/b/2", data=bytes(BULK_MIN_BYTES)))[0] == 201
        assert len(server.peers) == 2
    finally:
        await client.close()


async def test_an_unreachable_server_is_a_retriable_transport_error(server: Server) -> None:
    await server.runner.cleanup()
    client = ApiClient(server.url, server.client_ctx, timeout_s=5, bulk_threads=1)
    try:
        with pytest.raises(errors.TransportError) as caught:
            await client.request("PUT", "/v1/b/1", data=bytes(BULK_MIN_BYTES))
        assert caught.value.retriable and "127.0.0.1" in caught.value.message
    finally:
        await client.close()


async def test_a_server_that_does_not_trust_the_client_is_refused_at_the_handshake(server: Server,
                                                                                   tmp_path: Path) -> None:
    ca_key, ca_cert = tls.make_ca("another CA")
    stranger = tls.IdentityFiles(tmp_path / "stranger")
    tls.issue_local(ca_key, ca_cert, stranger, component_id="x", role="agent", hosts=[], meta={})
    client = ApiClient(server.url, tls.client_context(stranger), timeout_s=5, bulk_threads=1)
    try:
        with pytest.raises(errors.TransportError):
            await client.request("PUT", "/v1/b/1", data=bytes(BULK_MIN_BYTES))
        assert server.seen == []
    finally:
        await client.close()


async def test_close_fails_a_request_in_progress_at_once(server: Server) -> None:
    """A stopping daemon closes its clients; a PUT waiting on a slow server must not hold the
    interpreter's exit (it joins these worker threads) for the request's whole timeout."""
    client = ApiClient(server.url, server.client_ctx, timeout_s=25, bulk_threads=1)
    slow = asyncio.create_task(client.request("PUT", "/v1/slow", data=bytes(BULK_MIN_BYTES)))
    for _ in range(100):
        if server.seen:
            break
        await asyncio.sleep(0.05)
    assert server.seen, "the request did not reach the server"
    started = time.monotonic()
    await client.close()
    with pytest.raises(errors.TransportError):
        await slow
    assert time.monotonic() - started < 3.0
    for _ in range(60):
        if not any(t.name.startswith("bulk-http") for t in threading.enumerate()):
            break
        await asyncio.sleep(0.05)
    assert not any(t.name.startswith("bulk-http") for t in threading.enumerate())


async def test_close_fails_a_request_stuck_in_its_tls_handshake_at_once(server: Server) -> None:
    """A peer that accepts and goes silent (a half-open path): the request waits in the TLS
    handshake, where http.client holds no socket object; close() still ends it at once."""
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True)
    accepting.start()
    client = ApiClient(f"https://127.0.0.1:{silent.getsockname()[1]}", server.client_ctx, timeout_s=25,
                       bulk_threads=1)
    try:
        stuck = asyncio.create_task(client.request("PUT", "/v1/b/1", data=bytes(BULK_MIN_BYTES)))
        await asyncio.to_thread(accepting.join, 5)
        await asyncio.sleep(0.2)
        assert held and not stuck.done()
        started = time.monotonic()
        await client.close()
        with pytest.raises(errors.TransportError):
            await stuck
        assert time.monotonic() - started < 3.0
    finally:
        for sock in (*held, silent):
            sock.close()
