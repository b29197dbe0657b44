"""Helpers for the CS tests: enrol components through the real registration, call routes raw."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from common import component, tls
from common.http import ApiClient

PS_PORTS = {"data": 19443}
MT_PORTS = {"data": 29443, "control": 29080}


@dataclass
class Enrolled:
    role: str
    host_id: str
    component_id: str
    files: tls.IdentityFiles
    api: ApiClient

    @property
    def ssl(self) -> ssl.SSLContext:
        return tls.client_context(self.files)


@dataclass
class Site:
    """A CS with components registered against it; closes their clients at the end."""

    env: Any
    tmp: Path
    members: list[Enrolled] = field(default_factory=list)

    async def enroll(self, role: str, host_id: str, ports: dict[str, int] | None = None,
                     address: str = "127.0.0.1") -> Enrolled:
        files = tls.IdentityFiles(self.tmp / f"id-{role}-{host_id}-{len(self.members)}")
        meta = await component.register(self.env.url, self.env.passphrase, role=role, host_id=host_id,
                                        address=address, ports=ports if ports is not None else {}, files=files)
        member = Enrolled(role, host_id, str(meta["component_id"]), files,
                          ApiClient(self.env.url, tls.client_context(files), timeout_s=15.0))
        self.members.append(member)
        return member

    async def ps(self, host_id: str = "ps1", ports: dict[str, int] | None = None) -> Enrolled:
        return await self.enroll("ps", host_id, ports or PS_PORTS)

    async def mt(self, host_id: str = "mt1", ports: dict[str, int] | None = None) -> Enrolled:
        return await self.enroll("mt", host_id, ports or MT_PORTS)

    async def agent(self, host_id: str = "m1", disks: dict[str, int] | None = None) -> tuple[Enrolled, dict[str, str]]:
        """An agent that reported its disks: (agent, {name: disk_id})."""
        agent = await self.enroll("agent", host_id)
        body = {"disks": [{"name": n, "size_bytes": s} for n, s in (disks or {"disk0": 1 << 20}).items()]}
        reply = await agent.api.put("/v1/machines/self/disks", body)
        return agent, {d["name"]: d["disk_id"] for d in reply["disks"]}

    async def close(self) -> None:
        for m in self.members:
            await m.api.close()


async def settings(member: Enrolled, version: int = -1, wait_s: float = 0) -> dict[str, Any]:
    reply = await member.api.get("/v1/settings", params={"version": version, "wait_s": wait_s},
                                 timeout_s=wait_s + 15)
    return dict(reply)


async def raw(url: str, ctx: ssl.SSLContext, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request without the error mapping of ApiClient: (status, parsed JSON body)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.request(method, url + path, json=body) as resp:
            return resp.status, await resp.json(content_type=None)


def anonymous(env: Any) -> ssl.SSLContext:
    """TLS that verifies the CS but presents no client certificate."""
    return tls.client_context(None, ca_pem=(env.data_dir / "ca" / "cert.pem").read_bytes())
