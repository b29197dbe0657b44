"""A disk leaving the MT's settings is released (mt/release.py): its worker stops, staged batches are
never applied (also after a restart), files and points stay unless ``delete_disks`` names it."""

from __future__ import annotations

import shutil
from pathlib import Path

from test_mt_service import DISK, World, wait_until
from test_mt_service import world as mt_world  # noqa: F401  (the fixture, by this name)

from mt import release
from mt.service import MTService


async def _restart(world: World) -> None:
    await world.mt.stop()
    world.mt = MTService(world.cfg)
    await world.mt.start()
    await world.mt.wait_settings()


def _files(world: World) -> tuple[Path, Path, Path]:
    root = world.cfg.data_dir
    return root / "replicas" / f"{DISK}.img", root / "journal" / DISK, root / "staging" / DISK


async def _applied_two_staged_one(world: World) -> bytes:
    """Seqs 1-2 applied; seq 4 staged (seq 3 missing: it cannot apply). Returns seq 3's sealed batch."""
    for _ in range(2):
        assert (await world.send_next())[0] == 201
    await wait_until(lambda: world.mt.workers[DISK].store.applied == (1, 2))
    third = world.sealer.seal(3, world.maker.make())
    assert (await world.send_next())[0] == 201  # seq 4
    assert [p.name for p in world.staged()] == ["00000001-000000000004.batch"]
    return third


async def test_released_disk_keeps_points_never_applies_staged(mt_world: World, tmp_path: Path) -> None:  # noqa: F811
    world = mt_world
    third = await _applied_two_staged_one(world)
    kept = tmp_path / "late.batch"
    shutil.copy(world.staged()[0], kept)
    world.cs.publish({"disks": [], "jobs": []})
    await wait_until(lambda: DISK not in world.mt.workers)
    replica, journal, staging = _files(world)
    assert replica.exists() and journal.is_dir() and not staging.exists()
    assert release.is_released(world.cfg.data_dir, DISK)
    assert world.mt.catalog is not None
    assert [(p.gen, p.seq) for p in world.mt.catalog.all(DISK)] == [(1, 1), (1, 2)]
    status, _ = await world.put(1, 5, world.sealer.seal(5, world.maker.make()))
    assert status == 404  # not held any more
    await world.mt.stop()
    staging.mkdir(parents=True)  # a batch a late PUT staged after the release
    shutil.copy(kept, staging / kept.name.replace("late", "00000001-000000000004"))
    world.mt = MTService(world.cfg)
    await world.mt.start()
    await world.mt.wait_settings()
    assert DISK not in world.mt.workers  # the restart does not reopen it
    world.cs.publish(world.document())  # listed again (protection enabled again)
    await wait_until(lambda: DISK in world.mt.workers)
    assert not release.is_released(world.cfg.data_dir, DISK) and world.staged() == []
    store = world.mt.workers[DISK].store
    assert store.applied == (1, 2)  # the old points are there again
    assert (await world.put(1, 3, third))[0] == 201
    await wait_until(lambda: store.applied == (1, 3))
    await world.mt.workers[DISK].drain()
    assert store.applied == (1, 3)  # seq 4, staged before the release, was never applied
    assert replica.read_bytes() == world.maker.images[(1, 3)]


async def test_delete_disks_removes_files_and_points(mt_world: World) -> None:  # noqa: F811
    world = mt_world
    await _applied_two_staged_one(world)
    world.cs.publish({"disks": [], "jobs": [], "delete_disks": [DISK, "not-a-disk"]})
    await wait_until(lambda: DISK not in world.mt.workers)
    await wait_until(lambda: not any(p.exists() for p in _files(world)))
    assert world.mt.catalog is not None and world.mt.catalog.all(DISK) == []
    assert not release.is_released(world.cfg.data_dir, DISK)
    await _restart(world)
    assert DISK not in world.mt.workers and not any(p.exists() for p in _files(world))


async def test_a_malformed_entry_releases_nothing(mt_world: World) -> None:  # noqa: F811
    world = mt_world
    await _applied_two_staged_one(world)
    bad = world.document()
    bad["disks"][0]["key_b64"] = "not base64!"
    world.cs.publish(bad)
    await world.mt.refresh_settings()
    assert DISK in world.mt.workers and not release.is_released(world.cfg.data_dir, DISK)
    assert len(world.staged()) == 1
