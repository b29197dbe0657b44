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
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from common import errors

Route = tuple[str | None, tuple[tuple[str, str], ...]]  # (proxy URL, proxy headers)


class BulkSender:
    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, *, threads: int, timeout_s: float,
                 parse: Any) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "", url.port or 443
        self._ssl = ssl_context
        self._timeout_s = timeout_s
        self._parse = parse
        self._lock = threading.Lock()
        self._idle: list[tuple[Route, http.client.HTTPSConnection]] = []
        self._busy: set[http.client.HTTPSConnection] = set()
        self._handles: dict[http.client.HTTPSConnection, socket.socket] = {}  # dup of each one's socket
        self._closed = False
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="bulk-http")

    def __repr__(self) -> str:
        return f"BulkSender({self.host}:{self.port})"

    async def request(self, method: str, path: str, data: bytes, *, headers: dict[str, str] | None,
                      timeout_s: float | None, proxy: str | None,
                      proxy_headers: dict[str, str] | None) -> tuple[int, Any]:
        route: Route = (proxy, tuple(sorted((proxy_headers or {}).items())))
        loop = asyncio.get_running_loop()
        status, raw, retry_after = await loop.run_in_executor(
            self._pool, self._send, route, method, path, data, dict(headers or {}), timeout_s or self._timeout_s)
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

    def _send(self, route: Route, method: str, path: str, data: bytes, headers: dict[str, str],
              timeout_s: float) -> tuple[int, bytes, str | None]:
        where = f"{method} https://{self.host}:{self.port}{path}"
        conn, reused = self._take(route, timeout_s)
        with self._lock:
            self._busy.add(conn)
        try:
            try:
                return self._exchange(conn, route, method, path, data, headers)
            except (OSError, http.client.HTTPException):
                if not reused:
                    raise
                self._drop(conn)  # the server closed the idle connection (EOF, reset): once more on a new one
                with self._lock:
                    self._busy.discard(conn)
                    conn = self._connect(route, timeout_s)
                    self._busy.add(conn)
                return self._exchange(conn, route, method, path, data, headers)
        except (OSError, http.client.HTTPException) as exc:
            self._drop(conn)
            raise errors.TransportError(f"{where}: {_describe(exc, route)}") from exc
        finally:
            with self._lock:
                self._busy.discard(conn)

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

    def _take(self, route: Route, timeout_s: float) -> tuple[http.client.HTTPSConnection, bool]:
        with self._lock:
            if self._closed:
                raise errors.TransportError(f"{self!r} is closed")
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i][0] == route:
                    conn = self._idle.pop(i)[1]
                    conn.timeout = timeout_s
                    if conn.sock is not None:
                        conn.sock.settimeout(timeout_s)
                    return conn, True
        return self._connect(route, timeout_s), False

    def _connect(self, route: Route, timeout_s: float) -> http.client.HTTPSConnection:
        proxy, proxy_headers = route
        if proxy is None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout_s, context=self._ssl)
        else:
            purl = urlsplit(proxy)
            conn = http.client.HTTPSConnection(purl.hostname or "", purl.port or 8080, timeout=timeout_s,
                                               context=self._ssl)
            conn.set_tunnel(self.host, self.port, headers=dict(proxy_headers))

        def create(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
            sock = socket.create_connection(address, *args, **kwargs)
            self._hold(conn, sock.dup())
            return sock

        conn._create_connection = create  # type: ignore[attr-defined]  # http.client's connect hook
        return conn

    def _hold(self, conn: http.client.HTTPSConnection, handle: socket.socket) -> None:
        with self._lock:
            old, self._handles[conn] = self._handles.get(conn), handle
            closed = self._closed
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


def _describe(exc: BaseException, route: Route) -> str:
    """The failure, naming the proxy when there is one (ps/uplink.py reports proxy failures);
    never its credentials (only the CONNECT headers carry them, and they are not shown)."""
    text = f"{type(exc).__name__}: {exc}"
    if route[0] is not None and ("Tunnel" in text or isinstance(exc, ConnectionRefusedError)):
        return f"Proxy connection failed: {text}"
    return text
