"""The PS forwards ``GET /v1/disks/{disk}/hashes`` from the agent to the disk's MT (real PSService,
a stand-in CS and a stand-in MT's hashes route, over real TLS)."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from psfakecs import FakeCS

from common import errors, tls
from common.config import PSConfig
from common.http import identity, make_app
from ps.service import PSService

DISK, OTHER_DISK = "ab" * 16, "cd" * 16
MACHINE, OTHER_MACHINE, PS_ID, MT_ID = "a1" * 16, "a2" * 16, "22" * 16, "11" * 16
SIZE = 1 << 20
BLOCK = 4096


def issue(ca: tuple[bytes, bytes], directory: Path, cid: str, role: str, meta: dict[str, Any]) -> tls.IdentityFiles:
    files = tls.IdentityFiles(directory)
    tls.issue_local(*ca, files, component_id=cid, role=role, hosts=["127.0.0.1"], meta=meta)
    return files


@dataclass
class HashMT:
    """The MT's hashes route only: answers what it is told, records who asked what."""

    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    refuse: list[errors.DrlabError] = field(default_factory=list)
    answer: dict[str, Any] | None = None  # a forced (possibly malformed) answer
    runner: web.AppRunner | None = None

    async def hashes(self, request: web.Request) -> web.Response:
        self.seen.append((identity(request).component_id, dict(request.query)))
        if self.refuse:
            raise self.refuse.pop(0)
        if self.answer is not None:
            return web.json_response(self.answer)
        q = {k: int(v) for k, v in request.query.items()}
        length = min(q["length"], 2 * q["block"])
        count = -(-length // q["block"])
        return web.json_response({"generation": q["generation"], "applied": [q["generation"], 7],
                                  "offset": q["offset"], "length": length, "block": q["block"],
                                  "hashes": [f"{i:032x}" for i in range(count)]})

    async def start(self, files: tls.IdentityFiles) -> str:
        app = make_app()
        app.router.add_get("/v1/disks/{disk_id}/hashes", self.hashes)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=tls.server_context(files))
        await site.start()
        return f"https://127.0.0.1:{self.runner.addresses[0][1]}"


@dataclass
class World:
    cs: FakeCS
    mt: HashMT
    ps: PSService
    ctx: dict[str, Any]

    async def get(self, who: str = "agent", disk: str = DISK, **params: Any) -> tuple[int, Any, dict[str, str]]:
        query = {"generation": 2, "offset": 0, "length": 3 * BLOCK, "block": BLOCK, **params}
        url = f"https://127.0.0.1:{self.ps.data_port}/v1/disks/{disk}/hashes"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ctx[who])) as session:
            async with session.get(url, params={k: str(v) for k, v in query.items()}) as resp:
                return resp.status, await resp.json(), dict(resp.headers)


def document(mt_url: str, gen: int = 2) -> dict[str, Any]:
    key = base64.b64encode(os.urandom(32)).decode()
    disks = [{"disk_id": d, "machine_id": m, "generation": gen, "size_bytes": SIZE, "mt_url": mt_url,
              "mt_control_url": mt_url, "key_epoch": 1, "key_b64": key}
             for d, m in ((DISK, MACHINE), (OTHER_DISK, OTHER_MACHINE))]
    return {"disks": disks}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ca = tls.make_ca()
    cs, mt = FakeCS(), HashMT()
    cs_url = await cs.start(issue(ca, tmp_path / "cs", "cc" * 16, "cs", {}))
    mt_url = await mt.start(issue(ca, tmp_path / "mt", MT_ID, "mt", {}))
    cs.publish(document(mt_url))
    cfg = PSConfig(data_dir=tmp_path / "ps", cs_url=cs_url, data_port=0, heartbeat_interval_s=0.5,
                   settings_wait_s=1.0, retry_max_backoff_s=0.2, request_timeout_s=5.0)
    issue(ca, cfg.data_dir / "identity", PS_ID, "ps", {"component_id": PS_ID, "role": "ps", "cs_url": cs_url})
    ctx: dict[str, Any] = {"none": tls.client_context(None, ca[1])}
    for name, cid, role in (("agent", MACHINE, "agent"), ("other", OTHER_MACHINE, "agent"), ("ps", "33" * 16, "ps"),
                            ("admin", "44" * 16, "admin")):
        ctx[name] = tls.client_context(issue(ca, tmp_path / name, cid, role, {}))
    ps = PSService(cfg, poll_interval_s=0.1)
    await ps.start()
    await ps.wait_settings()
    try:
        yield World(cs, mt, ps, ctx)
    finally:
        await ps.stop()
        assert mt.runner is not None
        await mt.runner.cleanup()
        await cs.stop()


@pytest.mark.timeout(30)
async def test_forwards_to_the_mt_with_the_ps_certificate(world: World) -> None:
    status, body, _ = await world.get(offset=8192)
    assert status == 200, body
    assert body == {"generation": 2, "applied": [2, 7], "offset": 8192, "length": 2 * BLOCK, "block": BLOCK,
                    "hashes": [f"{0:032x}", f"{1:032x}"]}
    assert world.mt.seen == [(PS_ID, {"generation": "2", "offset": "8192", "length": str(3 * BLOCK),
                                      "block": str(BLOCK)})]


@pytest.mark.timeout(30)
async def test_refusals_forward_nothing(world: World) -> None:
    assert (await world.get(who="none"))[0] == 401
    for who in ("ps", "admin", "other"):
        assert (await world.get(who=who))[0] == 403, who
    assert (await world.get(disk="ef" * 16))[0] == 404
    for bad in ({"block": 1000}, {"block": 6144}, {"offset": SIZE}, {"length": SIZE + 1}, {"length": 0},
                {"generation": "two"}, {"extra": 1}):
        status, body, _ = await world.get(**bad)
        assert (status, body["code"]) == (400, "bad_request"), bad
    status, body, _ = await world.get(generation=1)
    assert (status, body["code"]) == (409, "stale_generation")
    assert world.mt.seen == []


@pytest.mark.timeout(30)
async def test_mt_answers_are_passed_on_or_made_retriable(world: World) -> None:
    world.mt.refuse = [errors.Unavailable("not yet", code="not_ready", retry_after_s=1.0),
                       errors.NotFound("no such disk here"), errors.StaleGeneration("old")]
    status, body, headers = await world.get()
    assert (status, body["code"], headers.get("Retry-After")) == (503, "not_ready", "1")
    status, body, _ = await world.get()  # the MT's settings lag: retriable
    assert (status, body["code"]) == (503, "unavailable")
    status, body, _ = await world.get()
    assert (status, body["code"]) == (409, "stale_generation")
    for bad in ({"offset": 4096, "length": 4096, "block": BLOCK, "applied": [2, 1], "hashes": ["0" * 32]},
                {"offset": 0, "length": 4096, "block": BLOCK, "applied": [2, 1], "hashes": ["x" * 32]},
                {"offset": 0, "length": 4096, "block": BLOCK, "applied": [2, 1], "hashes": []},
                {"offset": 0, "length": 5000, "block": BLOCK, "applied": [2, 1], "hashes": ["0" * 32] * 2},
                {"offset": 0}):
        world.mt.answer = bad
        status, body, _ = await world.get()
        assert (status, body["code"]) == (503, "unavailable"), bad
    assert world.mt.runner is not None
    await world.mt.runner.cleanup()  # the MT is gone
    status, body, _ = await world.get()
    assert (status, body["code"]) == (503, "unavailable")
