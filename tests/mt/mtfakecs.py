"""A stand-in CS for MT service tests (the real CS has its own integration test): it serves one
settings document, records heartbeats and failover job results."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from common import tls
from common.http import identity, make_app


@dataclass
class FakeCS:
    document: dict[str, Any] = field(default_factory=lambda: {"disks": [], "jobs": []})
    version: int = 1
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    refuse_results: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def publish(self, document: dict[str, Any]) -> None:
        self.document = document
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def heartbeat(self, request: web.Request) -> web.Response:
        self.heartbeats.append((await request.json())["metrics"])
        return web.json_response({"ok": True, "time_ns": time.time_ns()})

    async def settings(self, request: web.Request) -> web.Response:
        known = int(request.query.get("version", "-1"))
        wait_s = min(float(request.query.get("wait_s", "0")), 5.0)
        if known >= self.version and wait_s > 0:
            try:
                await asyncio.wait_for(self._changed.wait(), wait_s)
            except TimeoutError:
                pass
        return web.json_response({"version": self.version, "document": self.document})

    async def job_result(self, request: web.Request) -> web.Response:
        assert identity(request).role == "mt"
        if self.refuse_results > 0:
            self.refuse_results -= 1
            return web.json_response({"code": "unavailable", "message": "try later"}, status=503)
        self.results.setdefault(request.match_info["job_id"], []).append(await request.json())
        return web.json_response({"ok": True})

    async def start(self, files: tls.IdentityFiles) -> str:
        app = make_app()
        app.router.add_post("/v1/heartbeat", self.heartbeat)
        app.router.add_get("/v1/settings", self.settings)
        app.router.add_post("/v1/jobs/{job_id}/result", self.job_result)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls.server_context(files))
        await site.start()
        return f"https://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
