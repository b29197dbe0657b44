"""A stand-in CS for PS service tests: serves settings documents (one per component id, or a
default one) and records heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from common import tls
from common.http import identity, make_app


@dataclass
class FakeCS:
    document: dict[str, Any] = field(default_factory=lambda: {"disks": []})
    per_component: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = 1
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def publish(self, document: dict[str, Any], wake: bool = True, component_id: str | None = None) -> None:
        """New document; ``wake=False`` leaves waiting long-polls waiting (a slow CS)."""
        if component_id is None:
            self.document = document
        else:
            self.per_component[component_id] = document
        self.version += 1
        if wake:
            self._changed.set()
            self._changed = asyncio.Event()

    async def heartbeat(self, request: web.Request) -> web.Response:
        self.heartbeats.append((await request.json())["metrics"])
        return web.json_response({"ok": True, "time_ns": time.time_ns()})

    async def settings(self, request: web.Request) -> web.Response:
        known = int(request.query.get("version", "-1"))
        wait_s = min(float(request.query.get("wait_s", "0")), 10.0)
        if known >= self.version and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._changed.wait()
        doc = self.per_component.get(identity(request).component_id, self.document)
        return web.json_response({"version": self.version, "document": doc})

    def add_routes(self, app: web.Application) -> None:
        """More routes of a subclass (e.g. psfakehv.HvFakeCS's)."""

    async def start(self, files: tls.IdentityFiles) -> str:
        app = make_app()
        app.router.add_post("/v1/heartbeat", self.heartbeat)
        app.router.add_get("/v1/settings", self.settings)
        self.add_routes(app)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls.server_context(files))
        await site.start()
        return f"https://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
