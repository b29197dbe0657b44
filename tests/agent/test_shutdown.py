"""Planned failover on the agent (agent/shutdown.py): a ``shutdown`` entry in the settings stops
writes (the block protocol answers an error), every disk is cut at one final W that the PS holds
before the agent reports it; a disk still being copied is reported as an error; a document without
the entry lets writes in again."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from agentfakes import BlockClient, FakeCS, FakePS, issue, wait_until
from aiohttp import web

from agent.service import AgentService
from common.config import AgentConfig, DiskConfig
from common.wire import blockio as bio

SIZE = 1 << 20
MACHINE = "a2" * 16
JOB = "0f" * 16
NAMES = ("disk0", "disk1")


@dataclass
class StopCS(FakeCS):
    """The stand-in CS, also taking the agent's shutdown reports."""

    reports: list[dict[str, Any]] = field(default_factory=list)

    async def _shutdown(self, request: web.Request) -> web.Response:
        self.reports.append(await request.json())
        return web.json_response({"ok": True})

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        app.router.add_post("/v1/machines/self/shutdown", self._shutdown)


@dataclass
class World:
    cs: StopCS
    ps: FakePS
    ps_url: str
    agent: AgentService
    client: BlockClient
    rng: random.Random = field(default_factory=lambda: random.Random(5))
    wnum: int = 0

    def protect(self, shutdown: str | None = None) -> None:
        self.cs.protect(self.ps_url, dict.fromkeys(NAMES, SIZE))
        if shutdown is not None:
            self.cs.publish({**self.cs.document, "shutdown": {"job_id": shutdown}})

    def publish(self, shutdown: str | None) -> None:
        doc = {k: v for k, v in self.cs.document.items() if k != "shutdown"}
        self.cs.publish({**doc, **({"shutdown": {"job_id": shutdown}} if shutdown else {})})

    async def write(self, disk: int) -> tuple[bio.Response, bytes]:
        resp, msg = await self.client.write(disk, self.wnum + 1, self.rng.randrange(SIZE - 4096),
                                            self.rng.randbytes(4096))
        if resp.status == bio.Status.OK:
            self.wnum += 1
        return resp, msg

    def protected(self) -> bool:
        return all(self.agent.disk_status(n)["state"] == "protected" for n in NAMES)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    cs, ps = StopCS(), FakePS()
    cs_url = await cs.start(issue(tmp_path / "cs", "c5" * 16, "cs"))
    ps_url = await ps.start(issue(tmp_path / "ps", "50" * 16, "ps"))
    issue(tmp_path / "agent" / "identity", MACHINE, "agent")
    cfg = AgentConfig(data_dir=tmp_path / "agent", cs_url=cs_url, socket_path=tmp_path / "agent" / "agent.sock",
                      disks=[DiskConfig(n, tmp_path / f"{n}.img", SIZE) for n in NAMES], batch_max_ms=20,
                      batch_max_bytes=256 << 10, heartbeat_interval_s=0.5, settings_wait_s=0.5,
                      request_timeout_s=5, retry_max_backoff_s=0.2, resync_chunk_bytes=64 << 10)
    agent = AgentService(cfg)
    await agent.start()
    client = await BlockClient.connect(cfg.socket_path)
    try:
        yield World(cs, ps, ps_url, agent, client)
    finally:
        await client.close()
        await agent.stop()
        await cs.stop()
        await ps.stop()


async def test_shutdown_stops_writes_cuts_every_disk_at_w_and_reports_it(world: World) -> None:
    w = world
    w.protect()
    await wait_until(w.protected, 20, "both disks protected")
    for _ in range(12):
        assert (await w.write(0))[0].status == bio.Status.OK  # disk1 has no write after protection
    final = w.wnum
    w.publish(JOB)
    await wait_until(lambda: bool(w.cs.reports), 20, "the shutdown report")
    assert w.cs.reports == [{"job_id": JOB, "wnum": final}]
    resp, msg = await w.write(1)
    assert resp.status == bio.Status.ERROR and b"planned failover" in msg, msg
    assert w.wnum == final and w.agent.replicator is not None and w.agent.replicator.tracker.last_wnum == final
    for name in NAMES:
        batches = w.ps.received(w.cs.disks[name], 1)
        assert batches and batches[-1].wnum_hi == final, (name, [b.wnum_hi for b in batches])
        status = w.agent.disk_status(name)
        assert status["acked_seq"] == status["next_seq"] - 1 == batches[-1].seq  # the PS holds everything

    w.publish(JOB)  # the same job again (the entry stays after a failover): no second report, still stopped
    await wait_until(lambda: w.agent.control is not None and w.agent.control.settings_version == w.cs.version, 10,
                     "the document applied")
    assert (await w.write(0))[0].status == bio.Status.ERROR
    assert len(w.cs.reports) == 1

    w.publish(None)  # the planned failover failed: the source writes again
    await wait_until(lambda: w.agent.replicator is not None and w.agent.replicator.writes_stopped is None, 10,
                     "writes resumed")
    resp, _ = await w.write(1)
    assert resp.status == bio.Status.OK and w.wnum == final + 1


async def test_a_disk_still_copying_is_reported_as_an_error(world: World) -> None:
    w = world
    w.ps.unavailable = True  # the initial copy cannot finish
    assert (await w.write(0))[0].status == bio.Status.OK
    w.protect(shutdown=JOB)
    await wait_until(lambda: bool(w.cs.reports), 20, "the shutdown report")
    [report] = w.cs.reports
    assert report["job_id"] == JOB and "wnum" not in report
    assert "not protected" in report["error"]
    resp, msg = await w.write(0)  # the entry is still there: writes stay refused
    assert resp.status == bio.Status.ERROR and b"planned failover" in msg
    w.ps.unavailable = False  # the PS is back: stopping the agent drains at once, not after DRAIN_TIMEOUT_S
