"""The CS as one object: database, CA and the HTTPS API on one socket.

``start()`` opens the database (migrating it to the newest schema), binds ``listen_host:port`` (port 0
allowed; when 443 is not allowed it falls back to ``fallback_port`` and says so) and serves
with TLS. ``stop()`` releases waiting long-polls, stops serving and closes the database.
"""

from __future__ import annotations

import errno
import gc
import os
import socket
import uuid

from aiohttp import web

from common import errors, tls
from common import logging as dlog
from common.config import CSConfig
from common.daemon import bind_socket as bind
from cs import accounts, policies
from cs.app import build_app
from cs.ca import CA, Layout
from cs.db import meta
from cs.db.engine import Database, Listener
from cs.health.monitor import HealthMonitor
from cs.init import url_host
from cs.runner import Runner
from cs.state import CSState
from cs.webhook import WebhookSender

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


def owner_id() -> str:
    """This CS process's name on the jobs it claims: host, pid and a random part (unique per start)."""
    return f"{socket.gethostname()[:48]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


GC_THRESHOLDS = (20_000, 20, 20)  # young collections every 20,000 allocations rather than 700
_PROCESS_GC_THRESHOLDS = gc.get_threshold()  # what thaw_heap() puts back


def freeze_heap() -> None:
    """Take what is alive once the CS started (modules, app, engine) out of the garbage collector's
    scans (``gc.freeze``), and collect less often. Without it every full collection walks them
    all: under heartbeat load that stalled the event loop for up to ~200 ms several times a
    second, the whole p99 of bench/cs_heartbeats.py, and collections took ~10 % of the CPU.
    ``stop()`` thaws, so a process that runs several CS (the tests) still collects them."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def thaw_heap() -> None:
    gc.unfreeze()
    gc.set_threshold(*_PROCESS_GC_THRESHOLDS)


class CSService:
    def __init__(self, cfg: CSConfig, *, recheck_s: float = 1.0) -> None:
        self.cfg = cfg
        self.port = 0
        self._recheck_s = recheck_s
        self.state: CSState | None = None
        self._db: Database | None = None
        self._listener: Listener | None = None  # PostgreSQL: NOTIFY of settings changes by any CS process
        self._runner: web.AppRunner | None = None
        self.jobs: Runner | None = None  # the job runner (cs/runner.py), owner id unique per process
        self.health: HealthMonitor | None = None  # the periodic health evaluator (cs/health/monitor.py)
        self.webhook: WebhookSender | None = None  # alert notifications (cs/webhook.py), when configured

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
        await self._db.upgrade()  # to the newest migration (a no-op when already there)
        async with self._db.write() as session:  # refuses an uninitialised database
            if await meta.seal_auth_key(session, accounts.load_key(self.cfg.data_dir)):
                log.info("auth_key_sealed")  # stored in clear by an older CS
            await policies.ensure_default(session)  # the policy protect uses when none is named
        self.state = CSState.open(self.cfg, self._db, ca, recheck_s=self._recheck_s)
        if not self._db.is_sqlite:
            self._listener = Listener(self._db.url, meta.SETTINGS_CHANNEL, self.state.watch.changed)
            self._listener.start()
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
        self.jobs = Runner(self.state, owner_id(), poll_interval_s=self.cfg.job_poll_interval_s,
                           lease_s=self.cfg.job_lease_s)
        self.jobs.start()
        self.webhook = WebhookSender(self.state)
        self.webhook.start()
        self.health = HealthMonitor(self.state, on_change=self.webhook.wake)
        self.health.start()
        freeze_heap()
        log.info("cs_started", url=self.url, database=repr(self._db))

    async def stop(self) -> None:
        if self.health is not None:
            await self.health.stop()
            self.health = None
        if self.webhook is not None:
            await self.webhook.stop()
            self.webhook = None
        if self.jobs is not None:
            await self.jobs.stop()
            self.jobs = None
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self.state is not None:
            await self.state.watch.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._db is not None:
            await self._db.close()
            self._db = None
        thaw_heap()  # see freeze_heap
        log.info("cs_stopped", url=self.url)
