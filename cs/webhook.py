"""Alert notifications to a webhook: the outbox (``alert_events``, written by cs/alerts.py in the
transaction that raised or cleared the alert) delivered over HTTPS by an owned, named task.

Delivery rules:
- events go out in the order they were written, one at a time: the oldest undelivered event
  blocks the ones after it until the receiver took it (a 2xx answer), so a clear never overtakes
  its raise;
- a failure (no connection, TLS, timeout, non-2xx) is retried with exponential backoff up to
  ``webhook_retry_max_backoff_s``; the attempt count, the next attempt and the last error stay
  in the row, so nothing is lost across CS restarts or webhook outages;
- a CS process claims the head event with a short lease before sending, so two CS processes on
  one database do not send it together (delivery is at least once: the body carries
  ``event_id`` for the receiver to drop a repeat);
- the URL may carry credentials (``https://user:token@host/...``, or a token in the query):
  they are sent (as HTTP basic auth for the user part) but never logged — logs and errors
  name only scheme, host, port and path.

Body: ``{"event_id", "event": "raised" | "cleared", "alert": {alert_id, code, severity, source_id,
source_role, source_host, disk_id, message, raised_ns, cleared_ns, active}}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from sqlalchemy import delete, select, update
from yarl import URL

from common import errors
from common import logging as dlog
from common.config import HealthConfig
from common.http import backoff_s
from cs.db.models import AlertEvent
from cs.state import CSState

log = dlog.get("drlab.cs.webhook")

Clock = Callable[[], int]
LEASE_FACTOR = 2.0  # a claim lasts this many request timeouts
KEEP_DELIVERED_NS = 7 * 86400 * 10**9  # delivered events are dropped after a week


def redacted(url: str) -> str:
    """``url`` without its user, password, query and fragment: what may be logged."""
    try:
        u = URL(url)
        return str(u.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<unparseable url>"


def target(url: str) -> tuple[str, str | None]:
    """(the URL to POST to, without credentials; the basic ``Authorization`` from its user part, if any)."""
    u = URL(url)
    if u.user is None:
        return str(u), None
    pair = f"{u.user}:{u.password or ''}".encode()
    return str(u.with_user(None)), "Basic " + base64.b64encode(pair).decode()


def client_context(cfg: HealthConfig) -> ssl.SSLContext:
    """Verifies the webhook's server against ``webhook_ca_file`` (else the system's CAs)."""
    try:
        return ssl.create_default_context(cafile=str(cfg.webhook_ca_file) if cfg.webhook_ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigError(f"health.webhook_ca_file {cfg.webhook_ca_file}: {type(exc).__name__}") from exc


class WebhookSender:
    def __init__(self, state: CSState, *, clock: Clock = time.time_ns) -> None:
        self.state = state
        self.cfg = state.cfg.health
        self.clock = clock
        self.delivered = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the URL: it may hold credentials
        return f"WebhookSender({redacted(self.cfg.webhook_url)}, delivered={self.delivered})"

    def start(self) -> None:
        if self._task is None and self.cfg.webhook_url:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(self.cfg)))
            self._task = asyncio.create_task(self._loop(), name="cs-alert-webhook")
            log.info("webhook_enabled", url=redacted(self.cfg.webhook_url))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                while await self.deliver_next():
                    pass
            except Exception as exc:  # the database is away, say: try again at the next poll
                log.error("webhook_outbox_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.webhook_poll_interval_s)
            self._wake.clear()

    async def deliver_next(self) -> bool:
        """Send the oldest undelivered event if it is due; True if one was delivered."""
        event = await self._claim()
        if event is None:
            return False
        error = await self._post(event)
        await self._record(event, error)
        return error is None

    async def _claim(self) -> AlertEvent | None:
        now = self.clock()
        async with self.state.db.write() as session:
            head = (await session.scalars(select(AlertEvent).where(AlertEvent.delivered_ns.is_(None))
                                          .order_by(AlertEvent.event_id).limit(1))).first()
            if head is None or head.next_attempt_ns > now or head.lease_until_ns > now:
                return None
            lease = now + int(self.cfg.webhook_timeout_s * LEASE_FACTOR * 1e9)
            claimed = await session.execute(
                update(AlertEvent).where(AlertEvent.event_id == head.event_id,
                                         AlertEvent.lease_until_ns == head.lease_until_ns)
                .values(lease_until_ns=lease).execution_options(synchronize_session=False))
            return head if getattr(claimed, "rowcount", 0) else None

    async def _post(self, event: AlertEvent) -> str | None:
        """None once the receiver took it, else what went wrong (no URL in it)."""
        assert self._session is not None
        url, auth = target(self.cfg.webhook_url)
        body = {"event_id": event.event_id, "event": event.event, "alert": event.body}
        try:
            async with self._session.post(url, json=body, headers={"Authorization": auth} if auth else None,
                                          allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=self.cfg.webhook_timeout_s)) as resp:
                await resp.read()
                return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError, ValueError) as exc:
            return type(exc).__name__

    async def _record(self, event: AlertEvent, error: str | None) -> None:
        now = self.clock()
        attempts = event.attempts + 1
        values: dict[str, Any]
        if error is None:
            values = {"delivered_ns": now, "attempts": attempts, "last_error": None, "lease_until_ns": 0}
            self.delivered += 1
            log.info("webhook_delivered", event_id=event.event_id, kind=event.event, alert_id=event.alert_id,
                     attempts=attempts)
        else:
            delay = max(backoff_s(attempts, base_s=0.5, max_s=self.cfg.webhook_retry_max_backoff_s), 0.05)
            values = {"attempts": attempts, "last_error": error, "lease_until_ns": 0,
                      "next_attempt_ns": now + int(delay * 1e9)}
            self.failures += 1
            log.warning("webhook_failed", event_id=event.event_id, url=redacted(self.cfg.webhook_url), error=error,
                        attempts=attempts, retry_in_s=round(delay, 3))
        async with self.state.db.write() as session:
            await session.execute(update(AlertEvent).where(AlertEvent.event_id == event.event_id).values(**values))
            if error is None:  # the outbox keeps delivered events for a while (to look at), not forever
                await session.execute(delete(AlertEvent).where(AlertEvent.delivered_ns.is_not(None),
                                                               AlertEvent.delivered_ns < now - KEEP_DELIVERED_NS))
