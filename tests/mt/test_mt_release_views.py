"""A released disk's failover views are detached (mt/jobs.py JobRunner.release) and, when the disk is
listed again, reopened without an MT restart: pinned on the new store, still at their point."""

from __future__ import annotations

from typing import Any

from test_mt_service import DISK, World, image_of, wait_until, world  # noqa: F401  (the MT in-process)


async def test_a_released_disk_listed_again_reattaches_its_kept_views(world: World) -> None:  # noqa: F811
    for _ in range(3):
        assert (await world.send_next())[0] == 201
    await wait_until(lambda: world.mt.workers[DISK].store.applied == (1, 3))
    jobs: list[dict[str, Any]] = [{"job_id": "fo", "kind": "failover", "disk_id": DISK, "point": {"gen": 1, "seq": 2},
                                   "image": True}]
    world.cs.publish(world.document(jobs=jobs))
    await wait_until(lambda: "fo" in world.cs.results)
    assert world.cs.results["fo"][0]["state"] == "succeeded"
    runner = world.mt.jobs
    assert runner is not None and "fo" in runner.views
    old_store = world.mt.workers[DISK].store

    world.cs.publish({"disks": [], "jobs": []})
    await wait_until(lambda: DISK not in world.mt.workers)
    assert runner.views == {} and old_store.journal.pins == {} and old_store.undo_listeners == []
    assert (world.cfg.data_dir / "views" / DISK / "fo" / "meta.json").exists(), "the view's files stay"

    world.cs.publish(world.document(jobs=[]))  # listed again (the job is recorded: not listed); no restart
    await wait_until(lambda: DISK in world.mt.workers)
    await wait_until(lambda: "fo" in runner.views)
    store = world.mt.workers[DISK].store
    assert store is not old_store and list(store.journal.pins) == ["view:fo"]
    assert runner.views["fo"].store is store
    assert runner.views["fo"].read(0, store.replica.size_bytes) == world.maker.images[(1, 2)]
    assert len(world.cs.results["fo"]) == 1, "reopened, not made again"
    assert image_of(world.cs.results["fo"][0]["result"]) == world.maker.images[(1, 2)]


async def test_releasing_a_disk_without_views_is_harmless(world: World) -> None:  # noqa: F811
    assert world.mt.jobs is not None
    await world.mt.jobs.release("ab" * 16)  # never held
    await world.mt.jobs.release(DISK)  # held, no views
    assert world.mt.jobs.views == {} and DISK in world.mt.workers
