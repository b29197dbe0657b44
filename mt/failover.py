"""Recovery points for failover, and failover images by copy.

Failover jobs no longer copy: they make a copy-on-write view (mt/view.py), ready in a time
independent of the disk's size. :func:`make_image` (below) stays as the independent reference the
tests check views against: a sparse copy of the replica rolled back through the undo journal.

Under the disk's apply lock the replica is copied (holes and all-zero 1 MiB blocks are skipped)
and the batches applied after the point are noted; outside the lock, their undo records are
written to the copy, newest batch first and each batch's records in reverse order. Replication
keeps running meanwhile: the journal is append-only, so the noted batches do not change; the
segments they are in are pinned (under the lock, the point checked still listed) until the copy is
done, so retention (mt/pruner.py) does not remove them meanwhile.
Blocking: call from a worker thread.

Machine points (docs/PROTOCOL.md, "Machine points and failover"): ``{"wnum": W}`` is this disk's
state at machine boundary W — its newest point with ``wnum_hi <= W``, refused (409) unless the next
point starts after W (else W is inside one of this disk's batches) or, when there is no next point,
the newest one is exactly at W (else whether the disk wrote up to W is not known yet). A probe
(:func:`probe`) answers the facts the CS needs to choose W across a machine's disks.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import errors
from common import logging as dlog
from common.wire.batch import Accuracy
from mt.apply import DiskStore
from mt.catalog import APP_KINDS, GROUP_KINDS, MAX_TAGS_LISTED, Catalog, Point
from mt.journal import read_undo_range, roll_back
from mt.received import received
from mt.replica import fsync_dir, read_exact, write_all
from mt.staging import DiskStaging

log = dlog.get("drlab.mt.failover")

BLOCK = 1 << 20
_ZERO = bytes(BLOCK)


def choose_point(catalog: Catalog, disk_id: str, spec: Any) -> Point:
    """``"latest"`` / ``"latest-processed"`` (the newest applied batch: the caller applies what is
    staged first for ``latest``) or ``{"time_ns": T}`` (newest point with no write after T),
    ``{"wnum": W}`` (the state at machine boundary W), ``{"gen": G, "seq": S}`` (that batch's point), or a
    bookmark: ``{"tag": NAME}``, ``"latest-app-consistent"``, ``"latest-multi-machine"``."""
    if spec in ("latest", "latest-processed"):
        point = catalog.latest(disk_id)
    elif isinstance(spec, dict) and isinstance(spec.get("time_ns"), int):
        point = catalog.at_time(disk_id, int(spec["time_ns"]))
    elif isinstance(spec, dict) and set(spec) == {"wnum"} and _uint(spec["wnum"]):
        point = at_wnum(catalog, disk_id, int(spec["wnum"]))
    elif isinstance(spec, dict) and set(spec) == {"gen", "seq"} and _uint(spec["gen"]) and _uint(spec["seq"]):
        point = _valid(catalog.get(disk_id, int(spec["gen"]), int(spec["seq"])), spec)
    elif spec in ("latest-app-consistent", "latest-multi-machine") or (isinstance(spec, dict) and "tag" in spec):
        point = _tagged_point(catalog, disk_id, spec)  # bookmarks
    else:
        raise errors.BadRequest(f"unknown recovery point {spec!r}")
    if point is None:
        raise errors.NotFound(f"no recovery point of disk {disk_id} matches {spec!r}")
    return point


def _tagged_point(catalog: Catalog, disk_id: str, spec: Any) -> Point | None:
    """``{"tag": NAME}`` (the newest point carrying it; one that is not a valid point -> 409), or the
    newest valid point with an app-consistent / multi-machine tag."""
    if spec == "latest-app-consistent":
        return catalog.latest_tagged(disk_id, APP_KINDS)
    if spec == "latest-multi-machine":
        return catalog.latest_tagged(disk_id, GROUP_KINDS)
    if not isinstance(spec["tag"], str):
        raise errors.BadRequest(f"unknown recovery point {spec!r}")
    point = catalog.by_tag(disk_id, spec["tag"])
    if point is not None and point.accuracy == Accuracy.NONE:
        raise errors.Conflict(f"tag {spec['tag']!r} of disk {disk_id} marks no valid point (the disk was resyncing)")
    return point


def _uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64


def _valid(point: Point | None, spec: Any) -> Point | None:
    if point is not None and point.accuracy == Accuracy.NONE:
        raise errors.Conflict(f"point {spec!r} of disk {point.disk_id} is not a valid point (the disk was resyncing)")
    return point


def at_wnum(catalog: Catalog, disk_id: str, wnum: int) -> Point:
    """The disk's state at machine boundary ``wnum`` (module docstring); 404 / 409 otherwise."""
    point = catalog.newest_below_wnum(disk_id, wnum + 1)
    if point is None:
        raise errors.NotFound(f"disk {disk_id} has no recovery point at or before wnum {wnum}")
    if catalog.next_after(disk_id, point.gen, point.seq) is None and point.wnum_hi < wnum:
        raise errors.Conflict(f"disk {disk_id} has points up to wnum {point.wnum_hi} only: "
                              f"its state at {wnum} is not known yet")
    nxt = catalog.next_write_after(disk_id, point.gen, point.seq)  # past a resync's wnum-0 batches
    if nxt is not None and nxt.wnum_first <= wnum:
        raise errors.Conflict(f"wnum {wnum} is not a boundary of disk {disk_id}: its batch ({nxt.gen}, {nxt.seq}) "
                              f"holds writes {nxt.wnum_first}..{nxt.wnum_hi}")
    valid = _valid(point, {"wnum": wnum})
    assert valid is not None
    return valid


def compact(point: Point | None, tags: list[str] | None = None) -> dict[str, Any] | None:
    """A point as a probe reports it (with its bookmark tags when given)."""
    if point is None:
        return None
    out: dict[str, Any] = {"gen": point.gen, "seq": point.seq, "wnum_first": point.wnum_first,
                           "wnum_hi": point.wnum_hi, "t_first_ns": point.t_first_ns, "t_last_ns": point.t_last_ns,
                           "accuracy": point.accuracy_name}
    if tags is not None:
        out["tags"] = tags[:MAX_TAGS_LISTED]
    return out


def _with_tags(catalog: Catalog, disk_id: str, points: list[Point]) -> list[dict[str, Any]]:
    tags = catalog.tags_of(disk_id, [p.key for p in points])
    return [c for p in points if (c := compact(p, tags.get(p.key, []))) is not None]


MAX_PROBE_POINTS = 1000
TAGGED_POINTS = 32  # per kind, in a ``named`` answer


@dataclass(frozen=True)
class Probe:
    """What a ``points`` job asks (each part optional): apply what is staged first (``drain``),
    the newest ``recent`` points (with their tags), the first point with a write after ``time_ns``,
    the newest point below ``below``, and the ``named`` choices (what is staged and the point it
    leads to, the oldest point, the newest app-consistent and multi-machine points). The latest
    point is always answered."""

    drain: bool = False
    recent: int | None = None
    time_ns: int | None = None
    below: int | None = None
    named: bool = False

    @classmethod
    def parse(cls, spec: Any) -> Probe:
        if not isinstance(spec, dict) or set(spec) - {"drain", "recent", "time_ns", "below", "named"}:
            raise errors.BadRequest(f"bad probe {str(spec)[:200]}")
        for flag in ("drain", "named"):
            if not isinstance(spec.get(flag, False), bool):
                raise errors.BadRequest(f"probe {flag} must be a boolean")
        for name, low, high in (("recent", 1, MAX_PROBE_POINTS), ("time_ns", 0, 2**63), ("below", 1, 2**64 - 1)):
            value = spec.get(name)
            if value is not None and (not _uint(value) or not low <= value <= high):
                raise errors.BadRequest(f"probe {name} must be an integer in [{low}, {high}]")
        return cls(bool(spec.get("drain", False)), spec.get("recent"), spec.get("time_ns"), spec.get("below"),
                   bool(spec.get("named", False)))


def probe(catalog: Catalog, disk_id: str, q: Probe, staging: DiskStaging | None = None) -> dict[str, Any]:
    """The answer to a probe (PROTOCOL.md): ``latest`` and what was asked, as compact points.

    ``named`` adds ``staged`` / ``received`` (mt/received.py; nothing staged without ``staging``),
    ``oldest``, and ``app`` / ``multi``: the newest valid points with an app-consistent /
    multi-machine tag, newest first, with their tags. ``received`` is never older than ``latest``:
    both come from one reading of the latest point."""
    latest = catalog.latest(disk_id)
    out: dict[str, Any] = {"disk_id": disk_id, "latest": compact(latest)}
    if q.recent is not None:
        out["points"] = _with_tags(catalog, disk_id, list(reversed(catalog.recent(disk_id, q.recent))))
    if q.time_ns is not None:
        out["after"] = compact(catalog.first_write_after(disk_id, q.time_ns))
    if q.below is not None:
        out["below"] = compact(catalog.newest_below_wnum(disk_id, q.below))
    if q.named:
        if staging is not None:
            out.update(received(staging, latest, out["latest"]))
        else:
            out.update(staged={"batches": 0, "bytes": 0, "pending": 0},
                       received=None if latest is None else {**out["latest"], "staged": False})
        out["oldest"] = compact(catalog.oldest(disk_id))
        out["app"] = _with_tags(catalog, disk_id, catalog.tagged(disk_id, APP_KINDS, TAGGED_POINTS))
        out["multi"] = _with_tags(catalog, disk_id, catalog.tagged(disk_id, GROUP_KINDS, TAGGED_POINTS))
    return out


def data_regions(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the regions of a file that may hold data (holes skipped when the file
    system says where they are)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = min(size, os.lseek(fd, start, os.SEEK_HOLE))
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            yield pos, size  # no hole support: copy everything
            return
        yield start, end
        pos = end


def sparse_copy(src_fd: int, dst_fd: int, size: int) -> int:
    """Copy ``size`` bytes, leaving holes where the source has holes or zero blocks; returns the
    bytes written."""
    written = 0
    os.ftruncate(dst_fd, size)
    for start, end in data_regions(src_fd, size):
        for pos in range(start, end, BLOCK):
            block = read_exact(src_fd, min(BLOCK, end - pos), pos)
            if block != _ZERO[:len(block)]:
                write_all(dst_fd, block, pos)
                written += len(block)
    return written


def make_image(store: DiskStore, point: Point, dest: Path) -> dict[str, Any]:
    """Build the image of ``point`` at ``dest``; returns the job result (PROTOCOL.md)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    owner = f"image:{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with store.lock:  # retention prunes under this lock, never a pinned segment
            if store.catalog.get(store.disk_id, point.gen, point.seq) is None:
                raise errors.NotFound(f"point ({point.gen}, {point.seq}) of disk {store.disk_id} "
                                      "left the retention window")
            copied = sparse_copy(store.replica.fd, fd, store.replica.size_bytes)
            newer = store.catalog.newer_than(store.disk_id, point.gen, point.seq)
            store.journal.pin(owner, min((p.segno for p in newer), default=store.journal.segno))
        for p in newer:
            roll_back(fd, read_undo_range(store.journal.path(p.segno), p.undo_off, p.commit_off))
        os.fsync(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
        with store.lock:
            store.journal.unpin(owner)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    log.info("failover_image_ready", disk=store.disk_id, gen=point.gen, seq=point.seq, path=str(dest),
             copied_bytes=copied, rolled_back_batches=len(newer))
    return {"image_path": str(dest.resolve()), "disk_id": store.disk_id,
            "point": {"gen": point.gen, "seq": point.seq, "wnum_hi": point.wnum_hi, "t_last_ns": point.t_last_ns,
                      "accuracy": point.accuracy_name}}
