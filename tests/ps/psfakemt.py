"""A small stand-in MT for PS tests before (and besides) the real one: it opens real seals,
checks the change batch, keeps what it received, and can be told to refuse requests."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from common import errors, tls
from common.http import make_app, read_body, require_role
from common.wire import batch as wbatch
from common.wire import seal


@dataclass
class FakeMT:
    key: bytes
    generation: int = 1
    received: dict[tuple[int, int], bytes] = field(default_factory=dict)
    senders: set[tuple[bytes, int]] = field(default_factory=set)
    refuse: list[errors.DrlabError] = field(default_factory=list)
    requests: int = 0
    status_calls: int = 0
    applied_lag: int = 0
    delay_s: float = 0.0
    concurrent: int = 0
    max_concurrent: int = 0
    _runner: web.AppRunner | None = None

    def contiguous(self, gen: int) -> int:
        seq = 0
        while (gen, seq + 1) in self.received:
            seq += 1
        return seq

    def progress(self) -> dict[str, int]:
        received = self.contiguous(self.generation)
        return {"mt_received": received, "mt_applied": max(0, received - self.applied_lag)}

    async def put(self, request: web.Request) -> web.Response:
        require_role(request, "ps")
        self.requests += 1
        if self.refuse:
            raise self.refuse.pop(0)
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            await asyncio.sleep(self.delay_s)
            return await self._receive(request)
        finally:
            self.concurrent -= 1

    async def _receive(self, request: web.Request) -> web.Response:
        gen, seq = int(request.match_info["gen"]), int(request.match_info["seq"])
        if gen < self.generation:
            raise errors.StaleGeneration("old generation")
        body = await read_body(request, 64 << 20)
        hdr, plain = seal.open_sealed(body, lambda epoch: self.key)
        wbatch.decode(plain)
        assert (hdr.generation, hdr.seq) == (gen, seq)
        self.senders.add((hdr.sender_id, hdr.incarnation))
        status = 200 if (gen, seq) in self.received else 201
        self.received[(gen, seq)] = plain
        return web.json_response(self.progress(), status=status)

    async def status(self, request: web.Request) -> web.Response:
        require_role(request, "ps", "admin")
        self.status_calls += 1
        return web.json_response({"generation": self.generation, **self.progress(), "applied_gen": self.generation})

    async def start(self, files: tls.IdentityFiles, sock: socket.socket | None = None) -> str:
        app = make_app(client_max_size=64 << 20)
        app.router.add_put("/v1/disks/{disk_id}/batches/{gen}/{seq}", self.put)
        app.router.add_get("/v1/disks/{disk_id}/status", self.status)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        ctx = tls.server_context(files)
        site: web.BaseSite = (web.SockSite(self._runner, sock, ssl_context=ctx) if sock is not None
                              else web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx))
        await site.start()
        port = self._runner.addresses[0][1]
        return f"https://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def identities(tmp: Any) -> tuple[tls.IdentityFiles, tls.IdentityFiles, str]:
    """A CA, an MT identity and a PS identity: (mt_files, ps_files, ps_component_id)."""
    ca_key, ca_cert = tls.make_ca()
    mt = tls.IdentityFiles(tmp / "mt-id")
    tls.issue_local(ca_key, ca_cert, mt, component_id="11" * 16, role="mt", hosts=["127.0.0.1"], meta={})
    ps_id = "22" * 16
    ps = tls.IdentityFiles(tmp / "ps-id")
    tls.issue_local(ca_key, ca_cert, ps, component_id=ps_id, role="ps", hosts=["127.0.0.1"],
                    meta={"component_id": ps_id})
    return mt, ps, ps_id
