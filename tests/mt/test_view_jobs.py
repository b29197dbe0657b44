"""Failover jobs make views (mt/view.py) that the MT keeps while replication continues under them;
view-change / view-drop / view-commit jobs act on them, also after an MT restart."""

from __future__ import annotations

from typing import Any

from test_mt_service import DISK, World, image_of, wait_until, world  # noqa: F401  (the MT in-process)

from mt.service import MTService


def result(w: World, job_id: str) -> dict[str, Any]:
    (reply,) = w.cs.results[job_id]
    assert reply["state"] == "succeeded", reply
    return dict(reply["result"])


async def test_a_failover_view_stays_at_its_point_and_is_changed_then_committed(world: World) -> None:  # noqa: F811
    for _ in range(4):
        assert (await world.send_next())[0] == 201
    store = world.mt.workers[DISK].store
    await wait_until(lambda: store.applied == (1, 4))
    jobs: list[dict[str, Any]] = [{"job_id": "fo", "kind": "failover", "disk_id": DISK, "point": {"gen": 1, "seq": 2},
                                   "image": True}]
    world.cs.publish(world.document(jobs=jobs))
    await wait_until(lambda: "fo" in world.cs.results)
    fo = result(world, "fo")
    assert image_of(fo) == world.maker.images[(1, 2)] and fo["view"]["undo_records"] > 0
    assert world.mt.jobs is not None
    view = world.mt.jobs.views["fo"]
    for _ in range(3):  # replication continues under the view
        assert (await world.send_next())[0] == 201
    await wait_until(lambda: store.applied == (1, 7))
    assert view.read(0, store.replica.size_bytes) == world.maker.images[(1, 2)]
    assert list(store.journal.pins) == [view.owner] and store.undo_listeners == [view._on_undo]

    await world.mt.stop()  # the view's files outlive a restart
    world.mt = MTService(world.cfg)
    await world.mt.start()
    await world.mt.wait_settings()
    store = world.mt.workers[DISK].store
    await wait_until(lambda: world.mt.jobs is not None and "fo" in world.mt.jobs.views)  # reattached: pinned again
    assert list(store.journal.pins) == ["view:fo"]
    to_5 = {"view": "fo", "to": {"gen": 1, "seq": 5}}
    jobs.append({"job_id": "ch", "kind": "view-change", "disk_id": DISK, "point": to_5, "image": True})
    world.cs.publish(world.document(jobs=jobs))
    await wait_until(lambda: "ch" in world.cs.results)
    assert image_of(result(world, "ch")) == world.maker.images[(1, 5)]
    jobs.append({"job_id": "co", "kind": "view-commit", "disk_id": DISK, "point": {"view": "fo"}})
    world.cs.publish(world.document(jobs=jobs))
    await wait_until(lambda: "co" in world.cs.results)
    co = result(world, "co")
    assert co["dropped_points"] == 2 and co["kept_points"]
    assert store.replica.read(0, store.replica.size_bytes) == world.maker.images[(1, 5)]
    assert [p.seq for p in store.catalog.all(DISK)] == [1, 2, 3, 4, 5]
    assert world.mt.jobs is not None and "fo" not in world.mt.jobs.views
    assert not (world.cfg.data_dir / "views" / DISK / "fo").exists()
    assert store.journal.pins == {}
    jobs.append({"job_id": "gone", "kind": "view-drop", "disk_id": DISK, "point": {"view": "fo"}})
    jobs.append({"job_id": "bad", "kind": "view-drop", "disk_id": DISK, "point": {"view": "../x"}})
    world.cs.publish(world.document(jobs=jobs))
    await wait_until(lambda: "gone" in world.cs.results and "bad" in world.cs.results)
    assert world.cs.results["gone"][0]["state"] == "failed" and world.cs.results["bad"][0]["state"] == "failed"


async def test_test_failover_cleanup_drops_the_view_and_unpins(world: World) -> None:  # noqa: F811
    for _ in range(3):
        assert (await world.send_next())[0] == 201
    store = world.mt.workers[DISK].store
    await wait_until(lambda: store.applied == (1, 3))
    jobs: list[dict[str, Any]] = [{"job_id": "t1", "kind": "failover", "disk_id": DISK, "point": "latest-processed"},
                                  {"job_id": "t2", "kind": "failover", "disk_id": DISK, "point": {"gen": 1, "seq": 1}}]
    world.cs.publish(world.document(jobs=jobs))
    await wait_until(lambda: len(world.cs.results) == 2)
    assert len(store.journal.pins) == 2 and len(store.undo_listeners) == 2
    jobs.append({"job_id": "c1", "kind": "view-commit", "disk_id": DISK, "point": {"view": "t1"}})
    world.cs.publish(world.document(jobs=jobs))
    await wait_until(lambda: "c1" in world.cs.results)
    assert world.cs.results["c1"][0]["state"] == "failed"  # another view is attached: refused
    assert store.apply_next() is None and not store.closed
    jobs += [{"job_id": f"d{v}", "kind": "view-drop", "disk_id": DISK, "point": {"view": f"t{v}"}} for v in (1, 2)]
    world.cs.publish(world.document(jobs=jobs))
    await wait_until(lambda: "d1" in world.cs.results and "d2" in world.cs.results)
    assert result(world, "d1")["dropped"] and result(world, "d2")["dropped"]
    assert store.journal.pins == {} and store.undo_listeners == []
    assert not (world.cfg.data_dir / "views" / DISK / "t1").exists()
