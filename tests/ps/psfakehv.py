"""psfakecs.FakeCS plus the CS's PS-facing hypervisor routes (docs/API.md): credentials of a
hypervisor's account, inventory reports (409 for a fingerprint other than the pinned one), push
job claims (a second claim is 409) and results. It records what the PS sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from psfakecs import FakeCS

from common import errors
from common.http import json_error, read_json, require_role


@dataclass
class HvFakeCS(FakeCS):
    credentials: dict[str, dict[str, str]] = field(default_factory=dict)  # hypervisor -> {username, password}
    pinned: dict[str, str] = field(default_factory=dict)  # hypervisor -> fingerprint
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)  # job id -> claim answer
    claimed: list[str] = field(default_factory=list)
    credential_calls: list[str] = field(default_factory=list)
    inventories: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    results: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/ps/self/hypervisors/{name}/credentials", self._credentials)
        app.router.add_put("/v1/ps/self/hypervisors/{name}/inventory", self._inventory)
        app.router.add_post("/v1/ps/self/push/{job}/claim", self._claim)
        app.router.add_post("/v1/ps/self/push/{job}/result", self._result)

    async def _credentials(self, request: web.Request) -> web.Response:
        require_role(request, "ps")
        name = request.match_info["name"]
        self.credential_calls.append(name)
        if name not in self.credentials:
            return json_error(errors.NotFound(f"no hypervisor {name}"))
        return web.json_response(self.credentials[name])

    async def _inventory(self, request: web.Request) -> web.Response:
        require_role(request, "ps")
        name, body = request.match_info["name"], await read_json(request)
        pinned, seen = self.pinned.get(name), body.get("fingerprint")
        if pinned and seen and seen != pinned:
            return json_error(errors.Conflict("fingerprint differs from the pinned one"))
        self.inventories.append((name, body))
        return web.Response(status=204)

    async def _claim(self, request: web.Request) -> web.Response:
        require_role(request, "ps")
        job = request.match_info["job"]
        if job in self.claimed:
            return json_error(errors.Conflict(f"job {job} was claimed already"))
        if job not in self.claims:
            return json_error(errors.NotFound(f"no push job {job}"))
        self.claimed.append(job)
        return web.json_response(self.claims[job])

    async def _result(self, request: web.Request) -> web.Response:
        require_role(request, "ps")
        self.results.append((request.match_info["job"], await read_json(request)))
        return web.Response(status=204)
