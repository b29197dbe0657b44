"""A daemon's data port behind the threaded TLS front (common/tlsfront.py): the PS's (ps/front.py)
and the MT's (mt/front.py), each with its batch route (a :class:`BatchRoute`).

- ``PUT /v1/disks/{disk_id}/batches/{gen}/{seq}`` is native: the identity is the peer
  certificate's (common/http.py ``cert_identity``: a revoked serial counts as none), then the
  route's ``admit`` on the daemon's loop (role, disk, generation, size: before any body byte is
  read), the body read by the connection's thread with ``recv_into``, then the route's ``finish``
  on the loop (one coroutine: checks again, validation, durable store).
- Everything else goes to the daemon's unchanged data app, served on the unix socket
  :func:`relay_socket_path` (directory 0700, socket 0600) and marked :data:`common.http.FRONTED`,
  so that it takes the caller's identity from the front's header.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import ssl
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from common import errors
from common import logging as dlog
from common.frontproto import Head, Limits
from common.http import FRONTED, cert_identity, log_refusal, read_body, require_role
from common.tls import Identity
from common.tlsfront import NativeCall, TLSFront

log = dlog.get("drlab.batchfront")

BATCH = re.compile(r"^/v1/disks/([^/]+)/batches/([^/]+)/([^/]+)\Z")
LOOP_TIMEOUT_S = 300.0  # the longest a connection thread waits for the loop (a store waits for its fsync)
MAX_UNIX_PATH = 100  # AF_UNIX paths are at most 107 bytes

Parts = tuple[str, str, str]  # (disk id, generation, seq) as the URL gives them


@dataclass(frozen=True)
class BatchRoute:
    """A daemon's batch PUT split where its body is read: ``admit(ident, parts, length)`` refuses
    what it can before the body, ``finish(ident, parts, body)`` checks again and stores it,
    returning (status, JSON document). ``who`` names the daemon in the 503 of a stopping one."""

    admit: Callable[[Identity | None, Parts, int | None], Coroutine[Any, Any, Any]]
    finish: Callable[[Identity | None, Parts, bytes | bytearray], Coroutine[Any, Any, tuple[int, Any]]]
    is_revoked: Callable[[int], bool]
    who: str


def route_of(ctx: Any, admit: Callable[..., Coroutine[Any, Any, Any]],
             finish: Callable[..., Coroutine[Any, Any, tuple[int, Any]]], who: str) -> BatchRoute:
    """The route of a daemon whose ingest module has ``admit(ctx, ident, disk, gen, seq, length)``
    and ``finish(ctx, ident, disk, gen, seq, body)`` and whose ``ctx.registry`` knows revocations."""
    return BatchRoute(admit=lambda ident, parts, length: admit(ctx, ident, *parts, length),
                      finish=lambda ident, parts, body: finish(ctx, ident, *parts, body),
                      is_revoked=ctx.registry.is_revoked, who=who)


async def serve_put(request: web.Request, route: BatchRoute, role: str, max_bytes: int) -> web.Response:
    """The batch PUT served by the daemon's own aiohttp app (its data port without the front, or a
    test): the route's two halves around reading the body, as the front runs them."""
    ident = require_role(request, role)
    match = request.match_info
    parts = (match["disk_id"], match["gen"], match["seq"])
    await route.admit(ident, parts, request.content_length)
    body = await read_body(request, max_bytes)
    status, document = await route.finish(ident, parts, body)
    return web.json_response(document, status=status)


def relay_socket_path(data_dir: Path) -> tuple[Path, bool]:
    """The app's unix socket: ``{data_dir}/front/data.sock`` (the directory made 0700), or in a new
    private temporary directory when that path is too long for a unix socket (then True: remove it)."""
    directory = data_dir / "front"
    if len(str(directory / "data.sock")) <= MAX_UNIX_PATH:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        return directory / "data.sock", False
    return Path(tempfile.mkdtemp(prefix="drlab-front-")) / "data.sock", True  # mkdtemp: 0700


class BatchCall:
    """One native batch PUT, driven from a connection thread (common/tlsfront.py NativeCall)."""

    def __init__(self, route: BatchRoute, loop: asyncio.AbstractEventLoop, peercert: dict[str, Any],
                 path: str, parts: Parts) -> None:
        self.route, self.loop, self.peercert, self.path, self.parts = route, loop, peercert, path, parts

    def admit(self, length: int) -> None:
        self._run(self.route.admit(self._identity(), self.parts, length))

    def finish(self, body: bytearray) -> tuple[int, Any]:
        return self._run(self.route.finish(self._identity(), self.parts, body))

    def _identity(self) -> Identity | None:
        """As common/http.py's auth middleware: the verified certificate, unless revoked."""
        return cert_identity(self.peercert, self.route.is_revoked)

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run on the loop and wait; a refusal is logged as common/http.py's error_middleware does."""
        try:
            return self._wait(coro)
        except errors.DrlabError as exc:
            log_refusal(self.path, "PUT", exc)
            raise
        except Exception as exc:  # a bug: logged, answered as error_middleware does (500 without internals)
            log_refusal(self.path, "PUT", exc)
            raise errors.DrlabError("internal error") from exc

    def _wait(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop is closed: the PS is stopping
            coro.close()
            raise errors.Unavailable(f"the {self.route.who} is stopping") from None
        try:
            return future.result(LOOP_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            raise errors.Unavailable("the batch was not stored in time") from None
        except asyncio.CancelledError:
            raise errors.Unavailable(f"the {self.route.who} is stopping") from None


class DataFront:
    """The front and the app's unix site, started and stopped together."""

    def __init__(self, route: BatchRoute, data_dir: Path, limits: Limits) -> None:
        self.route, self.data_dir, self.limits = route, data_dir, limits
        self.front: TLSFront | None = None
        self.path: Path | None = None
        self._private_dir = False

    def __repr__(self) -> str:
        return f"DataFront({self.path})"

    async def start(self, runner: web.AppRunner, sock: Any, ssl_context: ssl.SSLContext) -> None:
        """Serve ``runner``'s app (marked FRONTED before setup) on the unix socket, then the front on ``sock``."""
        if not runner.app.get(FRONTED, False):
            raise RuntimeError("mark the data app FRONTED (common/http.py) before its runner is set up")
        self.path, self._private_dir = relay_socket_path(self.data_dir)
        self.path.unlink(missing_ok=True)  # left by a crash
        site = web.UnixSite(runner, str(self.path))
        await site.start()
        os.chmod(self.path, 0o600)
        loop = asyncio.get_running_loop()

        def native(head: Head, peercert: dict[str, Any]) -> NativeCall | None:
            match = BATCH.match(head.path) if head.method == "PUT" else None
            if match is None:
                return None
            return BatchCall(self.route, loop, peercert, head.path, (match[1], match[2], match[3]))

        self.front = TLSFront(sock, ssl_context, str(self.path), native, self.limits)
        self.front.start()

    async def stop(self) -> None:
        """Stop the front's threads (off the loop: they may wait for it); the runner is the caller's."""
        if self.front is not None:
            front, self.front = self.front, None
            await asyncio.to_thread(front.stop)
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            if self._private_dir:
                shutil.rmtree(self.path.parent, ignore_errors=True)
            self.path = None
