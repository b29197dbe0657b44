"""A disk that leaves the PS's settings: its pipeline stops; its cached batches stay until the MT
refuses them (ps/release.py: here the MT is unreachable); a listed entry the PS cannot parse keeps
its cache."""

from __future__ import annotations

import os

from psbatches import make_batch
from test_ps_service import DISK, World, wait_until
from test_ps_service import world as ps_world  # noqa: F401  (the fixture, by this name)

from ps.service import PSService


async def test_unlisted_disk_loses_its_pipeline_not_its_unconfirmed_cache(ps_world: World) -> None:  # noqa: F811
    world = ps_world
    world.cs.publish(world.document("https://127.0.0.1:9"))  # the MT unreachable: batches stay cached
    ps = PSService(world.cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        for seq in range(1, 4):
            assert (await world.put(ps.data_port, 1, seq, make_batch(DISK, 1, seq, data=os.urandom(4096))))[0] == 201
        cache_dir = world.cfg.data_dir / "cache" / DISK
        assert len(list(cache_dir.iterdir())) == 3
        bad = world.document("https://127.0.0.1:9")
        bad["disks"][0]["key_b64"] = "not base64!"
        world.cs.publish(bad)
        await ps.refresh_settings()
        assert len(list(cache_dir.iterdir())) == 3  # listed, if unreadable: kept
        world.cs.publish({"disks": []})
        await wait_until(lambda: ps.uploaders is not None and DISK not in ps.uploaders.pipelines)
        await ps.refresh_settings()
        assert len(list(cache_dir.iterdir())) == 3  # no MT refusal: kept (tests/ps/test_ps_orphans.py)
        assert ps.cache is not None and ps.cache.backlog(DISK)[0] == 3
        status, _ = await world.put(ps.data_port, 1, 4, make_batch(DISK, 1, 4))
        assert status == 404
    finally:
        await ps.stop()
