"""The ``named`` probe answer: what the MT has durably received (applied + the staged batches that
apply next, read from their headers), the oldest point, the newest app-consistent and multi-machine
points with their tags — on a real store with batches staged and not yet applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mtbatches import DISK_SIZE, BatchMaker
from test_mt_service import DISK

from common import errors
from common.wire import batch as wbatch
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.failover import Probe, choose_point, probe
from mt.received import pending_keys


def open_store(data_dir: Path) -> DiskStore:
    store = DiskStore(DISK, data_dir, Catalog(data_dir / "catalog.db"), DISK_SIZE, 1 << 30)
    store.open()
    return store


def batch(maker: BatchMaker, tags: list[bytes] | None = None, **kw: Any) -> bytes:
    b = wbatch.decode(maker.make(**kw))  # type: ignore[arg-type]
    b.tags = list(tags or [])
    return wbatch.encode(b)


@pytest.mark.parametrize(("staged", "applied", "pending"), [
    ([], (1, 3), []),
    ([(1, 4), (1, 5), (1, 7)], (1, 3), [(1, 4), (1, 5)]),  # a gap stops the chain
    ([(1, 5)], (1, 3), []),
    ([(1, 4), (2, 1), (2, 2), (3, 1)], (1, 3), [(1, 4), (2, 1), (2, 2), (3, 1)]),  # newer generations from seq 1
    ([(1, 9), (2, 2), (3, 1)], (1, 3), [(3, 1)]),  # gen 2 lacks seq 1: the oldest newer start wins
    ([(1, 1), (1, 2)], (0, 0), [(1, 1), (1, 2)]),  # nothing applied: the first generation from seq 1
    ([(1, 2), (1, 3)], (0, 0), []),
])
def test_pending_keys_follow_the_apply_order(staged: list[tuple[int, int]], applied: tuple[int, int],
                                             pending: list[tuple[int, int]]) -> None:
    assert pending_keys(staged, applied) == pending


def test_named_answer_reports_staged_batches_and_the_point_they_lead_to(tmp_path: Path) -> None:
    s = open_store(tmp_path / "mt")
    maker = BatchMaker(bytes.fromhex(DISK), seed=3)
    for tags in ([], [b"crash:c1"], [b"app:a1"], [b"group-crash:g1"], []):
        assert s.receive(maker.gen, maker.seq + 1, batch(maker, tags))
        assert s.apply_next() is not None
    applied_hi = maker.wnum
    # two staged batches that apply next (one an app bookmark), and one after a gap that cannot
    sizes = []
    for _ in range(2):
        data = batch(maker, [b"app:a2"] if maker.seq == 5 else [])
        sizes.append(len(data))
        assert s.receive(maker.gen, maker.seq, data)
    staged_hi, staged_t = maker.wnum, maker.t_ns - 1_000_000
    gap = batch(maker)
    gap = batch(maker)  # seq 9: seq 8 never arrives
    assert s.receive(1, 9, gap)

    out = probe(s.catalog, DISK, Probe(named=True, recent=2), s.staging)
    assert out["latest"]["seq"] == 5 and out["latest"]["wnum_hi"] == applied_hi
    assert out["staged"] == {"batches": 3, "bytes": sum(sizes) + len(gap), "pending": 2}
    received = out["received"]
    assert (received["gen"], received["seq"], received["wnum_hi"], received["t_last_ns"], received["staged"]) == (
        1, 7, staged_hi, staged_t, True)
    assert received["accuracy"] == "exact" and received["wnum_hi"] >= out["latest"]["wnum_hi"]
    assert out["oldest"]["seq"] == 1
    assert [(p["seq"], p["tags"]) for p in out["app"]] == [(3, ["app:a1"])]  # the staged a2 is not a point yet
    assert [(p["seq"], p["tags"]) for p in out["multi"]] == [(4, ["group-crash:g1"])]
    assert [(p["seq"], p["tags"]) for p in out["points"]] == [(4, ["group-crash:g1"]), (5, [])]

    # choosing latest applies them first: then latest is what was received
    while s.apply_next() is not None:
        pass
    after = probe(s.catalog, DISK, Probe(named=True), s.staging)
    assert after["latest"]["seq"] == 7 and after["latest"]["wnum_hi"] == staged_hi
    assert after["staged"] == {"batches": 1, "bytes": len(gap), "pending": 0}
    assert after["received"] == {**after["latest"], "staged": False}
    assert [p["seq"] for p in after["app"]] == [6, 3]
    assert choose_point(s.catalog, DISK, "latest-app-consistent").key == (1, 6)
    s.close()


def test_a_staged_resync_start_makes_the_received_point_not_valid(tmp_path: Path) -> None:
    s = open_store(tmp_path / "mt")
    maker = BatchMaker(bytes.fromhex(DISK), seed=4)
    assert s.receive(1, 1, batch(maker)) and s.apply_next() is not None
    assert s.receive(1, 2, batch(maker, mode=wbatch.Mode.RESYNC, accuracy=wbatch.Accuracy.NONE,
                                 flags=wbatch.Flags.RESYNC_START))
    out = probe(s.catalog, DISK, Probe(named=True), s.staging)
    assert out["received"]["seq"] == 2 and out["received"]["accuracy"] == "none"
    assert out["latest"]["accuracy"] == "exact"
    s.close()


def test_named_answer_of_an_empty_disk_and_without_staging(tmp_path: Path) -> None:
    s = open_store(tmp_path / "mt")
    out = probe(s.catalog, DISK, Probe(named=True), s.staging)
    assert out["latest"] is None and out["received"] is None and out["oldest"] is None
    assert out["app"] == [] and out["multi"] == [] and out["staged"]["batches"] == 0
    assert probe(s.catalog, DISK, Probe(named=True))["staged"] == {"batches": 0, "bytes": 0, "pending": 0}
    s.close()


@pytest.mark.parametrize("bad", [{"named": 1}, {"named": "yes"}, {"named": True, "extra": 1}])
def test_a_bad_named_probe_is_refused(bad: Any) -> None:
    with pytest.raises(errors.BadRequest):
        Probe.parse(bad)
    assert Probe.parse({"named": True}).named
