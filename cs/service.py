"""The CS as one object: database, CA and the HTTPS API on one socket.

``start()`` opens the database (creating missing tables), binds ``listen_host:port`` (port 0
allowed; when 443 is not allowed it falls back to ``fallback_port`` and says so) and serves
with TLS. ``stop()`` releases waiting long-polls, stops serving and closes the database.
"""

from __future__ import annotations

import errno
import socket

from aiohttp import web

from common import errors, tls
from common import logging as dlog
from common.config import CSConfig
from common.daemon import bind_socket as bind
from cs.app import build_app
from cs.ca import CA, Layout
from cs.db import meta
from cs.db.engine import Database
from cs.init import url_host
from cs.state import CSState

log = dlog.get("drlab.cs")

PRIVILEGED_PORT = 443
KEEPALIVE_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 5.0



def bind_with_fallback(cfg: CSConfig) -> socket.socket:
    try:
        return bind(cfg.listen_host, cfg.port)
    except OSError as exc:
        denied = isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM)
        if not (denied and cfg.port == PRIVILEGED_PORT):
            raise errors.ConfigError(f"cannot listen on {cfg.listen_host}:{cfg.port}: {exc}") from exc
        log.warning("port_fallback", port=cfg.port, fallback_port=cfg.fallback_port,
                    reason="binding port 443 needs privileges")
        return bind(cfg.listen_host, cfg.fallback_port)


class CSService:
    def __init__(self, cfg: CSConfig, *, recheck_s: float = 1.0) -> None:
        self.cfg = cfg
        self.port = 0
        self._recheck_s = recheck_s
        self.state: CSState | None = None
        self._db: Database | None = None
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"CSService({self.cfg.data_dir}, port={self.port or '?'})"

    @property
    def url(self) -> str:
        return f"https://{url_host(self.cfg.listen_host)}:{self.port}"

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        layout = Layout(self.cfg.data_dir)
        ca = CA.load(layout)
        ssl_ctx = tls.server_context(layout.identity)
        self._db = Database(self.cfg.database_url())
        await self._db.create_all()
        async with self._db.read() as session:
            await meta.load_auth(session)  # refuses an uninitialised database
        self.state = CSState.open(self.cfg, self._db, ca, recheck_s=self._recheck_s)
        sock = bind_with_fallback(self.cfg)
        self.port = int(sock.getsockname()[1])
        self._runner = web.AppRunner(build_app(self.state), keepalive_timeout=KEEPALIVE_TIMEOUT_S,
                                     shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None)
        try:
            await self._runner.setup()
            await web.SockSite(self._runner, sock, ssl_context=ssl_ctx).start()
        except BaseException:
            sock.close()
            raise
        log.info("cs_started", url=self.url, database=repr(self._db))

    async def stop(self) -> None:
        if self.state is not None:
            await self.state.watch.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._db is not None:
            await self._db.close()
            self._db = None
        log.info("cs_stopped", url=self.url)
