"""Failover of one disk to a machine boundary ({"wnum": W}) or to one batch ({"gen", "seq"}), and the
probes the CS sends to choose a machine point — on a real store (journal, catalog, replica) whose
batches carry the write numbers a machine with several disks gives them (gaps: other disks' writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mtbatches import DISK_SIZE, BatchMaker
from test_mt_service import DISK, World, image_of, wait_until, world  # noqa: F401  (the MT in-process)

from common import errors
from common.wire import batch as wbatch
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.failover import Probe, choose_point, make_image, probe


def open_store(data_dir: Path) -> DiskStore:
    store = DiskStore(DISK, data_dir, Catalog(data_dir / "catalog.db"), DISK_SIZE, 1 << 30)
    store.open()
    return store


def machine_batch(maker: BatchMaker, first: int, hi: int, nrecords: int, t_last: int, **kw: Any) -> bytes:
    """The maker's next batch, numbered as a machine numbers it: this disk's writes from ``first``,
    the cut at the machine's ``hi``, its last write at ``t_last``."""
    batch = wbatch.decode(maker.make(nrecords=nrecords, **kw))  # type: ignore[arg-type]
    batch.wnum_first, batch.wnum_hi = (first if nrecords else 0), hi
    batch.t_first_ns, batch.t_last_ns = t_last - 10, t_last
    return wbatch.encode(batch)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = open_store(tmp_path / "mt")
    maker = BatchMaker(bytes.fromhex(DISK), seed=11)
    # (first, hi, records, t_last): writes 5, 6 and 10, 11 went to other disks; (1, 2) is an idle mark
    for first, hi, n, t_last in ((1, 6, 4, 100), (0, 9, 0, 150), (12, 15, 4, 200), (16, 20, 3, 300)):
        assert s.receive(maker.gen, maker.seq + 1, machine_batch(maker, first, hi, n, t_last))
        assert s.apply_next() is not None
    yield s, maker
    s.close()


@pytest.mark.parametrize(("wnum", "seq"), [(6, 1), (7, 1), (8, 1), (9, 2), (10, 2), (11, 2), (15, 3), (20, 4)])
def test_a_machine_boundary_is_the_newest_point_at_or_before_it(store: Any, tmp_path: Path, wnum: int,
                                                                seq: int) -> None:
    s, maker = store
    point = choose_point(s.catalog, DISK, {"wnum": wnum})
    assert point.key == (1, seq)
    result = make_image(s, point, tmp_path / f"w{wnum}.img")
    assert image_of(result) == maker.images[(1, seq)]
    assert result["point"]["wnum_hi"] <= wnum


@pytest.mark.parametrize(("wnum", "error", "words"), [
    (12, errors.Conflict, "not a boundary"), (14, errors.Conflict, "holds writes 12..15"),
    (21, errors.Conflict, "not known yet"), (5, errors.NotFound, "no recovery point at or before wnum 5")])
def test_a_wnum_inside_a_batch_past_the_newest_or_before_the_first_is_refused(
        store: Any, wnum: int, error: type[errors.DrlabError], words: str) -> None:
    s, _ = store
    with pytest.raises(error, match=words):
        choose_point(s.catalog, DISK, {"wnum": wnum})


def test_an_explicit_batch_point_and_one_that_is_not_valid(store: Any, tmp_path: Path) -> None:
    s, maker = store
    point = choose_point(s.catalog, DISK, {"gen": 1, "seq": 3})
    assert point.key == (1, 3)
    assert image_of(make_image(s, point, tmp_path / "g1s3.img")) == maker.images[(1, 3)]
    with pytest.raises(errors.NotFound):
        choose_point(s.catalog, DISK, {"gen": 1, "seq": 9})
    with pytest.raises(errors.BadRequest):
        choose_point(s.catalog, DISK, {"gen": 1, "seq": -1})
    data = machine_batch(maker, 21, 25, 2, 400, mode=wbatch.Mode.RESYNC, accuracy=wbatch.Accuracy.NONE,
                         flags=wbatch.Flags.RESYNC_START)
    assert s.receive(1, 5, data) and s.apply_next() is not None
    with pytest.raises(errors.Conflict, match="not a valid point"):
        choose_point(s.catalog, DISK, {"gen": 1, "seq": 5})
    with pytest.raises(errors.Conflict, match="not a valid point"):
        choose_point(s.catalog, DISK, {"wnum": 25})


def test_probes_answer_latest_recent_first_write_after_and_below(store: Any) -> None:
    s, _ = store
    out = probe(s.catalog, DISK, Probe(recent=3, time_ns=120, below=12))
    assert out["latest"]["seq"] == 4 and out["latest"]["wnum_hi"] == 20
    assert [p["seq"] for p in out["points"]] == [2, 3, 4]  # oldest first
    assert out["points"][0] == {"gen": 1, "seq": 2, "wnum_first": 0, "wnum_hi": 9, "t_first_ns": 140,
                                "t_last_ns": 150, "accuracy": "exact", "tags": []}
    assert out["after"]["seq"] == 3  # the idle mark at 150 holds no write: not "a write after 120"
    assert out["below"]["seq"] == 2
    out = probe(s.catalog, DISK, Probe(time_ns=300, below=6))
    assert out["after"] is None and out["below"] is None and "points" not in out


@pytest.mark.parametrize("bad", [None, "latest", {"recent": 0}, {"recent": 1001}, {"drain": 1},
                                 {"below": 0}, {"time_ns": -1}, {"recent": True}, {"what": 1}])
def test_a_bad_probe_is_refused(bad: Any) -> None:
    with pytest.raises(errors.BadRequest):
        Probe.parse(bad)


async def test_a_probe_job_drains_first_and_posts_its_answer(world: World) -> None:  # noqa: F811
    for _ in range(3):
        assert (await world.send_next())[0] == 201
    await wait_until(lambda: world.mt.workers[DISK].store.applied == (1, 3))
    worker = world.mt.workers[DISK]
    assert worker._task is not None
    worker._task.cancel()  # no background applier: only the job can apply what is staged now
    for _ in range(2):
        assert (await world.send_next())[0] == 201
    jobs = [{"job_id": "probe-1", "kind": "points", "disk_id": DISK, "point": {"drain": True, "recent": 2}},
            {"job_id": "probe-bad", "kind": "points", "disk_id": DISK, "point": {"recent": "all"}}]
    world.cs.publish(world.document(jobs=jobs))
    await wait_until(lambda: {"probe-1", "probe-bad"} <= set(world.cs.results))
    reply = world.cs.results["probe-1"][0]
    assert reply["state"] == "succeeded" and reply["result"]["latest"]["seq"] == 5
    assert [p["seq"] for p in reply["result"]["points"]] == [4, 5]
    assert worker.store.applied == (1, 5)
    bad = world.cs.results["probe-bad"][0]
    assert bad["state"] == "failed" and "recent" in bad["error"]
