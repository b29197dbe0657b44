"""Bulk request bodies (change batches) over blocking TLS sockets in worker threads.

asyncio's TLS layer encrypts on the event loop's thread, through memory buffers, holding the
GIL; a blocking ``ssl`` socket encrypts and sends inside ``SSL_write`` with the GIL released.
Moving the batch PUTs there takes the bulk of the bytes off the daemon's event loop and lets the
second core encrypt (bench/README.md, "e2e": the client side of a TLS copy costs about half the
CPU this way).

:class:`BulkSender` keeps a few keep-alive HTTP/1.1 connections to one server (the same mutual
TLS context as :class:`common.http.ApiClient`, which owns it and routes large bodies here),
optionally through an HTTP CONNECT proxy. Its answers and errors are those of ``ApiClient``:
``(status, parsed body)``, :mod:`common.errors` classes for 4xx/5xx, ``TransportError`` (retriable)
when the connection fails. A request on a reused connection that fails (the server closed it while
idle: EOF, reset) is sent again once on a new connection: batch PUTs are idempotent (an identical
re-send is a no-op at the PS and the MT).

Each connection's socket is also held as a duplicate descriptor from the moment it connects, so that
:meth:`BulkSender.close` can shut down a request blocked anywhere — even in its TLS handshake, while
``http.client`` holds no socket object of it (a peer that accepted and went silent).

Silent peers (a half-open connection, a blackholed path) fail fast: every socket operation (connect,
TLS handshake, each send and receive) times out after ``stall_timeout_s`` without progress, a
``TransportError`` saying the peer went silent (logged once, ``peer_silent``), and such a request is
not sent again on a new connection (the caller's retry does that). A slow transfer that keeps moving
bytes is not a stall; the whole request, from the moment a worker starts it, is still bounded by its
``timeout_s`` (or by its body's size at 256 KiB/s, when longer): then its socket is shut down and it
fails (``TransportError``). TCP keepalive probes
(idle ``stall_timeout_s``) make the kernel notice a dead peer of an idle pooled connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from common import errors
from common import logging as dlog
from common.config import DEFAULT_STALL_TIMEOUT_S

log = dlog.get("drlab.bulkhttp")

Route = tuple[str | None, tuple[tuple[str, str], ...]]  # (proxy URL, proxy headers)
KEEPALIVE_PROBES = 3
# the whole-request bound of a body is at least its size at this rate: a 64 MiB batch on a slow but
# moving link is not cut at ``timeout_s`` and re-sent for ever; a stall is caught by ``stall_s`` anyway
SLOWEST_LINK_BYTES_PER_S = 256 * 1024


@dataclass(eq=False)
class _Job:
    """One request's bounds and the connection it is using (read and changed under the sender's lock)."""

    loop: asyncio.AbstractEventLoop
    timeout_s: float  # the whole request, from the moment a worker starts it
    stall_s: float  # the longest wait for progress of one socket operation
    conn: http.client.HTTPSConnection | None = None
    timer: asyncio.TimerHandle | None = None
    expired: bool = False
    done: bool = False


class BulkSender:
    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, *, threads: int, timeout_s: float,
                 parse: Any, stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "", url.port or 443
        self._ssl = ssl_context
        self._timeout_s = timeout_s
        self._stall_s = stall_timeout_s
        self._parse = parse
        self._lock = threading.Lock()
        self._idle: list[tuple[Route, http.client.HTTPSConnection]] = []
        self._busy: set[http.client.HTTPSConnection] = set()
        self._handles: dict[http.client.HTTPSConnection, socket.socket] = {}  # dup of each one's socket
        self._doomed: set[http.client.HTTPSConnection] = set()  # its request ran out of time before it connected
        self._closed = False
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="bulk-http")

    def __repr__(self) -> str:
        return f"BulkSender({self.host}:{self.port})"

    async def request(self, method: str, path: str, data: bytes, *, headers: dict[str, str] | None,
                      timeout_s: float | None, proxy: str | None,
                      proxy_headers: dict[str, str] | None) -> tuple[int, Any]:
        route: Route = (proxy, tuple(sorted((proxy_headers or {}).items())))
        total = timeout_s or self._timeout_s
        bound = max(total, len(data) / SLOWEST_LINK_BYTES_PER_S)  # a big body on a slow link still fits
        job = _Job(asyncio.get_running_loop(), bound, min(self._stall_s, total))
        try:
            status, raw, retry_after = await job.loop.run_in_executor(
                self._pool, self._send, job, route, method, path, data, dict(headers or {}))
        finally:
            if job.timer is not None:  # armed by the worker (call_soon_threadsafe: before its result)
                job.timer.cancel()
        body = self._parse(raw)
        if status >= 400:
            raise errors.from_response(status, body, retry_after)
        return status, body

    def close(self) -> None:
        """Close every connection; a request in progress fails at once (its socket is shut down),
        so a stopping daemon never waits for a slow server: the interpreter joins these threads."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for _, conn in idle:
            self._drop(conn)
        for conn in busy:
            with self._lock:
                handle = self._handles.get(conn)
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.shutdown(socket.SHUT_RDWR)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- in a worker thread ----------------------------------------------------------------

    def _send(self, job: _Job, route: Route, method: str, path: str, data: bytes,
              headers: dict[str, str]) -> tuple[int, bytes, str | None]:
        where = f"{method} https://{self.host}:{self.port}{path}"
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits for this answer anyway
            job.loop.call_soon_threadsafe(self._arm, job)
        conn, reused = self._take(route, job.stall_s)
        self._track(job, conn)
        try:
            try:
                return self._exchange(conn, route, method, path, data, headers)
            except (OSError, http.client.HTTPException) as exc:
                if not reused or job.expired or isinstance(exc, TimeoutError):
                    raise  # a silent peer is not an idle connection the server closed
                self._drop(conn)  # the server closed the idle connection (EOF, reset): once more on a new one
                conn = self._connect(route, job.stall_s)
                self._track(job, conn)
                return self._exchange(conn, route, method, path, data, headers)
        except (OSError, http.client.HTTPException) as exc:
            self._drop(conn)
            raise self._failure(job, where, route, exc) from exc
        finally:
            with self._lock:
                self._busy.discard(conn)
                job.done = True

    def _track(self, job: _Job, conn: http.client.HTTPSConnection) -> None:
        with self._lock:
            if job.conn is not None:
                self._busy.discard(job.conn)
            job.conn = conn
            self._busy.add(conn)
            handle = self._doom(conn) if job.expired else None
        _shut(handle)

    def _arm(self, job: _Job) -> None:
        """On the event loop: bound the whole request (unless it ended already)."""
        if not job.done:
            job.timer = job.loop.call_later(job.timeout_s, self._expire, job)

    def _expire(self, job: _Job) -> None:
        """On the event loop, once the request's time is up: shut its socket down (the blocked
        operation fails at once), or have it shut down as soon as it connects."""
        with self._lock:
            if job.done:
                return
            job.expired = True
            handle = self._doom(job.conn) if job.conn is not None else None
        _shut(handle)

    def _doom(self, conn: http.client.HTTPSConnection) -> socket.socket | None:
        """(Under the lock.) The socket to shut down now, or None: shut down as soon as it connects."""
        handle = self._handles.get(conn)
        if handle is None:
            self._doomed.add(conn)
        return handle

    @staticmethod
    def _failure(job: _Job, where: str, route: Route, exc: BaseException) -> errors.TransportError:
        if job.expired:
            return errors.TransportError(f"{where}: no answer within the request timeout of {job.timeout_s:g} s")
        if isinstance(exc, TimeoutError):
            log.warning("peer_silent", request=where, stall_s=job.stall_s, via_proxy=route[0] is not None)
            return errors.TransportError(f"{where}: the peer went silent for {job.stall_s:g} s "
                                         "(no byte sent or received)")
        return errors.TransportError(f"{where}: {_describe(exc, route)}")

    def _exchange(self, conn: http.client.HTTPSConnection, route: Route, method: str, path: str, data: bytes,
                  headers: dict[str, str]) -> tuple[int, bytes, str | None]:
        conn.request(method, path, body=data, headers={"Content-Type": "application/octet-stream", **headers})
        resp = conn.getresponse()
        raw = resp.read()
        if resp.will_close:
            self._drop(conn)
        else:
            self._give_back(route, conn)
        return resp.status, raw, resp.getheader("Retry-After")

    def _take(self, route: Route, stall_s: float) -> tuple[http.client.HTTPSConnection, bool]:
        with self._lock:
            if self._closed:
                raise errors.TransportError(f"{self!r} is closed")
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i][0] == route:
                    conn = self._idle.pop(i)[1]
                    conn.timeout = stall_s
                    if conn.sock is not None:
                        conn.sock.settimeout(stall_s)
                    return conn, True
        return self._connect(route, stall_s), False

    def _connect(self, route: Route, stall_s: float) -> http.client.HTTPSConnection:
        """A new connection (connected by its first request): every socket operation of it times out
        after ``stall_s`` without progress, and its socket sends TCP keepalive probes."""
        proxy, proxy_headers = route
        if proxy is None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=stall_s, context=self._ssl)
        else:
            purl = urlsplit(proxy)
            conn = http.client.HTTPSConnection(purl.hostname or "", purl.port or 8080, timeout=stall_s,
                                               context=self._ssl)
            conn.set_tunnel(self.host, self.port, headers=dict(proxy_headers))

        def create(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
            sock = socket.create_connection(address, *args, **kwargs)
            keepalive(sock, stall_s)
            self._hold(conn, sock.dup())
            return sock

        conn._create_connection = create  # type: ignore[attr-defined]  # http.client's connect hook
        return conn

    def _hold(self, conn: http.client.HTTPSConnection, handle: socket.socket) -> None:
        with self._lock:
            old, self._handles[conn] = self._handles.get(conn), handle
            closed = self._closed or conn in self._doomed
        if old is not None:
            old.close()
        if closed:  # close() ran meanwhile: this connection must not block either
            with contextlib.suppress(OSError):
                handle.shutdown(socket.SHUT_RDWR)

    def _drop(self, conn: http.client.HTTPSConnection) -> None:
        """Close a connection and its duplicate descriptor."""
        conn.close()
        with self._lock:
            handle = self._handles.pop(conn, None)
            self._doomed.discard(conn)
        if handle is not None:
            handle.close()

    def _give_back(self, route: Route, conn: http.client.HTTPSConnection) -> None:
        with self._lock:
            if self._closed:
                stale = [conn]
            else:  # the proxy changed: connections of the old route are not reused
                stale = [c for r, c in self._idle if r != route]
                self._idle = [(r, c) for r, c in self._idle if r == route] + [(route, conn)]
        for c in stale:
            self._drop(c)


def _shut(handle: socket.socket | None) -> None:
    if handle is not None:
        with contextlib.suppress(OSError):
            handle.shutdown(socket.SHUT_RDWR)


def keepalive(sock: socket.socket, stall_s: float) -> None:
    """Turn on TCP keepalive: probes after ``stall_s`` idle, every third of it, ``KEEPALIVE_PROBES``
    unanswered ones and the kernel fails the connection (the options a platform lacks are skipped)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, int(stall_s))
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", max(1, idle // 3)),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _describe(exc: BaseException, route: Route) -> str:
    """The failure, naming the proxy when there is one (ps/uplink.py reports proxy failures);
    never its credentials (only the CONNECT headers carry them, and they are not shown)."""
    text = f"{type(exc).__name__}: {exc}"
    if route[0] is not None and ("Tunnel" in text or isinstance(exc, ConnectionRefusedError)):
        return f"Proxy connection failed: {text}"
    return text
