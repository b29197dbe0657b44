"""How the PS's uploads leave it: through an HTTP CONNECT proxy or not, and how fast.

The settings document's ``upload`` object (cs/psconfig.py) carries ``proxy`` ``{url, username?,
password?}`` and ``bandwidth`` ``{bytes_per_s, windows}`` (common/bandwidth.py); each is absent
when the CS holds none for this PS. Without a CS proxy, the static ``upload_proxy`` of the PS's
configuration applies (unattended installs); the CS's setting wins when present.

A change applies to the next request: a request in flight keeps its connection and, if it fails,
is retried by its pipeline through the new route, so nothing is dropped. The password never
appears in a log, a repr or the metrics. A failure that names the proxy (refused, 407) is logged
as an error once per failing spell and shown in the metrics (``proxy_error``) until an upload
gets through again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yarl

from common import bandwidth
from common import logging as dlog
from common.config import PSConfig

log = dlog.get("drlab.ps.uplink")


@dataclass(frozen=True)
class Proxy:
    url: str
    username: str = ""
    password: str = ""

    def __repr__(self) -> str:
        return f"Proxy({self.shown}, user={self.username or '-'})"

    @property
    def shown(self) -> str:
        """The URL without any credentials written into it."""
        return str(yarl.URL(self.url).with_user(None))

    def headers(self) -> dict[str, str] | None:
        """``Proxy-Authorization: Basic`` when the proxy has credentials."""
        if not self.username:
            return None
        return {"Proxy-Authorization": aiohttp.encode_basic_auth(self.username, self.password)}


def parse_proxy(item: Any) -> Proxy | None:
    """A proxy from the document's ``upload.proxy`` (None when absent or unusable)."""
    if not isinstance(item, dict) or not isinstance(item.get("url"), str) or not item["url"]:
        return None
    user, password = item.get("username") or "", item.get("password") or ""
    return Proxy(item["url"], str(user), str(password))


def static_proxy(cfg: PSConfig) -> Proxy | None:
    """The configuration's ``upload_proxy`` (password read from ``upload_proxy_password_file``)."""
    if not cfg.upload_proxy:
        return None
    password = ""
    if cfg.upload_proxy_password_file:
        password = Path(cfg.upload_proxy_password_file).read_text().rstrip("\r\n")
    return Proxy(cfg.upload_proxy, cfg.upload_proxy_username, password)


def local_minute() -> int:
    now = datetime.now().astimezone()
    return now.hour * 60 + now.minute


def is_proxy_failure(exc: BaseException) -> bool:
    """Whether a failed request failed at the proxy (aiohttp's proxy errors, 407, proxy refused)."""
    text = str(exc)
    return "Proxy" in text or "407" in text


class Uplink:
    """The current proxy and bandwidth plan of the uploads, with the bucket that applies the plan."""

    def __init__(self, fallback: Proxy | None = None, *, clock: Callable[[], float] = time.monotonic,
                 minute: Callable[[], int] = local_minute) -> None:
        self._fallback = fallback
        self.proxy: Proxy | None = fallback
        self.plan = bandwidth.Plan()
        self.bucket = bandwidth.TokenBucket(clock)
        self._minute = minute
        self.proxy_error: str | None = None
        self.on_proxy: Callable[[Proxy | None], None] = lambda _p: None  # Clients re-routes its clients

    def __repr__(self) -> str:
        return f"Uplink(proxy={self.proxy!r}, limit={self.plan.bytes_per_s})"

    def apply(self, document: dict[str, Any]) -> None:
        """Take ``upload`` from a settings document (absent: no CS proxy, no limit)."""
        upload = document.get("upload") if isinstance(document.get("upload"), dict) else {}
        assert isinstance(upload, dict)
        proxy = parse_proxy(upload.get("proxy")) or self._fallback
        if proxy != self.proxy:
            self.proxy, self.proxy_error = proxy, None
            log.info("upload_proxy_changed", proxy=repr(proxy) if proxy else "direct")
            self.on_proxy(proxy)
        try:
            plan = bandwidth.parse_plan(upload["bandwidth"]) if "bandwidth" in upload else bandwidth.Plan()
        except ValueError as exc:
            log.error("upload_bandwidth_ignored", error=str(exc))
            return
        if plan != self.plan:
            self.plan = plan
            log.info("upload_bandwidth_changed", **plan.to_json())

    def limit(self) -> int:
        """The limit now (bytes/s, 0: none), by the schedule in local time."""
        return self.plan.limit_at(self._minute())

    async def throttle(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may go out under the current limit."""
        self.bucket.set_rate(self.limit())
        delay = self.bucket.reserve(nbytes)
        if delay > 0:
            await asyncio.sleep(delay)

    def failed(self, exc: BaseException) -> None:
        """Note a failed upload: a proxy failure is logged as an error once per spell."""
        if self.proxy is None or not is_proxy_failure(exc):
            return
        message = str(exc)[:300]
        if self.proxy_error is None:
            log.error("upload_proxy_failed", proxy=repr(self.proxy), error=message)
        self.proxy_error = message

    def succeeded(self) -> None:
        if self.proxy_error is not None:
            log.info("upload_proxy_recovered", proxy=repr(self.proxy))
            self.proxy_error = None

    def metrics(self) -> dict[str, Any]:
        """For the heartbeat: the route and limit, never the password."""
        return {"proxy": self.proxy.shown if self.proxy else None, "proxy_error": self.proxy_error,
                "bytes_per_s": self.limit()}
