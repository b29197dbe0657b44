"""Silent-peer detection (common/http.py, common/bulkhttp.py): a peer that accepts and reads the
request, then says nothing (a half-open connection), fails the request after ``stall_timeout_s``
with a retriable error, not after the whole request timeout; a slow answer that keeps trickling
succeeds; the whole request is still bounded by its timeout."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog

from common import errors, tls
from common.bulkhttp import keepalive
from common.http import BULK_MIN_BYTES, ApiClient

STALL_S = 0.5
TRICKLE = b'{"n":12345}'  # 11 bytes of JSON, one every 0.2 s: 2.2 s in all, never 0.5 s silent


@dataclass
class Peer:
    """A TLS server on loopback whose every connection reads one request, then runs ``answer``."""

    client_ctx: ssl.SSLContext
    server_ctx: ssl.SSLContext
    answer: Callable[[ssl.SSLSocket], None] = lambda conn: None
    reads: bool = True  # False: never reads the request (its receive window fills up)
    listener: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.listener.getsockname()[1]}"

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw: socket.socket) -> None:
        try:
            with self.server_ctx.wrap_socket(raw, server_side=True) as conn:
                if self.reads:
                    read_request(conn)
                    self.answer(conn)
                self.stop.wait(10)  # then silent, the connection open
        except OSError:
            pass


def read_request(conn: ssl.SSLSocket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536) or b"!"
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += conn.recv(65536) or b"!" * length


def trickle(conn: ssl.SSLSocket, count: int = len(TRICKLE)) -> None:
    """Answer 200 with TRICKLE's Content-Length, sending ``count`` of its bytes one every 0.2 s."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(TRICKLE))
    for i in range(count):
        time.sleep(0.2)
        conn.sendall(TRICKLE[i % len(TRICKLE):i % len(TRICKLE) + 1])


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    ca_key, ca_cert = tls.make_ca("stall test CA")
    srv_id, cli_id = tls.IdentityFiles(tmp_path / "server"), tls.IdentityFiles(tmp_path / "client")
    tls.issue_local(ca_key, ca_cert, srv_id, component_id="srv", role="ps", hosts=["127.0.0.1"], meta={})
    tls.issue_local(ca_key, ca_cert, cli_id, component_id="cli", role="agent", hosts=[], meta={})
    p = Peer(tls.client_context(cli_id), tls.server_context(srv_id))
    thread = threading.Thread(target=p.serve, daemon=True)
    thread.start()
    yield p
    p.stop.set()
    with contextlib.suppress(OSError):
        p.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
    p.listener.close()
    thread.join(2)


BODIES = {"aiohttp": b"{}", "bulk": bytes(BULK_MIN_BYTES)}


def client_for(peer: Peer, path: str = "bulk", timeout_s: float = 20.0) -> ApiClient:
    """A client whose bodies of BULK_MIN_BYTES or more take the ``path`` given (bulk: worker threads)."""
    return ApiClient(peer.url, peer.client_ctx, timeout_s=timeout_s, bulk_threads=int(path == "bulk"),
                     stall_timeout_s=STALL_S)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("path", ["aiohttp", "bulk"])
async def test_a_peer_that_goes_silent_fails_the_request_within_the_stall_timeout(peer: Peer, path: str) -> None:
    client = client_for(peer, path)
    try:
        started = time.monotonic()
        with structlog.testing.capture_logs() as events, pytest.raises(errors.TransportError) as caught:
            await client.request("PUT", "/v1/b/1", data=BODIES[path])
        elapsed = time.monotonic() - started
        assert STALL_S * 0.9 <= elapsed < STALL_S + 2.0  # not the 20 s request timeout
        assert caught.value.retriable and "went silent for 0.5 s" in caught.value.message
        assert [e["event"] for e in events].count("peer_silent") == 1
        assert "PRIVATE KEY" not in repr(events)
    finally:
        await client.close()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("path", ["aiohttp", "bulk"])
async def test_a_slow_answer_that_keeps_trickling_is_not_a_stall(peer: Peer, path: str) -> None:
    peer.answer = trickle
    client = client_for(peer, path)
    try:
        started = time.monotonic()
        status, body = await client.request("PUT", "/v1/b/1", data=BODIES[path])
        assert (status, body) == (200, {"n": 12345})
        assert time.monotonic() - started >= 2.0  # it did take longer than four stall timeouts
    finally:
        await client.close()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("path", ["aiohttp", "bulk"])
async def test_a_trickle_that_never_ends_is_still_bounded_by_the_request_timeout(peer: Peer, path: str) -> None:
    peer.answer = lambda conn: trickle(conn, count=1000)  # more bytes than announced: never a whole answer
    client = client_for(peer, path, timeout_s=1.5)
    try:
        started = time.monotonic()
        with pytest.raises(errors.TransportError) as caught:
            await client.request("PUT", "/v1/b/1", data=BODIES[path])
        assert 1.3 <= time.monotonic() - started < 4.0
        assert caught.value.retriable and "went silent" not in caught.value.message
    finally:
        await client.close()


@pytest.mark.timeout(10)
async def test_a_long_poll_may_be_held_as_long_as_its_longer_timeout_allows(peer: Peer) -> None:
    """A request given 1 s more than the client's timeout (a long poll's wait) may get no byte for
    1 s + the stall timeout; the client's other requests keep the short bound."""
    def late(conn: ssl.SSLSocket) -> None:
        time.sleep(1.0)
        trickle(conn)

    peer.answer = late
    client = client_for(peer, "aiohttp", timeout_s=3.0)
    try:
        assert (await client.request("GET", "/v1/settings", timeout_s=4.0))[1] == {"n": 12345}
        with pytest.raises(errors.TransportError, match="went silent"):
            await client.request("GET", "/v1/settings")
    finally:
        await client.close()


@pytest.mark.timeout(10)
async def test_a_silent_peer_is_not_sent_the_request_again_on_a_new_connection(peer: Peer) -> None:
    """The bulk sender re-sends once on a new connection when a reused one fails (the server
    closed it while idle); a stall is no such failure: the caller's retry decides."""
    answers: list[str] = []

    def first_answers_then_silence(conn: ssl.SSLSocket) -> None:
        answers.append("x")
        if len(answers) == 1:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            read_request(conn)  # the second request, on the same connection: no answer

    peer.answer = first_answers_then_silence
    client = client_for(peer)
    try:
        assert (await client.request("PUT", "/v1/b/1", data=BODIES["bulk"]))[0] == 200
        started = time.monotonic()
        with pytest.raises(errors.TransportError, match="went silent"):
            await client.request("PUT", "/v1/b/2", data=BODIES["bulk"])
        assert time.monotonic() - started < STALL_S + 1.0 and len(answers) == 1
    finally:
        await client.close()


def test_keepalive_is_on_with_probes_after_the_stall_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as sock:
        keepalive(sock, 10.0)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


@pytest.mark.timeout(10)
@pytest.mark.parametrize("path", ["aiohttp", "bulk"])
async def test_a_peer_that_stops_reading_the_body_fails_the_request_within_the_stall_timeout(
        peer: Peer, path: str) -> None:
    peer.reads = False
    client = client_for(peer, path)
    try:
        started = time.monotonic()
        with pytest.raises(errors.TransportError, match="went silent for 0.5 s"):
            await client.request("PUT", "/v1/b/1", data=bytes(32 << 20))
        assert time.monotonic() - started < STALL_S + 2.0
    finally:
        await client.close()
