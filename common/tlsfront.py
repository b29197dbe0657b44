"""A threaded TLS front for a data port: bulk request bodies never pass through asyncio's TLS.

asyncio's TLS layer decrypts on the event loop's thread through memory buffers, holding the GIL;
a blocking ``ssl`` socket's ``recv_into`` decrypts straight into our buffer with the GIL released
(the client side does the same: common/bulkhttp.py). :class:`TLSFront` owns the listening socket:

- One thread accepts; each connection gets its own thread (at most ``Limits.max_connections``;
  beyond, a connection gets a 503 ``unavailable`` and is closed), which does the TLS handshake with
  the server's context and then serves HTTP/1.1 keep-alive requests (common/frontproto.py: the
  parsing rules, limits and timeouts).
- A *native* route (``native(head, peercert)`` returns a :class:`NativeCall`) is served here:
  ``admit(length)`` runs all checks that do not need the body (route, identity, disk, size), then
  the body is read with ``recv_into`` into a preallocated ``bytearray``, then ``finish(body)``
  answers ``(status, JSON document)``. Both raise :class:`common.errors.DrlabError` for refusals.
- Every other request is relayed to the application served on the private unix socket
  ``relay_path``, with the verified peer certificate in ``X-Drlab-Peer-Cert`` (base64 of the JSON
  of ``getpeercert()``; any such header from the client is removed), and its answer relayed back.

A refusal that leaves an unread body on the wire drains it (up to ``Limits.relay_max_bytes``)
and keeps the connection; a larger one is answered, then the connection closed.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from common import errors
from common import logging as dlog
from common.frontproto import (
    BadInput,
    Head,
    Limits,
    answer_headers,
    body_length,
    error_answer,
    json_answer,
    parse_head,
    relay_headers,
    render,
)

log = dlog.get("drlab.tlsfront")

CHUNK = 256 * 1024
TRANSPORT = (OSError, ssl.SSLError, http.client.HTTPException)


class NativeCall(Protocol):
    def admit(self, length: int) -> None: ...

    def finish(self, body: bytearray) -> tuple[int, Any]: ...


Native = Callable[[Head, dict[str, Any]], NativeCall | None]


class SlowClient(Exception):
    """A read or write did not finish within its deadline."""


class Closed(Exception):
    """The client closed the connection (cleanly, between or within requests)."""


def encode_peercert(peercert: dict[str, Any]) -> str | None:
    """The header value vouching for a verified certificate (None without one)."""
    if not peercert:
        return None
    doc = {"subject": peercert.get("subject", ()), "serialNumber": peercert.get("serialNumber", "0")}
    return base64.b64encode(json.dumps(doc).encode()).decode()


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _Conn:
    """One client connection, in its own thread."""

    def __init__(self, front: TLSFront, sock: ssl.SSLSocket, peercert: dict[str, Any]) -> None:
        self.front, self.sock, self.peercert = front, sock, peercert
        self.limits = front.limits
        self.pending = bytearray()  # bytes received beyond the current request's head
        self.relay: _Unix | None = None

    def serve(self) -> None:
        while not self.front.stopping:
            raw = self._read_head()
            if raw is None:
                return
            try:
                head = parse_head(raw, self.limits)
                keep = self._handle(head)
            except BadInput as exc:
                _log_refused(exc.status, exc.code, exc.message)
                if self._send(error_answer(exc, False)):
                    self._linger(1.0)
                return
            if not keep:
                return

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()

    # -- reading -------------------------------------------------------------------------------

    def _recv(self, deadline: float, first: bool) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SlowClient("request head not received in time")
        self.sock.settimeout(min(left, self.limits.io_timeout_s))
        try:
            data = self.sock.recv(CHUNK)
        except TimeoutError:
            raise (Closed() if first else SlowClient("request head not received in time")) from None
        if not data:
            raise Closed()
        self.pending += data

    def _read_head(self) -> bytes | None:
        """The next request's head, or None when the client is gone, idle too long or too slow."""
        limits = self.limits
        deadline = time.monotonic() + limits.idle_timeout_s
        started = bool(self.pending)
        if started:
            deadline = time.monotonic() + limits.head_timeout_s
        try:
            while (end := self.pending.find(b"\r\n\r\n")) < 0:
                if len(self.pending) > limits.max_head_bytes:
                    _log_refused(400, "bad_request", "request head too large")
                    self._send(error_answer(BadInput(400, "bad_request", "request head too large"), False))
                    return None
                self._recv(deadline, not started)
                if not started:
                    started, deadline = True, time.monotonic() + limits.head_timeout_s
        except Closed:
            return None
        except SlowClient as exc:
            _log_refused(408, "timeout", str(exc))
            self._send(json_answer(408, {"code": "timeout", "message": str(exc)}, False))
            return None
        raw = bytes(self.pending[:end])
        del self.pending[:end + 4]
        return raw

    def _read_into(self, buf: bytearray) -> None:
        """Fill ``buf`` with the body: first what arrived with the head, then ``recv_into``."""
        n = len(buf)
        view = memoryview(buf)
        got = min(n, len(self.pending))
        view[:got] = self.pending[:got]
        del self.pending[:got]
        deadline = time.monotonic() + self.limits.io_timeout_s + n / self.limits.min_body_rate
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SlowClient(f"body not received in time ({got} of {n} bytes)")
            self.sock.settimeout(min(left, self.limits.io_timeout_s))
            try:
                k = self.sock.recv_into(view[got:], n - got)
            except TimeoutError:
                raise SlowClient(f"body not received in time ({got} of {n} bytes)") from None
            if k == 0:
                raise Closed()
            got += k

    def _discard(self, length: int) -> bool:
        """Read and drop an unread body (True), unless it is too large to bother (False)."""
        if length > self.limits.relay_max_bytes:
            return False
        while length > 0:
            part = min(length, CHUNK)
            try:
                self._read_into(bytearray(part))
            except (Closed, SlowClient, *TRANSPORT):
                return False
            length -= part
        return True

    def _linger(self, seconds: float = 2.0) -> None:
        """Before closing on an unread body: see :func:`_drain`."""
        _drain(self.sock, seconds)

    def _send(self, data: bytes) -> bool:
        try:
            self.sock.settimeout(self.limits.io_timeout_s)
            self.sock.sendall(data)
            return True
        except TRANSPORT:
            return False

    # -- requests ------------------------------------------------------------------------------

    def _handle(self, head: Head) -> bool:
        """Serve one request; True to keep the connection for the next one."""
        keep = head.keep_alive
        length = body_length(head)
        call = self.front.native(head, self.peercert)
        try:
            if call is not None:
                call.admit(length)
            elif length > self.limits.relay_max_bytes:
                raise errors.TooLarge(f"body of {length} bytes exceeds {self.limits.relay_max_bytes}")
        except errors.DrlabError as exc:
            keep = keep and self._discard(length)
            sent = self._send(error_answer(exc, keep))
            if not keep:
                self._linger()
            return sent and keep
        body = bytearray(length)
        try:
            self._read_into(body)
        except SlowClient as exc:
            _log_refused(408, "timeout", str(exc))
            self._send(json_answer(408, {"code": "timeout", "message": str(exc)}, False))
            return False
        except Closed:
            return False
        if call is not None:
            return self._send(self._finish(call, body, keep)) and keep
        return self._send(self._relay(head, body, keep)) and keep

    def _finish(self, call: NativeCall, body: bytearray, keep: bool) -> bytes:
        try:
            status, document = call.finish(body)
        except errors.DrlabError as exc:
            return error_answer(exc, keep)
        return json_answer(status, document, keep)

    def _relay(self, head: Head, body: bytearray, keep: bool) -> bytes:
        headers = relay_headers(head, encode_peercert(self.peercert), len(body))
        for attempt in (0, 1):  # a kept connection the app closed meanwhile: once more on a new one
            if self.relay is None:
                self.relay = _Unix(self.front.relay_path, self.front.relay_timeout_s)
            try:
                self.relay.putrequest(head.method, head.target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    self.relay.putheader(name, value)
                self.relay.endheaders(bytes(body) if body else None)
                resp = self.relay.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.relay.close()
                return render(resp.status, data, answer_headers(resp.getheaders()), keep,
                              head_only=head.method == "HEAD")
            except TRANSPORT as exc:
                self.relay.close()
                self.relay = None
                if attempt:
                    log.warning("front_relay_failed", error=f"{type(exc).__name__}: {exc}"[:200])
        return error_answer(errors.Unavailable("the data service is not answering"), keep)


class TLSFront:
    """The listening socket's threads (see the module docstring). ``stop()`` blocks: call it off
    the event loop (``asyncio.to_thread``), as native calls may wait for the loop."""

    def __init__(self, sock: socket.socket, ssl_context: ssl.SSLContext, relay_path: str, native: Native,
                 limits: Limits | None = None, relay_timeout_s: float = 300.0) -> None:
        self.sock, self.ssl_context, self.relay_path, self.native = sock, ssl_context, relay_path, native
        self.limits = limits or Limits()
        self.relay_timeout_s = relay_timeout_s
        self.stopping = False
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        self._refusals = threading.BoundedSemaphore(8)  # threads answering 503 beyond the bound
        self._lock = threading.Lock()
        self._live: dict[threading.Thread, socket.socket] = {}  # connection thread -> its socket
        self._acceptor: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"TLSFront({self.sock.getsockname()!r})"

    def start(self) -> None:
        self.sock.settimeout(0.2)  # the accept loop looks at ``stopping`` this often
        self._acceptor = threading.Thread(target=self._accept_loop, name="tlsfront-accept", daemon=True)
        self._acceptor.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stopping = True
        try:  # wakes the blocked accept() at once (Linux); the socket is not used again
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._acceptor is not None:
            self._acceptor.join(timeout_s)
        with self._lock:
            live = list(self._live.items())
        for _, sock in live:
            try:  # the plain socket's shutdown (SSLSocket.shutdown would drop its SSL object under the thread)
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
        for thread, _ in live:
            thread.join(timeout_s)

    def _accept_loop(self) -> None:
        while not self.stopping:
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self.stopping:
                    return
                log.warning("front_accept_failed", error=str(exc)[:200])
                time.sleep(0.1)
                continue
            if self._slots.acquire(blocking=False):
                self._spawn(raw, self._serve, self._slots)
            elif self._refusals.acquire(blocking=False):
                self._spawn(raw, self._refuse, self._refusals)
            else:
                raw.close()

    def _spawn(self, raw: socket.socket, work: Callable[[ssl.SSLSocket], None],
               slot: threading.BoundedSemaphore) -> None:
        thread = threading.Thread(target=self._run, args=(raw, work, slot), name="tlsfront-conn", daemon=True)
        with self._lock:
            self._live[thread] = raw
        thread.start()

    def _run(self, raw: socket.socket, work: Callable[[ssl.SSLSocket], None],
             slot: threading.BoundedSemaphore) -> None:
        try:
            raw.settimeout(self.limits.handshake_timeout_s)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle wait on handshake/answer writes
            tls = self.ssl_context.wrap_socket(raw, server_side=True)  # takes over raw's descriptor
        except TRANSPORT as exc:
            if isinstance(exc, ssl.SSLError):  # e.g. no, an expired or a foreign certificate
                log.info("tls_handshake_refused", error=f"{type(exc).__name__}: {exc}"[:200])
            raw.close()
            self._done(slot)
            return
        with self._lock:
            self._live[threading.current_thread()] = tls
        try:
            work(tls)
        except TRANSPORT:
            pass
        except Exception as exc:  # a bug: logged; the connection is closed
            log.error("front_connection_failed", error=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            tls.close()
            self._done(slot)

    def _done(self, slot: threading.BoundedSemaphore) -> None:
        with self._lock:
            self._live.pop(threading.current_thread(), None)
        slot.release()

    def _serve(self, tls: ssl.SSLSocket) -> None:
        conn = _Conn(self, tls, tls.getpeercert() or {})
        try:
            conn.serve()
        finally:
            conn.close()

    def _refuse(self, tls: ssl.SSLSocket) -> None:
        _log_refused(503, "unavailable", "too many connections")
        tls.settimeout(self.limits.io_timeout_s)
        tls.sendall(error_answer(errors.Unavailable("too many connections", retry_after_s=1.0), False))
        _drain(tls, 1.0)


def _log_refused(status: int, code: str, message: str) -> None:
    """A request refused by the front itself (before any route: no path to name), logged as
    common/http.py's ``request_refused``."""
    log.info("request_refused", status=status, code=code, message=message[:200], where="tls_front")


def _drain(sock: ssl.SSLSocket, seconds: float) -> None:
    """Before closing with a request perhaps unread: read and drop what comes for a moment (until the
    client's EOF), so that the client gets the answer rather than a reset."""
    deadline = time.monotonic() + seconds
    scratch = bytearray(CHUNK)
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv_into(scratch) == 0:
                return
    except TRANSPORT:
        return
