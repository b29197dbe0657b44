"""The PS's data port behind the threaded TLS front (common/tlsfront.py; ``PSConfig.ingest_front``).

- ``PUT /v1/disks/{disk_id}/batches/{gen}/{seq}`` is native: the identity is the peer
  certificate's (common/tls.py ``identity_from_peercert``; a revoked serial counts as none), then
  ps/ingest.py's ``admit_batch`` on the PS's loop (role, disk, generation, size: before any body
  byte is read), the body read by the connection's thread with ``recv_into``, then
  ``ingest_batch`` on the loop (one coroutine: checks again, validation, durable store).
- Everything else (status, hashes, check, metrics, ``GET /``) goes to the unchanged data app,
  served on the unix socket :func:`relay_socket_path` (directory 0700, socket 0600) and marked
  :data:`common.http.FRONTED`, so that it takes the caller's identity from the front's header.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import ssl
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from common import errors
from common import logging as dlog
from common.frontproto import Head, Limits
from common.http import FRONTED, cert_identity, log_refusal
from common.tls import Identity
from common.tlsfront import NativeCall, TLSFront
from ps.ingest import IngestContext, admit_batch, ingest_batch

log = dlog.get("drlab.ps.front")

BATCH = re.compile(r"^/v1/disks/([^/]+)/batches/([^/]+)/([^/]+)$")
LOOP_TIMEOUT_S = 300.0  # the longest a connection thread waits for the loop (a store waits for its fsync)
MAX_UNIX_PATH = 100  # AF_UNIX paths are at most 107 bytes


def relay_socket_path(data_dir: Path) -> tuple[Path, bool]:
    """The app's unix socket: ``{data_dir}/front/data.sock`` (the directory made 0700), or in a new
    private temporary directory when that path is too long for a unix socket (then True: remove it)."""
    directory = data_dir / "front"
    if len(str(directory / "data.sock")) <= MAX_UNIX_PATH:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        return directory / "data.sock", False
    return Path(tempfile.mkdtemp(prefix="drlab-ps-")) / "data.sock", True  # mkdtemp: 0700


class BatchCall:
    """One native batch PUT, driven from a connection thread (common/tlsfront.py NativeCall)."""

    def __init__(self, ctx: IngestContext, loop: asyncio.AbstractEventLoop, peercert: dict[str, Any],
                 path: str, parts: tuple[str, str, str]) -> None:
        self.ctx, self.loop, self.peercert, self.path, self.parts = ctx, loop, peercert, path, parts

    def admit(self, length: int) -> None:
        self._run(admit_batch(self.ctx, self._identity(), *self.parts, length))

    def finish(self, body: bytearray) -> tuple[int, Any]:
        return self._run(ingest_batch(self.ctx, self._identity(), *self.parts, body))

    def _identity(self) -> Identity | None:
        """As common/http.py's auth middleware: the verified certificate, unless revoked."""
        return cert_identity(self.peercert, self.ctx.registry.is_revoked)

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
            raise errors.Unavailable("the process server is stopping") from None
        try:
            return future.result(LOOP_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            raise errors.Unavailable("the batch was not stored in time") from None
        except asyncio.CancelledError:
            raise errors.Unavailable("the process server is stopping") from None


class DataFront:
    """The front and the app's unix site, started and stopped together."""

    def __init__(self, ctx: IngestContext, limits: Limits | None = None) -> None:
        self.ctx = ctx
        self.limits = limits or Limits(relay_max_bytes=ctx.cfg.max_batch_bytes)
        self.front: TLSFront | None = None
        self.path: Path | None = None
        self._private_dir = False

    def __repr__(self) -> str:
        return f"DataFront({self.path})"

    async def start(self, runner: web.AppRunner, sock: Any, ssl_context: ssl.SSLContext) -> None:
        """Serve ``runner``'s app (marked FRONTED before setup) on the unix socket, then the front on ``sock``."""
        if not runner.app.get(FRONTED, False):
            raise RuntimeError("mark the data app FRONTED (common/http.py) before its runner is set up")
        self.path, self._private_dir = relay_socket_path(self.ctx.cfg.data_dir)
        self.path.unlink(missing_ok=True)  # left by a crash
        site = web.UnixSite(runner, str(self.path))
        await site.start()
        os.chmod(self.path, 0o600)
        loop = asyncio.get_running_loop()

        def native(head: Head, peercert: dict[str, Any]) -> NativeCall | None:
            match = BATCH.match(head.path) if head.method == "PUT" else None
            if match is None:
                return None
            return BatchCall(self.ctx, loop, peercert, head.path, (match[1], match[2], match[3]))

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
