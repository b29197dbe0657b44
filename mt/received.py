"""What an MT has durably received for a disk beyond what it applied (the ``latest`` choice).

A staged batch is durable (mt/staging.py) but not yet a point; choosing ``latest`` applies, first,
the staged batches that apply next in order (mt/apply.py ``next_key``: ``(gen, seq + 1)``, or a
newer generation from its seq 1; an older generation's leftovers never apply). The point they lead
to is read from their headers only: its wnum range, times and the accuracy the catalog will give it
(``point_accuracy``). Blocking: call from a worker thread.
"""

from __future__ import annotations

import os
from typing import Any

from common.wire import batch as wbatch
from mt.catalog import ACCURACY_NAMES, Point, point_accuracy
from mt.replica import read_exact
from mt.staging import DiskStaging, Key

MAX_PENDING_HEADERS = 10_000  # headers read for one answer (a larger backlog: its first ones only)


def pending_keys(staged: list[Key], applied: Key) -> list[Key]:
    """The staged batches that apply after ``applied``, in apply order (``next_key``'s rule)."""
    have = set(staged)
    starts = sorted(g for g, s in have if s == 1)
    out: list[Key] = []
    cur = applied
    while True:
        want = (cur[0], cur[1] + 1)
        if want not in have:
            newer = [g for g in starts if g > cur[0]]
            if not newer:
                return out
            want = (newer[0], 1)
        out.append(want)
        cur = want


def _header(staging: DiskStaging, key: Key) -> wbatch.BatchHeader | None:
    try:
        fd = os.open(staging.path(*key), os.O_RDONLY)
    except FileNotFoundError:  # applied (and deleted) meanwhile
        return None
    try:
        return wbatch.parse_header(read_exact(fd, wbatch.HEADER_SIZE, 0))
    except (OSError, wbatch.MalformedBatch):
        return None
    finally:
        os.close(fd)


def received(staging: DiskStaging, latest: Point | None, base: dict[str, Any] | None) -> dict[str, Any]:
    """``{"staged": {batches, bytes, pending}, "received": P}``: every staged batch (count, bytes),
    how many apply next in order (``pending``), and the point the disk reaches once they are applied
    (``base``, the latest applied point, when none is pending). P carries ``staged``: whether it is
    a staged batch's."""
    keys = pending_keys(staging.keys(), latest.key if latest is not None else (0, 0))
    count, nbytes = staging.backlog()
    point = None if base is None else {**base, "staged": False}
    in_resync = latest.in_resync if latest is not None else False
    for key in keys[:MAX_PENDING_HEADERS]:
        h = _header(staging, key)
        if h is None:
            break
        accuracy, in_resync = point_accuracy(in_resync, h.mode, h.accuracy, h.flags)
        point = {"gen": h.generation, "seq": h.seq, "wnum_first": h.wnum_first, "wnum_hi": h.wnum_hi,
                 "t_first_ns": h.t_first_ns, "t_last_ns": h.t_last_ns, "accuracy": ACCURACY_NAMES[accuracy],
                 "staged": True}
    return {"staged": {"batches": count, "bytes": nbytes, "pending": len(keys)}, "received": point}
