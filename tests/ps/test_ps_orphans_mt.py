"""The orphaned-cache probe against the real MT (ps/orphans.py): the MT fences a PS that no
longer serves the disk (403: released); while the MT still takes the disk from this PS, the
empty-body probe is refused as a bad batch (400: kept) and nothing is staged."""

from __future__ import annotations

import base64
import random

import structlog
from test_ps_to_mt import DISK, KEY, MT_ID, PS_ID, SIZE, World, wait_until
from test_ps_to_mt import world as mt_world  # noqa: F401  (the fixture, by this name)

from ps.service import PSService

OTHER_PS = "33" * 16


async def mt_sender(world: World, ps_id: str) -> None:
    """The MT's settings: the disk's PS is ``ps_id``."""
    world.cs.publish({"disks": [{"disk_id": DISK, "ps_id": ps_id, "generation": 1, "size_bytes": SIZE,
                                 "key_epoch": 1, "key_b64": base64.b64encode(KEY).decode()}], "jobs": []},
                     component_id=MT_ID)
    await wait_until(lambda: (d := world.mt.registry.disks.get(DISK)) is not None and d.sent_by(ps_id))


async def cache_batches(world: World) -> None:
    """A PS run whose batches the MT fences (the disk moved to OTHER_PS at the MT): all stay cached."""
    await mt_sender(world, OTHER_PS)
    world.cs.publish(world.ps_document(), component_id=PS_ID)
    ps = PSService(world.ps_cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        await world.send(ps, range(1, 6), random.Random(3))
    finally:
        await ps.stop()
    assert len(world.cached()) == 5


async def test_a_fenced_disk_is_released_after_a_restart(mt_world: World) -> None:  # noqa: F811
    world = mt_world
    await cache_batches(world)
    world.cs.publish({"disks": []}, component_id=PS_ID)
    ps = PSService(world.ps_cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        await wait_until(lambda: not world.cached())
        assert ps.metrics()["cache_released"]["batches"] == 5
    finally:
        await ps.stop()


async def test_a_disk_the_mt_still_takes_from_this_ps_is_kept(mt_world: World) -> None:  # noqa: F811
    world = mt_world
    await cache_batches(world)
    await mt_sender(world, PS_ID)  # the MT would still take them: no refusal that releases
    world.cs.publish({"disks": []}, component_id=PS_ID)
    ps = PSService(world.ps_cfg, poll_interval_s=0.1)
    with structlog.testing.capture_logs() as events:
        await ps.start()
        try:
            await ps.wait_settings()
            await wait_until(lambda: any(e["event"] == "cache_release_kept" for e in events))
            assert len(world.cached()) == 5 and ps.metrics()["cache_released"]["disks"] == 0
            kept = [e for e in events if e["event"] == "cache_release_kept"]
            assert kept[0]["reason"] == "unconfirmed" and kept[0]["batches"] == 5
            staging = world.mt.cfg.data_dir / "staging" / DISK
            assert not [p for p in staging.rglob("*") if p.is_file()]  # the probe staged nothing
        finally:
            await ps.stop()
