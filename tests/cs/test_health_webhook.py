"""Alert notifications: a real HTTPS receiver on loopback (its own CA, given to the CS as the
webhook's CA file) gets every raise and clear, in order, with the credentials of the URL, through
failures (retried with backoff) and through an outage spanning a CS restart (the outbox keeps
them); the credentials never reach a log."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from cshelpers import Enrolled, Site

from common import tls
from common.config import ConfigError, HealthConfig
from cs.service import CSService
from cs.webhook import client_context, redacted, target
from tests.conftest import NewDbUrl, start_cs, stop_cs

TOKEN, QUERY_SECRET = "s3cr3t-tok", "qs-secret"


@dataclass
class Receiver:
    """An HTTPS webhook receiver: records what it got; answers ``fail_next`` requests with 503."""

    ssl_ctx: ssl.SSLContext
    port: int = 0
    fail_next: int = 0
    got: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail_next > 0:
            self.fail_next -= 1
            self.refused += 1
            return web.json_response({"error": "busy"}, status=503)
        self.got.append({"auth": request.headers.get("Authorization"), "token": request.query.get("token"),
                         "path": request.path, "body": await request.json()})
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/alerts", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.ssl_ctx)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def events(self) -> list[tuple[str, str, str | None]]:
        return [(g["body"]["event"], g["body"]["alert"]["code"], g["body"]["alert"]["disk_id"]) for g in self.got]


def receiver_tls(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A CA of the receiver's own and a server certificate for 127.0.0.1: (server context, CA file)."""
    ca_key, ca_cert = tls.make_ca("webhook test CA")
    key = tls.new_key()
    cert = tls.issue(ca_key, ca_cert, tls.make_csr(key, "cs", "webhook"), component_id="webhook", role="cs",
                     hosts=["127.0.0.1"])
    (tmp / "hook.key").write_bytes(tls.key_pem(key))
    (tmp / "hook.crt").write_bytes(cert)
    (tmp / "hook-ca.pem").write_bytes(ca_cert)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(tmp / "hook.crt"), str(tmp / "hook.key"))
    return ctx, tmp / "hook-ca.pem"


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[tuple[Receiver, Path]]:
    ctx, ca_file = receiver_tls(tmp_path)
    r = Receiver(ctx)
    await r.start()
    try:
        yield r, ca_file
    finally:
        await r.stop()


async def until(what: str, check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def throttle(active: bool) -> dict[str, Any]:
    return {"throttle": {"active": active, "reason": "cache_free", "free_pct": 10.0, "threshold_pct": 20.0},
            "disks": {}}


async def beat(member: Enrolled, metrics: dict[str, Any]) -> None:
    await member.api.post("/v1/heartbeat", {"metrics": metrics})


def test_the_url_is_logged_without_its_credentials() -> None:
    url = f"https://hook:{TOKEN}@hooks.example.test:8443/a/b?token={QUERY_SECRET}#x"
    assert redacted(url) == "https://hooks.example.test:8443/a/b"
    plain, auth = target(url)
    assert TOKEN not in plain and QUERY_SECRET in plain
    assert auth == "Basic " + base64.b64encode(f"hook:{TOKEN}".encode()).decode()
    assert target("https://hooks.example.test/x")[1] is None
    assert TOKEN not in repr(HealthConfig(webhook_url=url))


@pytest.mark.timeout(90)
async def test_webhook_gets_raise_and_clear_through_failures_and_a_cs_restart(
        tmp_path: Path, receiver: tuple[Receiver, Path], new_db_url: NewDbUrl) -> None:
    hook, ca_file = receiver
    url = f"https://hook:{TOKEN}@127.0.0.1:{hook.port}/alerts?token={QUERY_SECRET}"
    health = HealthConfig(evaluate_interval_s=3600.0, webhook_url=url, webhook_ca_file=ca_file,
                          webhook_poll_interval_s=0.05, webhook_retry_max_backoff_s=0.2, webhook_timeout_s=5.0)
    with structlog.testing.capture_logs() as logs:
        env = await start_cs(tmp_path / "cs", db_url=await new_db_url(), health=health)
        site = Site(env, tmp_path)
        try:
            ps = await site.ps()
            hook.fail_next = 3  # the receiver refuses the first attempts: retried with backoff
            await beat(ps, throttle(True))
            await beat(ps, throttle(False))
            await until("raise and clear delivered", lambda: len(hook.got) == 2)
            assert hook.refused == 3
            assert hook.events() == [("raised", "ps_throttled", None), ("cleared", "ps_throttled", None)]
            first, second = (g["body"] for g in hook.got)
            assert first["event_id"] < second["event_id"]
            assert first["alert"]["alert_id"] == second["alert"]["alert_id"]
            assert first["alert"]["source_host"] == "ps1" and first["alert"]["severity"] == "critical"
            assert first["alert"]["active"] is True and second["alert"]["cleared_ns"] is not None
            assert all(g["auth"] == "Basic " + base64.b64encode(f"hook:{TOKEN}".encode()).decode()
                       and g["token"] == QUERY_SECRET and g["path"] == "/alerts" for g in hook.got)

            await hook.stop()  # the webhook is down: a raise and a clear wait in the outbox ...
            await beat(ps, throttle(True))
            await beat(ps, throttle(False))
            await asyncio.sleep(0.3)
            await env.service.stop()  # ... across a CS restart
            hook_port = hook.port
            await hook.start()
            assert hook.port == hook_port
            env.service = CSService(env.cfg)
            await env.service.start()
            await until("the outbox delivered after the restart", lambda: len(hook.got) == 4)
            assert hook.events()[2:] == [("raised", "ps_throttled", None), ("cleared", "ps_throttled", None)]
            assert len({g["body"]["event_id"] for g in hook.got}) == 4
        finally:
            await site.close()
            await stop_cs(env)
    rendered = " ".join(repr(e) for e in logs)
    assert "webhook_failed" in rendered and "webhook_delivered" in rendered
    assert TOKEN not in rendered and QUERY_SECRET not in rendered


def test_an_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "missing-ca.pem"
    with pytest.raises(ConfigError) as err:
        client_context(HealthConfig(webhook_url=f"https://u:{TOKEN}@127.0.0.1/x", webhook_ca_file=bad))
    assert "missing-ca.pem" in str(err.value) and TOKEN not in str(err.value)
