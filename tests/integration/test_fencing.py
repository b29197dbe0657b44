"""Fencing by generation, over real sockets: a real CS, MT, PS and agent in-process (loopback,
port 0, real TLS), with TCP fault proxies on the links a partition cuts.

(a) A resurrected old PS — it holds cached batches of generation 1, was cut off from the CS and the
    MT while the CS bumped the disk to generation 2, and comes back to the MT only — sends them: the
    MT refuses each (409 stale_generation, logged), the PS drops them (logged), and the replica and
    the catalog are unchanged by them.
(b) A partitioned agent still on generation 1 (it cannot fetch the settings that say 2) sends new
    batches: the PS refuses them (409 stale_generation, logged) and nothing changes at the PS cache
    or the MT.
Once each partition heals, the disk resyncs under generation 2 and the replica equals the source.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent import workload
from agent.service import AgentService
from common import tls
from common.config import AgentConfig, DiskConfig, MTConfig, PSConfig
from common.http import ApiClient
from common.wire import batch as wbatch
from mt.service import MTService
from ps.service import PSService
from tests.conftest import CSEnv, start_cs, stop_cs

MiB = 1 << 20
SIZE = 8 * MiB
FAST: dict[str, Any] = dict(heartbeat_interval_s=0.5, settings_wait_s=0.5, request_timeout_s=5.0,
                            retry_max_backoff_s=0.2)
MT_HOST = "127.0.0.2"  # the MT listens here; it registers 127.0.0.1, where its proxies listen


class FaultProxy:
    """A TCP proxy on loopback. ``cut()`` is a partition: every connection through it is dropped
    and new ones are closed at once; ``heal()`` lets connections through again."""

    def __init__(self, target_host: str, target_port: int | None = None) -> None:
        self.target_host = target_host
        self.target_port = target_port  # None: the same port as the proxy's own
        self.port = 0
        self.is_cut = False
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def cut(self) -> None:
        self.is_cut = True
        for writer in list(self._conns):
            writer.transport.abort()
        self._conns.clear()

    def heal(self) -> None:
        self.is_cut = False

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port or self.port)
        except OSError:
            writer.transport.abort()
            return
        self._conns |= {writer, up_writer}
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._conns.discard(w)
                w.transport.abort()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


@dataclass
class Site:
    cs: CSEnv
    admin: ApiClient
    mt: MTService
    ps: PSService
    agent: AgentService
    agent_cfg: AgentConfig
    links: dict[str, FaultProxy]  # ps-cs, agent-cs, ps-mt (data), ps-mt-control
    log_path: Path
    disk_id: str = ""

    async def disk(self) -> dict[str, Any]:
        return next(d for d in (await self.admin.get("/v1/disks"))["items"] if d["disk_id"] == self.disk_id)

    async def wait_protected(self, generation: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            disk = await self.disk()
            if (disk["generation"], disk["state"]) == (generation, "protected"):
                return
            assert time.monotonic() < deadline, f"not protected under generation {generation}: {disk}"
            await asyncio.sleep(0.1)

    async def write(self, count: int) -> int:
        """``count`` writes through the agent's block socket; the last write number."""
        params = workload.WorkloadParams(socket_path=self.agent_cfg.socket_path, log_path=self.log_path,
                                         rate_mb_s=0, duration_s=30, max_writes=count, hot_region_mib=SIZE / MiB)
        stats = await workload.run_workload(params)
        assert stats.error is None and stats.writes == count, stats
        return stats.last_wnum

    async def caught_up(self, wnum: int) -> None:
        catalog = self.mt.catalog
        assert catalog is not None
        await until(lambda: (p := catalog.latest(self.disk_id)) is not None and p.wnum_hi >= wnum, 20,
                    f"write {wnum} at the MT")

    def ps_holds(self, wnum: int) -> bool:
        """Whether the PS cache holds a batch with ``wnum`` (the agent cut and sent it)."""
        cache = self.ps.cache
        assert cache is not None
        return any(wbatch.parse_header(cache.read(self.disk_id, e)).wnum_hi >= wnum
                   for e in cache.pending(self.disk_id))

    def mt_snapshot(self) -> tuple[int, str]:
        """(recovery points in the MT's catalog, sha256 of the replica)."""
        assert self.mt.catalog is not None
        replica = self.mt.cfg.data_dir / "replicas" / f"{self.disk_id}.img"
        return len(self.mt.catalog.all(self.disk_id)), hashlib.sha256(replica.read_bytes()).hexdigest()

    async def resync_generation(self) -> int:
        """What an admin does: a resync, which bumps the disk's generation at the CS."""
        return int((await self.admin.post(f"/v1/disks/{self.disk_id}/resync", {"reason": "user"}))["generation"])

    async def replica_equals_source(self) -> None:
        replica = self.mt.cfg.data_dir / "replicas" / f"{self.disk_id}.img"
        await until(lambda: replica.read_bytes() == self.agent_cfg.disks[0].path.read_bytes(), 30,
                    "the replica equal to the source")


async def until(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.05)


@pytest.fixture
async def site(tmp_path: Path, seed: int) -> AsyncIterator[Site]:
    env = await start_cs(tmp_path / "cs")
    cs_port = int(env.url.rsplit(":", 1)[1])
    links = {"ps-cs": FaultProxy("127.0.0.1", cs_port), "agent-cs": FaultProxy("127.0.0.1", cs_port),
             "ps-mt": FaultProxy(MT_HOST), "ps-mt-control": FaultProxy(MT_HOST)}
    for proxy in links.values():
        await proxy.start()
    common = dict(passphrase_file=env.passphrase_file, address="127.0.0.1", **FAST)
    mt = MTService(MTConfig(data_dir=tmp_path / "mt", host_id="mt1", cs_url=env.url, listen_host=MT_HOST,
                            data_port=links["ps-mt"].port, control_port=links["ps-mt-control"].port, **common))
    ps = PSService(PSConfig(data_dir=tmp_path / "ps", host_id="ps1", cs_url=f"https://127.0.0.1:{links['ps-cs'].port}",
                            data_port=0, **common), poll_interval_s=0.1)
    image, log_path = tmp_path / "disk0.img", tmp_path / "writes.log"
    await asyncio.to_thread(workload.prefill, image, 0, SIZE, 0.25, log_path, seed)
    cfg = AgentConfig(data_dir=tmp_path / "agent", host_id="m1", socket_path=tmp_path / "agent.sock",
                      cs_url=f"https://127.0.0.1:{links['agent-cs'].port}", disks=[DiskConfig("disk0", image, SIZE)],
                      batch_max_ms=50, hash_block_bytes=256 << 10, hash_request_bytes=4 * MiB, **common)
    admin = ApiClient(env.url, tls.client_context(env.admin_files), timeout_s=15.0)
    s = Site(env, admin, mt, ps, AgentService(cfg), cfg, links, log_path)
    started: list[Any] = []
    try:
        for svc in (mt, ps, s.agent):
            await svc.start()
            started.append(svc)
        comps = (await admin.get("/v1/components"))["items"]
        machine = next(c["component_id"] for c in comps if c["role"] == "agent")
        s.disk_id = (await admin.post(f"/v1/machines/{machine}/protect"))["disks"][0]["disk_id"]
        await s.wait_protected(1)
        yield s
    finally:
        for svc in (s.agent, ps, mt):  # the agent may have been replaced by a new one
            await svc.stop()
        for proxy in links.values():
            await proxy.stop()
        await admin.close()
        await stop_cs(env)


def refusals(events: list[MutableMapping[str, Any]], path_part: str) -> list[MutableMapping[str, Any]]:
    return [e for e in events if e["event"] == "request_refused" and e.get("code") == "stale_generation"
            and path_part in e.get("path", "")]


@pytest.mark.timeout(60)
async def test_a_resurrected_ps_with_old_generation_batches_is_refused_by_the_mt(site: Site) -> None:
    s = site
    await s.caught_up(await s.write(20))
    for link in ("ps-cs", "ps-mt", "ps-mt-control"):  # the PS is cut off (a paused VM, a partition)
        s.links[link].cut()
    last = await s.write(30)  # the agent still reaches the PS: batches of generation 1 pile up in its cache
    assert s.ps.cache is not None
    await until(lambda: s.ps_holds(last), 10, "the last write durable in the PS cache")
    await s.agent.stop()  # the machine goes away meanwhile (it would resync through this very PS)
    held = [(e.gen, e.seq) for e in s.ps.cache.pending(s.disk_id)]
    assert held and {g for g, _ in held} == {1}
    before = s.mt_snapshot()
    assert await s.resync_generation() == 2  # the CS moves the disk to generation 2
    await until(lambda: (d := s.mt.registry.disks.get(s.disk_id)) is not None and d.generation == 2, 10,
                "the MT on generation 2")
    with structlog.testing.capture_logs() as events:
        for link in ("ps-mt", "ps-mt-control"):  # the old PS comes back to the MT only
            s.links[link].heal()
        await until(lambda: not s.ps.cache.pending(s.disk_id), 15, "the old batches dropped")  # type: ignore[union-attr]
    assert s.ps.registry.disks[s.disk_id].generation == 1, "the PS never saw generation 2"
    assert s.mt_snapshot() == before, "the refused batches changed the replica or the catalog"
    assert len(refusals(events, "/batches/1/")) == len(held), "the MT refused each old batch once"
    dropped = [e for e in events if e["event"] == "batch_superseded"]
    assert sorted((e["gen"], e["seq"]) for e in dropped) == sorted(held)
    print(f"\nresurrected PS: {len(held)} cached batches of generation 1 refused by the MT and dropped")

    s.links["ps-cs"].heal()  # the partition heals: the PS follows the CS, the machine comes back
    await until(lambda: s.ps.registry.generation(s.disk_id) == 2, 10, "the PS on generation 2")
    s.agent = AgentService(s.agent_cfg)
    await s.agent.start()
    await s.wait_protected(2)
    await s.replica_equals_source()


@pytest.mark.timeout(60)
async def test_a_partitioned_agent_on_an_old_generation_is_refused_by_the_ps(site: Site) -> None:
    s = site
    await s.caught_up(await s.write(20))
    s.links["agent-cs"].cut()  # the agent cannot fetch the settings that will say generation 2
    assert await s.resync_generation() == 2
    await until(lambda: s.ps.registry.generation(s.disk_id) == 2, 10, "the PS on generation 2")
    await until(lambda: (d := s.mt.registry.disks.get(s.disk_id)) is not None and d.generation == 2, 10,
                "the MT on generation 2")
    assert s.ps.cache is not None and s.ps.cache.pending(s.disk_id) == []
    cache_dir = s.ps.cfg.data_dir / "cache" / s.disk_id
    files_before = sorted(p.name for p in cache_dir.iterdir())
    progress_before = s.ps.registry.progress_of(s.disk_id).ps_durable
    before = s.mt_snapshot()
    with structlog.testing.capture_logs() as events:
        await s.write(30)  # accepted at the source disk; the agent sends them under generation 1
        await until(lambda: s.agent.disk_status("disk0")["state"] == "stale", 10, "the agent refused")
        await asyncio.sleep(0.5)
    assert s.agent.disk_status("disk0")["generation"] == 1
    assert refusals(events, "/batches/1/"), "the PS logged the refusal"
    assert [e for e in events if e["event"] == "generation_stale"], "the agent logged it too"
    assert s.ps.cache.pending(s.disk_id) == [] and sorted(p.name for p in cache_dir.iterdir()) == files_before
    assert s.ps.registry.progress_of(s.disk_id).ps_durable == progress_before
    assert s.mt_snapshot() == before, "the MT changed"

    s.links["agent-cs"].heal()  # the agent learns generation 2, resyncs, and nothing is lost
    await s.wait_protected(2)
    await until(lambda: s.agent.disk_status("disk0")["generation"] == 2, 10, "the agent on generation 2")
    await s.replica_equals_source()
