"""Stand-ins for the agent tests: a CS and a PS over real TLS, and a tiny block client.

They implement just the PROTOCOL.md routes the agent calls, and record what they saw."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from common import errors, tls
from common.http import identity, json_error, make_app
from common.wire import batch as wb
from common.wire import blockio as bio

CA = tls.make_ca()


def issue(directory: Path, cid: str, role: str) -> tls.IdentityFiles:
    files = tls.IdentityFiles(directory)
    tls.issue_local(*CA, files, component_id=cid, role=role, hosts=["127.0.0.1"],
                    meta={"component_id": cid, "role": role, "cs_url": ""})
    return files


async def serve(app: web.Application, files: tls.IdentityFiles) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context(files))
    await site.start()
    return runner, f"https://127.0.0.1:{runner.addresses[0][1]}"


async def wait_until(pred: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition",
                     show: Callable[[], object] | None = None) -> None:
    """Poll ``pred``; on timeout fail saying ``what`` (and ``show()``, the state to look at)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s" + (f": {show()}" if show else "")
        await asyncio.sleep(0.02)


@dataclass
class FakeCS:
    """Settings, heartbeats, disk report, progress and resync of one agent."""

    disks: dict[str, str] = field(default_factory=dict)  # name -> disk_id
    document: dict[str, Any] = field(default_factory=lambda: {"disks": []})
    role_docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # other roles' documents
    version: int = 1
    progress: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    resyncs: list[tuple[str, str]] = field(default_factory=list)
    heartbeats: int = 0
    generations: dict[str, int] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    def protect(self, ps_url: str, sizes: dict[str, int]) -> None:
        items = []
        for name, disk_id in self.disks.items():
            gen = self.generations.setdefault(disk_id, 1)
            items.append({"disk_id": disk_id, "name": name, "size_bytes": sizes[name], "generation": gen,
                          "ps_url": ps_url})
        self.publish({"disks": items})

    def publish(self, document: dict[str, Any]) -> None:
        self.document, self.version = document, self.version + 1
        self._changed.set()
        self._changed = asyncio.Event()

    def states(self, disk_id: str) -> list[str]:
        return [p["state"] for d, p in self.progress if d == disk_id]

    async def _settings(self, request: web.Request) -> web.Response:
        known, wait_s = int(request.query.get("version", "-1")), min(float(request.query.get("wait_s", "0")), 1.0)
        if known >= self.version and wait_s > 0:
            try:
                await asyncio.wait_for(self._changed.wait(), wait_s)
            except TimeoutError:
                pass
        role = identity(request).role
        return web.json_response({"version": self.version, "document": self.role_docs.get(role, self.document)})

    async def _heartbeat(self, request: web.Request) -> web.Response:
        self.heartbeats += 1
        return web.json_response({"ok": True, "time_ns": time.time_ns()})

    async def _report(self, request: web.Request) -> web.Response:
        body = await request.json()
        for d in body["disks"]:
            self.disks.setdefault(d["name"], f"{len(self.disks) + 1:032x}")
        return web.json_response({"disks": [{"name": n, "disk_id": i} for n, i in self.disks.items()]})

    async def _progress(self, request: web.Request) -> web.Response:
        self.progress.append((request.match_info["disk_id"], await request.json()))
        return web.json_response({"ok": True})

    async def _resync(self, request: web.Request) -> web.Response:
        disk_id = request.match_info["disk_id"]
        self.resyncs.append((disk_id, (await request.json())["reason"]))
        self.generations[disk_id] = self.generations.get(disk_id, 1) + 1
        for doc in [self.document, *self.role_docs.values()]:
            for item in doc["disks"]:
                if item["disk_id"] == disk_id:
                    item["generation"] = self.generations[disk_id]
        self.publish(self.document)
        return web.json_response({"generation": self.generations[disk_id]})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/settings", self._settings)
        app.router.add_post("/v1/heartbeat", self._heartbeat)
        app.router.add_put("/v1/machines/self/disks", self._report)
        app.router.add_post("/v1/disks/{disk_id}/progress", self._progress)
        app.router.add_post("/v1/disks/{disk_id}/resync", self._resync)

    async def start(self, files: tls.IdentityFiles) -> str:
        app = make_app()
        self.add_routes(app)
        self.runner, url = await serve(app, files)
        return url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class FakePS:
    """Keeps every batch it acknowledged; 'applies' instantly unless ``apply`` is False."""

    batches: dict[tuple[str, int, int], bytes] = field(default_factory=dict)
    arrivals: list[tuple[str, int, int]] = field(default_factory=list)
    generation: dict[str, int] = field(default_factory=dict)
    fail: list[errors.DrlabError] = field(default_factory=list)  # errors to answer first, in order
    apply: bool = True
    unavailable: bool = False  # answer 503 to every PUT while set
    delays: list[float] = field(default_factory=list)  # per request, in order, before storing
    inflight: int = 0
    max_inflight: int = 0
    runner: web.AppRunner | None = None

    def received(self, disk_id: str, gen: int) -> list[wb.ChangeBatch]:
        seqs = sorted(s for d, g, s in self.batches if (d, g) == (disk_id, gen))
        return [wb.decode(self.batches[(disk_id, gen, s)]) for s in seqs]

    def contiguous(self, disk_id: str, gen: int) -> int:
        seq = 0
        while (disk_id, gen, seq + 1) in self.batches:
            seq += 1
        return seq

    def _status(self, disk_id: str, seq: int = 0) -> dict[str, Any]:
        gen = self.generation.get(disk_id, 0)
        done = self.contiguous(disk_id, gen)
        return {"generation": gen, "ps_durable": seq or done, "mt_received": done,
                "mt_applied": done if self.apply else 0}

    async def _put(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            status, reply = self._store(request, body)
            if self.delays:  # after storing: a slow or lost reply to a durable batch
                await asyncio.sleep(self.delays.pop(0))
        finally:
            self.inflight -= 1
        return reply if status == 0 else web.json_response(reply, status=status)

    def _store(self, request: web.Request, body: bytes) -> tuple[int, Any]:
        info = request.match_info
        disk_id, gen, seq = info["disk_id"], int(info["gen"]), int(info["seq"])
        if self.fail:
            return 0, json_error(self.fail.pop(0))
        if self.unavailable:
            return 0, json_error(errors.Unavailable("the stand-in PS is down"))
        if gen < self.generation.get(disk_id, 0):
            return 0, json_error(errors.StaleGeneration(f"generation {gen} is stale"))
        batch = wb.decode(body)
        assert (batch.disk_id.hex(), batch.generation, batch.seq) == (disk_id, gen, seq)
        self.generation[disk_id] = gen
        key = (disk_id, gen, seq)
        self.arrivals.append(key)
        if key in self.batches:
            if self.batches[key] != body:
                return 0, json_error(errors.ChecksumMismatch("another batch under this identity"))
            return 200, self._status(disk_id, seq)
        self.batches[key] = body
        return 201, self._status(disk_id, seq)

    async def _get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self._status(request.match_info["disk_id"]))

    async def start(self, files: tls.IdentityFiles) -> str:
        app = make_app(client_max_size=64 << 20)
        app.router.add_put("/v1/disks/{disk_id}/batches/{gen}/{seq}", self._put)
        app.router.add_get("/v1/disks/{disk_id}/status", self._get_status)
        self.runner, url = await serve(app, files)
        return url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class BlockClient:
    """A minimal client of the local block protocol (the workload has the real one)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, path: Path) -> BlockClient:
        return cls(*await asyncio.open_unix_connection(str(path)))

    async def call(self, raw: bytes) -> tuple[bio.Response, bytes]:
        self.writer.write(raw)
        await self.writer.drain()
        resp = bio.decode_response(await self.reader.readexactly(bio.RESPONSE_SIZE))
        return resp, await self.reader.readexactly(resp.length)

    async def write(self, disk: int, wnum: int, offset: int, data: bytes) -> tuple[bio.Response, bytes]:
        return await self.call(bio.encode_request(bio.Op.WRITE, disk, wnum=wnum, offset=offset, data=data))

    async def read(self, disk: int, offset: int, length: int) -> tuple[bio.Response, bytes]:
        return await self.call(bio.encode_request(bio.Op.READ, disk, offset=offset, length=length))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def replay(batches: list[wb.ChangeBatch], size: int) -> bytearray:
    image = bytearray(size)
    for b in batches:
        for r in b.records:
            image[r.offset:r.offset + len(r.data)] = bytes(r.data)
    return image
