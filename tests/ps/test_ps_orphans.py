"""A restarted PS and the cache of disks it no longer serves (ps/orphans.py, ps/release.py):
released once the MT refuses them as fenced, kept while the disk is drained (until uploaded) or
while nothing confirms they are unneeded."""

from __future__ import annotations

import json
import os

from psbatches import make_batch
from test_ps_service import DISK, World, wait_until
from test_ps_service import world as ps_world  # noqa: F401  (the fixture, by this name)

from common import errors
from ps.orphans import PEERS_FILE
from ps.service import PSService


async def cache_three_batches(world: World) -> None:
    """A first PS run: three batches cached while the MT refuses them (fenced), then killed."""
    world.mt.refuse = [errors.Forbidden("not yet") for _ in range(10_000)]
    world.cs.publish(world.document(world.mt_url))
    ps = PSService(world.cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        for seq in range(1, 4):
            assert (await world.put(ps.data_port, 1, seq, make_batch(DISK, 1, seq, data=os.urandom(4096))))[0] == 201
    finally:
        await ps.stop()
    peers = json.loads((world.cfg.data_dir / PEERS_FILE).read_text())
    assert peers == {DISK: {"mt_url": world.mt_url, "generation": 1}}  # the MT, no key
    assert len(list((world.cfg.data_dir / "cache" / DISK).iterdir())) == 3


async def test_a_disk_no_longer_served_and_fenced_by_the_mt_is_released(ps_world: World) -> None:  # noqa: F811
    world = ps_world
    await cache_three_batches(world)
    world.cs.publish({"disks": []})  # switched to another PS while this one was down
    ps = PSService(world.cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        assert ps.cache is not None and ps.cache.backlog(DISK)[0] == 3
        await ps.wait_settings()
        cache_dir = world.cfg.data_dir / "cache" / DISK
        await wait_until(lambda: not cache_dir.exists())
        assert ps.cache.used_bytes == 0 and ps.cache.backlog(DISK) == (0, 0)
        metrics = ps.metrics()
        assert metrics["cache_released"]["disks"] == 1 and metrics["cache_released"]["batches"] == 3
        assert metrics["cache_released"]["bytes"] > 3 * 4096 and metrics["cache_free_pct"] == 100.0
        assert DISK not in metrics["disks"] and not world.mt.received
        await wait_until(lambda: not json.loads((world.cfg.data_dir / PEERS_FILE).read_text()))
    finally:
        await ps.stop()


async def test_a_drained_disk_keeps_its_files_until_they_are_uploaded(ps_world: World) -> None:  # noqa: F811
    world = ps_world
    await cache_three_batches(world)
    draining = world.document(world.mt_url)
    draining["disks"][0]["draining"] = True  # moved to another PS, this one still drains it
    world.cs.publish(draining)
    world.mt.refuse = [errors.Forbidden("fenced for a moment") for _ in range(5)]
    ps = PSService(world.cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        await wait_until(lambda: len(world.mt.received) == 3)  # refused, retried, uploaded: never released
        await wait_until(lambda: ps.cache is not None and ps.cache.backlog(DISK) == (0, 0))
        assert world.mt.requests >= 3 + 5
        assert ps.metrics()["cache_released"] == {"disks": 0, "batches": 0, "bytes": 0}
    finally:
        await ps.stop()


async def test_an_unlisted_disk_is_kept_while_the_mt_does_not_refuse_it(ps_world: World) -> None:  # noqa: F811
    world = ps_world
    await cache_three_batches(world)
    world.mt.refuse = [errors.Unavailable("restarting") for _ in range(10_000)]  # no answer that counts
    world.cs.publish({"disks": []})
    ps = PSService(world.cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        requests = world.mt.requests
        await wait_until(lambda: world.mt.requests > requests)  # probed
        await ps.refresh_settings()
        assert ps.cache is not None and ps.cache.backlog(DISK)[0] == 3
        assert len(list((world.cfg.data_dir / "cache" / DISK).iterdir())) == 3
        assert ps.metrics()["cache_released"]["disks"] == 0
    finally:
        await ps.stop()
