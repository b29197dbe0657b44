"""The agent with the real PSService and MTService (a stand-in CS hands out the settings):
initial replication, writes through the socket, and the MT's replica equal to the source."""

from __future__ import annotations

import asyncio
import base64
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agentfakes import BlockClient, FakeCS, issue, wait_until

from agent.modes import ModePolicy
from agent.service import AgentService
from common.config import AgentConfig, DiskConfig, MTConfig, PSConfig
from common.wire import blockio as bio

ps_service = pytest.importorskip("ps.service")
mt_service = pytest.importorskip("mt.service")

SIZE = 4 << 20
MACHINE, PS_ID, MT_ID = "a3" * 16, "b3" * 16, "c3" * 16
FAST: dict[str, Any] = dict(heartbeat_interval_s=0.5, settings_wait_s=0.5,
                            request_timeout_s=5.0, retry_max_backoff_s=0.2)


@dataclass
class Site:
    cs: FakeCS
    ps: Any
    mt: Any
    agent: AgentService
    cfg: AgentConfig

    def protect(self, gen: int = 1) -> None:
        disk_id, key = self.cs.disks["disk0"], base64.b64encode(bytes(range(32))).decode()
        mt_url, mt_ctl = f"https://127.0.0.1:{self.mt.data_port}", f"https://127.0.0.1:{self.mt.control_port}"
        common = {"disk_id": disk_id, "generation": gen, "size_bytes": SIZE, "key_epoch": 1, "key_b64": key}
        self.cs.role_docs = {
            "ps": {"disks": [{**common, "machine_id": MACHINE, "mt_url": mt_url, "mt_control_url": mt_ctl}]},
            "mt": {"disks": [{**common, "ps_id": PS_ID}], "jobs": []}}
        self.cs.generations[disk_id] = gen
        self.cs.protect(f"https://127.0.0.1:{self.ps.data_port}", {"disk0": SIZE})

    def replica(self) -> bytes:
        return (self.mt.cfg.data_dir / "replicas" / f"{self.cs.disks['disk0']}.img").read_bytes()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    cs = FakeCS()
    cs_url = await cs.start(issue(tmp_path / "cs", "c5" * 16, "cs"))
    for name, cid, role in [("ps", PS_ID, "ps"), ("mt", MT_ID, "mt"), ("agent", MACHINE, "agent")]:
        issue(tmp_path / name / "identity", cid, role)
    mt = mt_service.MTService(MTConfig(data_dir=tmp_path / "mt", cs_url=cs_url, data_port=0, control_port=0, **FAST))
    await mt.start()
    ps = ps_service.PSService(PSConfig(data_dir=tmp_path / "ps", cs_url=cs_url, data_port=0, **FAST),
                              poll_interval_s=0.1)
    await ps.start()
    source = bytearray(SIZE)
    rng = random.Random(11)
    for _ in range(10):
        off = rng.randrange(SIZE - 65536)
        source[off:off + 65536] = os.urandom(65536)
    (tmp_path / "disk0.img").write_bytes(bytes(source))
    cfg = AgentConfig(data_dir=tmp_path / "agent", cs_url=cs_url, socket_path=tmp_path / "agent.sock",
                      disks=[DiskConfig("disk0", tmp_path / "disk0.img", SIZE)], batch_max_ms=20,
                      batch_max_bytes=512 << 10, resync_chunk_bytes=128 << 10, **FAST)
    agent = AgentService(cfg)
    await agent.start()
    the_site = Site(cs, ps, mt, agent, cfg)
    try:
        yield the_site
    finally:
        await the_site.agent.stop()
        await ps.stop()
        await mt.stop()
        await cs.stop()


async def test_replica_equals_the_source_after_replication_and_writes(site: Site) -> None:
    s = site
    site.protect()
    client = await BlockClient.connect(s.cfg.socket_path)
    rng = random.Random(5)
    for wnum in range(1, 301):  # during and after the initial replication
        off = rng.randrange(SIZE - 9000)
        resp, _ = await client.write(0, wnum, off, rng.randbytes(rng.randrange(1, 9000)))
        assert resp.status == bio.Status.OK
    await wait_until(lambda: s.agent.disk_status("disk0")["state"] == "protected", 30, "protected")
    await client.close()
    last = s.agent.disk_status("disk0")["next_seq"] - 1
    await wait_until(lambda: s.agent.disk_status("disk0")["acked_seq"] >= last, 20, "all batches at the PS")
    assert s.agent.disk_status("disk0")["generation"] == 1
    await wait_until(lambda: s.replica() == s.cfg.disks[0].path.read_bytes(), 30, "replica equal to the source")
    # the CS hears "protected" at the agent's next progress report (it may lag the agent's own state)
    await wait_until(lambda: s.cs.states(s.cs.disks["disk0"])[-1:] == ["protected"], 10, "protected reported")
    assert s.cs.states(s.cs.disks["disk0"])[0] == "initial-replication"


async def write_random(path: Path, first: int, count: int, seed: int) -> None:
    rng = random.Random(seed)
    client = await BlockClient.connect(path)
    for wnum in range(first, first + count):
        resp, _ = await client.write(0, wnum, rng.randrange(SIZE - 4096), rng.randbytes(4096))
        assert resp.status == bio.Status.OK
    await client.close()


async def test_unclean_restart_replicates_again_under_generation_2(site: Site) -> None:
    s = site
    s.protect()
    await write_random(s.cfg.socket_path, 1, 50, 1)
    await wait_until(lambda: s.agent.disk_status("disk0")["state"] == "protected", 30, "protected")
    crashed = s.agent.store.path.read_bytes()  # as a kill -9 leaves it: clean_shutdown false
    await s.agent.stop()
    s.agent.store.path.write_bytes(crashed)
    s.agent = AgentService(s.cfg)
    await s.agent.start()
    assert s.cs.resyncs == [(s.cs.disks["disk0"], "unclean-shutdown")]
    await write_random(s.cfg.socket_path, 100, 50, 2)
    await wait_until(lambda: s.agent.disk_status("disk0")["state"] == "protected"
                     and s.agent.disk_status("disk0")["generation"] == 2, 30, "protected under generation 2")
    await write_random(s.cfg.socket_path, 200, 20, 3)
    await wait_until(lambda: s.replica() == s.cfg.disks[0].path.read_bytes(), 30, "replica equal to the source")


async def test_a_throttling_ps_degrades_tracking_and_the_catalog_marks_the_points(site: Site) -> None:
    """Real 507s from a PS whose small cache is full (its uploads to the MT paused): the agent
    goes data -> metadata -> bitmap without stalling writes, climbs back once the PS drains, and
    the MT's catalog marks points exact, approximate or none by the batches' modes."""
    s = site
    assert s.agent.replicator is not None
    s.agent.replicator.policy = ModePolicy(memory_bytes=64 << 20, metadata_max_bytes=96 << 10, calm_s=0.5)
    s.protect()
    await write_random(s.cfg.socket_path, 1, 20, 1)
    await wait_until(lambda: s.agent.disk_status("disk0")["state"] == "protected", 30, "protected")
    await s.ps.uploaders.stop()  # the MT is out of reach: the cache fills
    assert s.ps.cache is not None
    s.ps.cache.max_bytes = s.ps.cache.used_bytes + (128 << 10)
    wnum = 100
    while s.agent.disk_status("disk0")["mode"] != "bitmap":  # writes go on: the PS keeps refusing
        await write_random(s.cfg.socket_path, wnum, 10, wnum)
        wnum += 10
        assert wnum < 3000, s.agent.disk_status("disk0")
    assert s.agent.disk_status("disk0")["throttles"] > 0  # the PS really answered 507
    await s.ps.uploaders.sync()
    s.ps.cache.max_bytes = 1 << 30
    while s.agent.disk_status("disk0")["mode"] != "data":  # bitmap drains, metadata a while, then data
        await write_random(s.cfg.socket_path, wnum, 3, wnum)
        wnum += 3
        await asyncio.sleep(0.05)
        assert wnum < 5000, s.agent.disk_status("disk0")
    await write_random(s.cfg.socket_path, wnum + 10, 10, 4)
    catalog, disk_id = s.mt.catalog, s.cs.disks["disk0"]
    assert catalog is not None
    await wait_until(lambda: (p := catalog.latest(disk_id)) is not None and p.wnum_hi >= wnum + 19, 30,
                     "the last writes in the catalog")
    assert s.replica() == s.cfg.disks[0].path.read_bytes()
    by_mode = s.agent.disk_status("disk0")["batches_by_mode"]
    assert by_mode.get("METADATA", 0) >= 1 and by_mode.get("BITMAP", 0) >= 1
    points = catalog.all(disk_id)
    names = [p.accuracy_name for p in points]
    assert {"exact", "approximate", "none"} <= set(names)
    assert names[-1] == "exact", [(p.seq, p.accuracy_name, p.data_bytes) for p in points][-3:]


def bump_generation(s: Site, gen: int, roles: tuple[str, ...]) -> None:
    """The CS moves the disk to ``gen``; only the given roles' documents say so."""
    disk_id = s.cs.disks["disk0"]
    s.cs.generations[disk_id] = gen
    docs = [s.cs.role_docs[r] for r in roles if r != "agent"] + ([s.cs.document] if "agent" in roles else [])
    for doc in docs:
        for item in doc["disks"]:
            item["generation"] = gen
    s.cs.publish(s.cs.document)


async def caught_up(s: Site, wnum: int) -> None:
    catalog, disk_id = s.mt.catalog, s.cs.disks["disk0"]
    assert catalog is not None
    await wait_until(lambda: (p := catalog.latest(disk_id)) is not None and p.wnum_hi >= wnum, 30,
                     f"write {wnum} in the catalog")


async def test_a_partitioned_agent_on_an_old_generation_is_refused_and_changes_nothing(site: Site) -> None:
    s = site
    s.protect()
    await write_random(s.cfg.socket_path, 1, 20, 1)
    await wait_until(lambda: s.agent.disk_status("disk0")["state"] == "protected", 30, "protected")
    await caught_up(s, 20)
    assert s.mt.catalog is not None
    disk_id = s.cs.disks["disk0"]
    points, replica = len(s.mt.catalog.all(disk_id)), s.replica()
    bump_generation(s, 2, ("ps", "mt"))  # the agent is cut off from the CS: it still runs generation 1
    await wait_until(lambda: s.ps.registry.generation(disk_id) == 2, 10, "the PS on generation 2")
    await write_random(s.cfg.socket_path, 100, 20, 2)
    await wait_until(lambda: s.agent.disk_status("disk0")["state"] == "stale", 10, "the agent refused")
    assert s.ps.cache is not None and not [e for e in s.ps.cache.pending(disk_id) if e.gen == 1]
    await asyncio.sleep(0.5)
    assert len(s.mt.catalog.all(disk_id)) == points and s.replica() == replica  # nothing changed
    bump_generation(s, 2, ("ps", "mt", "agent"))  # the partition heals: the agent follows
    await wait_until(lambda: s.agent.disk_status("disk0")["generation"] == 2
                     and s.agent.disk_status("disk0")["state"] == "protected", 30, "protected under generation 2")
    await write_random(s.cfg.socket_path, 200, 5, 3)
    await wait_until(lambda: s.replica() == s.cfg.disks[0].path.read_bytes(), 30, "replica equal to the source")


async def test_a_resurrected_ps_with_batches_of_an_old_generation_is_refused_by_the_mt(site: Site) -> None:
    s = site
    s.protect()
    await write_random(s.cfg.socket_path, 1, 20, 1)
    await wait_until(lambda: s.agent.disk_status("disk0")["state"] == "protected", 30, "protected")
    await caught_up(s, 20)
    await s.ps.uploaders.stop()  # the MT is out of reach: batches stay in the PS cache
    first = s.agent.disk_status("disk0")["next_seq"]
    await write_random(s.cfg.socket_path, 100, 20, 2)
    await wait_until(lambda: first <= s.agent.disk_status("disk0")["acked_seq"]
                     == s.agent.disk_status("disk0")["next_seq"] - 1, 10, "the new batches cached at the PS")
    disk_id, ps_cfg = s.cs.disks["disk0"], s.ps.cfg
    assert s.ps.cache is not None and [e for e in s.ps.cache.pending(disk_id) if e.gen == 1]
    await s.ps.stop()  # the PS dies with its cache
    await s.agent.stop()
    assert s.mt.catalog is not None
    points, replica = len(s.mt.catalog.all(disk_id)), s.replica()
    bump_generation(s, 2, ("mt",))  # the MT follows the CS; the old PS's settings still say generation 1
    await wait_until(lambda: (d := s.mt.registry.disks.get(disk_id)) is not None and d.generation == 2, 10,
                     "the MT on generation 2")
    old = ps_service.PSService(ps_cfg, poll_interval_s=0.1)
    await old.start()  # resurrected, with its cache
    try:
        assert old.cache is not None
        await wait_until(lambda: not old.cache.pending(disk_id), 20, "the old batches dropped",  # type: ignore[union-attr]
                         lambda: old.cache.pending(disk_id))  # type: ignore[union-attr]
        assert len(s.mt.catalog.all(disk_id)) == points and s.replica() == replica
    finally:
        await old.stop()
    s.ps = old  # the fixture stops it again (a no-op)
    s.agent = AgentService(s.cfg)
    await s.agent.start()
