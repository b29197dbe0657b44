"""Tags of recovery points (bookmarks) on the MT: kept in the catalog with their point, across the
reconcile from the journal (also when the crash came before the catalog row), dropped with it,
listed and selected by the points route, and chosen by failover ({"tag"}, latest app-consistent,
latest multi-machine) with the exact image of that point."""

from __future__ import annotations

from pathlib import Path

import pytest
from mtbatches import DISK_SIZE, BatchMaker
from test_mt_service import DISK, World, image_of, wait_until, world  # noqa: F401  (the MT in-process)

from common import errors
from common.wire import batch as wbatch
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.failover import choose_point, make_image


def tagged(maker: BatchMaker, tags: list[bytes], **kw: object) -> bytes:
    """The maker's next batch with ``tags`` in its header."""
    batch = wbatch.decode(maker.make(**kw))  # type: ignore[arg-type]
    batch.tags = list(tags)
    return wbatch.encode(batch)


def open_store(data_dir: Path) -> DiskStore:
    store = DiskStore(DISK, data_dir, Catalog(data_dir / "catalog.db"), DISK_SIZE, 1 << 30)
    store.open()
    return store


def apply(store: DiskStore, maker: BatchMaker, tags: list[bytes] | None = None, **kw: object) -> None:
    data = tagged(maker, tags or [], **kw)
    assert store.receive(maker.gen, maker.seq, data)
    assert store.apply_next() is not None


def test_tags_survive_the_reconcile_and_go_with_their_point(tmp_path: Path) -> None:
    data_dir = tmp_path / "mt"
    maker = BatchMaker(bytes.fromhex(DISK), seed=5)
    store = open_store(data_dir)
    apply(store, maker)
    apply(store, maker, [b"crash:t1"])
    apply(store, maker, [b"app:t2", b"group-app:g1"])
    apply(store, maker, [b"crash:t3"], mode=wbatch.Mode.RESYNC, accuracy=wbatch.Accuracy.NONE,
          flags=wbatch.Flags.RESYNC_START)
    cat = store.catalog
    assert cat.tags_of(DISK, [(1, 1), (1, 2), (1, 3)]) == {(1, 2): ["crash:t1"], (1, 3): ["app:t2", "group-app:g1"]}
    assert [p["tags"] for p in cat.listing(DISK, 10)] == [[], ["crash:t1"], ["app:t2", "group-app:g1"], ["crash:t3"]]
    assert [(p["seq"], p["tags"]) for p in cat.listing(DISK, 10, "group-app:g1")] == [(3, ["app:t2", "group-app:g1"])]
    assert cat.listing(DISK, 10, "nope") == []
    latest_app = cat.latest_tagged(DISK, ["app", "group-app"])
    assert latest_app is not None and latest_app.key == (1, 3)
    assert cat.latest_tagged(DISK, ["APP"]) is None  # kinds are case-sensitive
    store.close()

    # the journal is the authority: a rewritten row keeps its tags, a row dropped drops them
    row = cat.get(DISK, 1, 2)
    assert row is not None
    cat.insert(row)  # the reconcile rewrites a row
    assert cat.tags_of(DISK, [(1, 2)]) == {(1, 2): ["crash:t1"]}
    cat.delete(DISK, [(1, 2)])
    assert cat.tags_of(DISK, [(1, 2)]) == {} and cat.by_tag(DISK, "crash:t1") is None
    store = open_store(data_dir)  # reconcile restores the row from its commit record; the tag is gone
    assert store.catalog.get(DISK, 1, 2) is not None and store.catalog.by_tag(DISK, "crash:t1") is None
    store.close()


def test_a_crash_between_commit_and_catalog_keeps_the_tag_from_the_staged_batch(tmp_path: Path) -> None:
    data_dir = tmp_path / "mt"
    maker = BatchMaker(bytes.fromhex(DISK), seed=6)
    store = open_store(data_dir)
    apply(store, maker)
    data = tagged(maker, [b"group-crash:late"])
    store.receive(maker.gen, maker.seq, data)
    store.apply_batch(wbatch.decode(data), 123, wbatch.checksum(data))  # committed, still staged
    store.catalog.delete(DISK, [(1, 2)])  # as if the catalog insert never happened
    store.close()
    store = open_store(data_dir)
    point = store.catalog.by_tag(DISK, "group-crash:late")
    assert point is not None and point.key == (1, 2)
    store.close()


def test_failover_by_tag_and_latest_tagged_points_give_the_image_of_that_point(tmp_path: Path) -> None:
    maker = BatchMaker(bytes.fromhex(DISK), seed=8)
    store = open_store(tmp_path / "mt")
    for seq in range(1, 9):
        tags = {2: [b"app:a"], 4: [b"group-crash:g"], 5: [b"crash:c"], 6: [b"app:b"]}.get(seq, [])
        apply(store, maker, tags)
    expect = {"app:a": (1, 2), "group-crash:g": (1, 4), "crash:c": (1, 5), "app:b": (1, 6)}
    for tag, key in expect.items():
        point = choose_point(store.catalog, DISK, {"tag": tag})
        assert point.key == key
        result = make_image(store, point, tmp_path / f"{tag.replace(':', '_')}.img")
        assert Path(result["image_path"]).read_bytes() == maker.images[key]
    assert choose_point(store.catalog, DISK, "latest-app-consistent").key == (1, 6)
    assert choose_point(store.catalog, DISK, "latest-multi-machine").key == (1, 4)
    with pytest.raises(errors.NotFound):
        choose_point(store.catalog, DISK, {"tag": "app:missing"})
    with pytest.raises(errors.BadRequest):
        choose_point(store.catalog, DISK, {"tag": 5})
    apply(store, maker, [b"app:resyncing"], mode=wbatch.Mode.RESYNC, accuracy=wbatch.Accuracy.NONE,
          flags=wbatch.Flags.RESYNC_START)
    with pytest.raises(errors.Conflict):  # a tag inside a resync marks no valid point
        choose_point(store.catalog, DISK, {"tag": "app:resyncing"})
    assert choose_point(store.catalog, DISK, "latest-app-consistent").key == (1, 6)
    store.close()


async def test_the_points_route_lists_tags_and_selects_by_tag(world: World) -> None:  # noqa: F811
    w = world
    for tags in ([], [b"crash:x"], [], [b"app:y", b"crash:z"]):
        data = tagged(w.maker, tags)
        status, _ = await w.put(w.maker.gen, w.maker.seq, w.sealer.seal(w.maker.seq, data))
        assert status == 201
    await wait_until(lambda: w.mt.workers[DISK].store.applied == (1, 4))
    status, body = await w.control(f"/v1/disks/{DISK}/points")
    assert status == 200 and [p["tags"] for p in body["items"]] == [[], ["crash:x"], [], ["app:y", "crash:z"]]
    status, body = await w.control(f"/v1/disks/{DISK}/points?tag=app:y")
    assert status == 200 and [(p["seq"], p["wnum_hi"] > 0) for p in body["items"]] == [(4, True)]
    status, body = await w.control(f"/v1/disks/{DISK}/points?tag=" + "x" * 5000)
    assert (status, body["code"]) == (400, "bad_request")
    status, body = await w.control(f"/v1/disks/{DISK}/points?tag=")
    assert status == 400
    w.cs.publish(w.document(jobs=[{"job_id": "j1", "kind": "failover", "disk_id": DISK, "point": {"tag": "crash:x"},
                                   "image": True}]))
    await wait_until(lambda: "j1" in w.cs.results)
    [result] = w.cs.results["j1"]
    assert result["state"] == "succeeded" and result["result"]["point"]["seq"] == 2
    assert image_of(result["result"]) == w.maker.images[(1, 2)]
