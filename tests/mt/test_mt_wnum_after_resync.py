"""Machine boundaries ({"wnum": W}) on a disk whose agent was killed and resynced: the resync's
batches carry wnum 0 (the restarted agent knows no write number) after points with higher ones.
Found by the chaos drill (deploy/drills/chaos.py): W = 12 used to pick the resync's point, which
holds writes up to 27."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import errors
from common.wire.batch import Accuracy
from mt.catalog import Catalog, Point
from mt.failover import at_wnum

DISK = "c3" * 16
pytestmark = pytest.mark.timeout(30)

# (gen, seq, wnum_first, wnum_hi, accuracy): the catalog the chaos drill left (seed 38, cycle 1)
ROWS = [(1, 1, 0, 0, Accuracy.NONE), (1, 2, 0, 0, Accuracy.APPROXIMATE), (1, 3, 9, 12, Accuracy.EXACT),
        (1, 4, 13, 27, Accuracy.EXACT),
        (2, 1, 0, 0, Accuracy.NONE), (2, 2, 0, 0, Accuracy.APPROXIMATE),  # the agent's resync after its kill
        (2, 3, 29, 33, Accuracy.EXACT), (2, 4, 34, 40, Accuracy.EXACT)]


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = Catalog(tmp_path / "catalog.db")
    for i, (gen, seq, first, hi, acc) in enumerate(ROWS):
        cat.insert(Point(DISK, gen, seq, first, hi, i, i, i, i, int(acc), 0, False, 1, 0, 0, 0, None))
    return cat


@pytest.mark.parametrize(("wnum", "key"), [(12, (1, 3)), (20, None), (27, (1, 4)), (28, (1, 4)),
                                           (33, (2, 3)), (40, (2, 4))])
def test_a_boundary_before_a_resync_is_the_point_holding_it(catalog: Catalog, wnum: int,
                                                            key: tuple[int, int] | None) -> None:
    if key is None:  # inside batch (1, 4)
        with pytest.raises(errors.Conflict, match="holds writes 13..27"):
            at_wnum(catalog, DISK, wnum)
        return
    assert at_wnum(catalog, DISK, wnum).key == key


def test_a_wnum_inside_the_first_batch_after_the_resync_is_no_boundary(catalog: Catalog) -> None:
    """The resync's wnum-0 batches do not hide the batch that holds the write."""
    with pytest.raises(errors.Conflict, match=r"its batch \(2, 3\) holds writes 29..33"):
        at_wnum(catalog, DISK, 30)


def test_past_the_newest_point_is_not_known_yet(catalog: Catalog) -> None:
    with pytest.raises(errors.Conflict, match="not known yet"):
        at_wnum(catalog, DISK, 41)
