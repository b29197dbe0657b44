"""HTTP plumbing shared by every server and client: JSON errors, deny-by-default
authentication from the TLS client certificate (or, on the CS, an operator session), roles,
and a small typed JSON client."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from common import errors
from common import logging as dlog
from common.bulkhttp import BulkSender
from common.config import DEFAULT_STALL_TIMEOUT_S
from common.frontproto import PEER_CERT_HEADER
from common.tls import Identity, identity_from_peercert

log = dlog.get("drlab.http")

IDENTITY: web.RequestKey[Identity | None] = web.RequestKey("identity", Identity)  # type: ignore[arg-type]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(exc: errors.DrlabError) -> web.Response:
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, int(round(exc.retry_after_s))))
    return web.json_response(exc.to_json(), status=exc.status, headers=headers)


# Set (True) only on an app served on a private unix socket behind common/tlsfront.py: there the
# front's X-Drlab-Peer-Cert header is the peer certificate. Never on an app served over TCP.
FRONTED: web.AppKey[bool] = web.AppKey("drlab_fronted", bool)


def fronted_peercert(request: web.Request) -> dict[str, Any] | None:
    """The certificate the TLS front verified, for a request of a :data:`FRONTED` app that arrived
    over a unix socket (any other request: its header is ignored, the TLS session counts)."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    value = request.headers.get(PEER_CERT_HEADER)
    try:
        peercert = json.loads(base64.b64decode(value, validate=True)) if value else None
    except ValueError:
        return None
    return peercert if isinstance(peercert, dict) else None


def cert_identity(peercert: Any, revoked: Callable[[int], bool] | None = None) -> Identity | None:
    """The identity a verified peer certificate carries; None when it carries none (or a malformed
    one) or ``revoked`` says its serial is revoked."""
    try:
        ident = identity_from_peercert(peercert)
    except (ValueError, TypeError, AttributeError):
        return None
    return None if ident is None or (revoked is not None and revoked(ident.serial)) else ident


def peer_identity(request: web.Request, revoked: Callable[[int], bool] | None = None) -> Identity | None:
    if request.config_dict.get(FRONTED, False):
        return cert_identity(fronted_peercert(request), revoked)
    ssl_obj = request.transport.get_extra_info("ssl_object") if request.transport else None
    return cert_identity(ssl_obj.getpeercert(), revoked) if ssl_obj is not None else None


def log_refusal(path: str, method: str, exc: BaseException) -> None:
    """How a refused request is logged: ``request_refused`` for a DrlabError, else ``request_failed``
    (a bug; its message cut short)."""
    if isinstance(exc, errors.DrlabError):
        log.info("request_refused", path=path, method=method, code=exc.code, status=exc.status,
                 message=exc.message)
    else:
        log.error("request_failed", path=path, method=method, error=f"{type(exc).__name__}: {str(exc)[:200]}")


def identity(request: web.Request) -> Identity:
    """The caller's verified identity (the auth middleware guarantees it on protected routes)."""
    ident = request.get(IDENTITY)  # type: ignore[call-overload]
    if ident is None:
        raise errors.Unauthorized("a client certificate is required")
    return ident  # type: ignore[no-any-return]


ROOT_HINT: web.AppKey[str] = web.AppKey("root_hint", str)  # the message of GET / (always 400)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes JSON ``{code, message}``; ``GET /`` is a bad request (its message the
    app's :data:`ROOT_HINT`, e.g. the PS's data port says what it is: ps/check.py)."""
    if request.path == "/":
        return json_error(errors.BadRequest(request.app.get(ROOT_HINT, "no resource here; the API is under /v1")))
    try:
        return await handler(request)
    except errors.DrlabError as exc:
        log_refusal(request.path, request.method, exc)
        return json_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "bad_request")
        return web.json_response({"code": code, "message": exc.reason}, status=exc.status)
    except Exception as exc:  # a bug: log it, answer JSON without internals (CancelledError passes through)
        log_refusal(request.path, request.method, exc)
        return web.json_response({"code": "internal", "message": "internal error"}, status=500)


SAFE_METHODS = frozenset({"GET", "HEAD"})
BULK_MIN_BYTES = 64 * 1024  # a body this large goes over the bulk sender, when the client has one
SessionLookup = Callable[[str], Awaitable[Identity | None]]
SESSION_COOKIE = "drlab_session"
ROUTE_ROLES_ATTR = "__drlab_roles__"  # set by cs/api/spec.py's decorator: the roles a route declares


def role_allows(roles: Iterable[str], role: str, method: str) -> bool:
    """Whether ``role`` may call a route open to ``roles``: a ``reader`` (read-only operator) may do
    what ``admin`` may with GET/HEAD, and nothing else unless the route names ``reader`` itself."""
    allowed = set(roles)
    return role in allowed or (role == "reader" and "admin" in allowed and method in SAFE_METHODS)


def session_token(request: web.Request) -> str | None:
    """An operator's session token: ``Authorization: Bearer`` (API clients) or the session cookie."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.cookies.get(SESSION_COOKIE) or None


def _route_roles(request: web.Request) -> tuple[str, ...] | None:
    handler = getattr(request.match_info, "handler", None)
    roles = getattr(handler, ROUTE_ROLES_ATTR, None)
    return tuple(roles) if roles is not None else None


def auth_middleware(allow: Iterable[str] = (), revoked: Callable[[int], bool] | None = None,
                    sessions: SessionLookup | None = None) -> Any:
    """Deny by default: every path needs a verified client certificate (or, when ``sessions`` is
    given, a valid operator session), except those in ``allow`` (exact paths). A ``reader`` may only
    read (403 on any other method unless the route declares ``reader``); a route that declares its
    roles (cs/api/spec.py) refuses other roles here; handlers check too, with :func:`require_role`."""
    allowed = frozenset(allow)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        ident = peer_identity(request, revoked)
        if ident is None and sessions is not None:
            token = session_token(request)
            ident = await sessions(token) if token else None
        request[IDENTITY] = ident  # type: ignore[index]
        if request.path in allowed:
            return await handler(request)
        if ident is None:
            raise errors.Unauthorized("a valid client certificate or operator session is required")
        roles = _route_roles(request)
        if ident.role == "reader" and request.method not in SAFE_METHODS and "reader" not in (roles or ()):
            raise errors.Forbidden(f"a read-only operator may not call {request.method} {request.path}")
        if roles is not None and not role_allows(roles, ident.role, request.method):
            raise errors.Forbidden(f"role {ident.role} may not call {request.method} {request.path}")
        return await handler(request)

    return middleware


def authorize(ident: Identity | None, roles: Iterable[str], method: str, path: str) -> Identity:
    """``ident`` if it may call ``method path`` open to ``roles``: 401 without one, 403 for another role
    (what the auth middleware and :func:`require_role` answer; for callers outside a request)."""
    if ident is None:
        raise errors.Unauthorized("a valid client certificate or operator session is required")
    if not role_allows(roles, ident.role, method):
        raise errors.Forbidden(f"role {ident.role} may not call {method} {path}")
    return ident


def require_role(request: web.Request, *roles: str) -> Identity:
    """The caller's identity if its role may call this route (see :func:`role_allows`), else 403."""
    ident = identity(request)
    if not role_allows(roles, ident.role, request.method):
        raise errors.Forbidden(f"role {ident.role} may not call {request.method} {request.path}")
    return ident


async def read_json(request: web.Request, max_bytes: int = 1024 * 1024) -> dict[str, Any]:
    """The body as a JSON object, or 400: not JSON, nested too deep (RecursionError), NaN/Infinity,
    or a string (value or key) holding U+0000 or a lone surrogate (no database stores those)."""
    raw = await read_body(request, max_bytes)  # the whole body: one read() returns what has arrived
    try:
        body = json.loads(raw or b"{}", parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise errors.BadRequest(f"body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise errors.BadRequest("body must be a JSON object")
    _check_strings(body)
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_strings(document: Any) -> None:
    """400 if any string of ``document`` has U+0000 or a lone surrogate (iterative: any depth)."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and ("\x00" in item or not item.isascii() and _surrogate(item)):
            raise errors.BadRequest("strings must not hold U+0000 or lone surrogates")


def _surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """Read a binary body, refusing more than ``max_bytes`` before allocating it."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise errors.TooLarge(f"body of {request.content_length} bytes exceeds {max_bytes}")
    if request.content_length == 0:  # readexactly(0) of an ended stream raises
        return b""
    if request.content_length is not None:  # one join of what arrived: no growing buffer, no final copy
        try:
            return await request.content.readexactly(request.content_length)
        except asyncio.IncompleteReadError as exc:
            raise errors.BadRequest(f"body ended after {len(exc.partial)} of {request.content_length} bytes") \
                from None
    buf = bytearray()
    async for chunk in request.content.iter_chunked(1024 * 1024):
        buf += chunk
        if len(buf) > max_bytes:
            raise errors.TooLarge(f"body exceeds {max_bytes} bytes")
    return bytes(buf)


def make_app(*, allow: Iterable[str] = (), revoked: Callable[[int], bool] | None = None,
             client_max_size: int = 1024 * 1024, sessions: SessionLookup | None = None) -> web.Application:
    return web.Application(middlewares=[error_middleware, auth_middleware(allow, revoked, sessions)],
                           client_max_size=client_max_size)


class ApiClient:
    """JSON/bytes client for one server; raises :mod:`common.errors` classes on failure.

    A request takes at most ``timeout_s``; a peer that goes silent (no connection within
    ``stall_timeout_s``, or no byte of the answer for that long: a half-open connection) fails it
    sooner, with a retriable ``TransportError`` saying so (logged once, ``peer_silent``). A request
    given a longer ``timeout_s`` than the client's may be held that much longer by the server before
    it answers (a long poll: the settings' ``wait_s``): its silence bound grows by the difference."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, *, timeout_s: float = 30.0,
                 limit: int = 16, bulk_threads: int = 0, stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self._ssl = ssl_context
        self._stall_s = min(stall_timeout_s, timeout_s)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=self._stall_s, sock_read=self._stall_s)
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        # bodies of BULK_MIN_BYTES or more go over blocking TLS in worker threads (common/bulkhttp.py)
        self._bulk_threads = bulk_threads
        self._bulk: BulkSender | None = None
        self.proxy: str | None = None  # an HTTP CONNECT proxy for every request (ps/uplink.py)
        self.proxy_headers: dict[str, str] | None = None  # Proxy-Authorization, when the proxy has credentials

    def __repr__(self) -> str:
        return f"ApiClient({self.base_url})"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=self._limit, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._bulk is not None:  # like the session, made again by the next bulk request
            self._bulk.close()
            self._bulk = None

    async def request(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                      params: dict[str, Any] | None = None, timeout_s: float | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        if self._bulk_threads > 0 and data is not None and len(data) >= BULK_MIN_BYTES and not params:
            if self._bulk is None:
                self._bulk = BulkSender(self.base_url, self._ssl, threads=self._bulk_threads,
                                        timeout_s=self._timeout.total or 30.0, parse=_parse,
                                        stall_timeout_s=self._stall_s)
            return await self._bulk.request(method, path, data, headers=headers, timeout_s=timeout_s,
                                            proxy=self.proxy, proxy_headers=self.proxy_headers)
        timeout = self._request_timeout(timeout_s)
        try:
            async with self.session.request(method, self.base_url + path, json=json_body, data=data,
                                            params=params, timeout=timeout, headers=headers,
                                            proxy=self.proxy, proxy_headers=self.proxy_headers) as resp:
                raw = await resp.read()
                body = _parse(raw)
                if resp.status >= 400:
                    raise errors.from_response(resp.status, body, resp.headers.get("Retry-After"))
                return resp.status, body
        except aiohttp.ServerTimeoutError as exc:  # sock_connect / sock_read: the peer went silent
            bounds = timeout
            connecting = isinstance(exc, aiohttp.ConnectionTimeoutError)
            stall_s = (bounds.sock_connect if connecting else bounds.sock_read) or self._stall_s
            log.warning("peer_silent", request=f"{method} {self.base_url}{path}", stall_s=stall_s)
            raise errors.TransportError(f"{method} {self.base_url}{path}: the peer went silent for {stall_s:g} s "
                                        f"({type(exc).__name__})") from exc
        except (TimeoutError, aiohttp.ClientError, ConnectionError, ssl.SSLError) as exc:
            raise errors.TransportError(f"{method} {self.base_url}{path}: {type(exc).__name__}: {exc}") from exc

    def _request_timeout(self, timeout_s: float | None) -> aiohttp.ClientTimeout:
        """The bounds of a request given its own ``timeout_s`` (None: the client's): see the class.
        Always a ClientTimeout: aiohttp takes ``timeout=None`` for "no timeout at all"."""
        if not timeout_s:
            return self._timeout
        held_s = max(0.0, timeout_s - (self._timeout.total or timeout_s))
        stall_s = min(self._stall_s + held_s, timeout_s)
        return aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(self._stall_s, timeout_s), sock_read=stall_s)

    async def get(self, path: str, **kw: Any) -> Any:
        return (await self.request("GET", path, **kw))[1]

    async def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return (await self.request("POST", path, json_body=body if body is not None else {}, **kw))[1]

    async def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return (await self.request("PUT", path, json_body=body if body is not None else {}, **kw))[1]


def _parse(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return {"code": "bad_response", "message": raw[:200].decode(errors="replace")}


def backoff_s(attempt: int, base_s: float = 0.1, max_s: float = 5.0) -> float:
    """Exponential backoff with full jitter."""
    return float(random.uniform(0, min(max_s, base_s * (2 ** min(attempt, 16)))))


async def retrying(call: Callable[[], Awaitable[Any]], *, what: str, max_backoff_s: float = 5.0,
                   attempts: int | None = None) -> Any:
    """Call until it succeeds or fails with a non-retriable error (or ``attempts`` run out)."""
    attempt = 0
    while True:
        try:
            return await call()
        except errors.DrlabError as exc:
            attempt += 1
            if not exc.retriable or (attempts is not None and attempt >= attempts):
                raise
            delay = exc.retry_after_s if exc.retry_after_s is not None else backoff_s(attempt, max_s=max_backoff_s)
            log.info("retrying", what=what, attempt=attempt, delay_s=round(delay, 3), error=exc.message)
            await asyncio.sleep(delay)


U64_MAX = (1 << 64) - 1


def query_u64(query: Mapping[str, str], name: str, low: int = 0) -> int:
    """A required query parameter holding a decimal integer in [low, 2^64) (400 otherwise)."""
    text = query.get(name)
    if text is None:
        raise errors.BadRequest(f"query parameter {name} is required")
    if not text.isascii() or not text.isdigit() or len(text) > 20 or not low <= int(text) <= U64_MAX:
        raise errors.BadRequest(f"{name} must be an integer in [{low}, 2^64)")
    return int(text)
