"""The named recovery-point choices of a disk and of a machine (pure: no I/O).

From an MT's ``named`` probe answer (mt/failover.py ``probe``; docs/PROTOCOL.md, "Machine points
and failover") a listing says what each named choice would give:
- ``latest``: everything the MT has durably received — the applied points plus the staged batches
  that apply next (``received``); choosing it applies them first (lowest RPO);
- ``latest_processed``: the newest applied point (no apply first: lowest RTO);
- ``latest_app_consistent`` / ``latest_multi_machine``: the newest valid point with such a tag;
- ``window``: the oldest and newest points kept, the bounds of "any time in the retention window".
For a machine every choice is one W (cs/machinepoints.py): ``latest`` the smallest ``received``
``wnum_hi`` of its disks, ``latest_processed`` the smallest latest one, and a tagged choice the W of
the newest tag every disk carries at the same ``wnum_hi`` (a bookmark cuts every disk of the
machine at one boundary; a tag missing on a disk, or at different W, is no machine point).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from common import errors
from cs import machinepoints as mp

MAX_TAGGED = 1000
TAGGED = {"latest_app_consistent": ("app", mp.APP_KINDS), "latest_multi_machine": ("multi", mp.GROUP_KINDS)}


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= mp.MAX_U64:
        raise errors.BadRequest(f"staged {name} must be an unsigned 64-bit integer")
    return value


def staged(result: Mapping[str, Any]) -> dict[str, int]:
    """``{batches, bytes, pending}`` of an answer (zeros from an MT that does not report them)."""
    raw = result.get("staged") or {}
    if not isinstance(raw, dict):
        raise errors.BadRequest("staged must be an object")
    return {name: _count(raw.get(name, 0), name) for name in ("batches", "bytes", "pending")}


def tagged(result: Mapping[str, Any], field: str) -> list[mp.DiskPoint]:
    """The tagged points of an answer (``app`` / ``multi``), newest first."""
    items = result.get(field) or []
    if not isinstance(items, list) or len(items) > MAX_TAGGED:
        raise errors.BadRequest(f"{field} must be a list of at most {MAX_TAGGED} points")
    return [mp.DiskPoint.parse(p) for p in items]


def _public(point: mp.DiskPoint | None, **extra: Any) -> dict[str, Any] | None:
    return None if point is None else {**point.public(), **extra}


def disk_named(result: Mapping[str, Any]) -> dict[str, Any]:
    """The named choices of one disk from its MT's ``named`` probe answer."""
    latest = mp.DiskPoint.parse_optional(result.get("latest"))
    received = mp.DiskPoint.parse_optional(result.get("received")) or latest
    oldest = mp.DiskPoint.parse_optional(result.get("oldest"))
    stage = staged(result)
    is_staged = received is not None and (latest is None or (received.gen, received.seq) > (latest.gen, latest.seq))
    out: dict[str, Any] = {
        "latest": {"point": _public(received, staged=bool(is_staged)), "staged": stage,
                   "applies_staged_first": stage["pending"] > 0},
        "latest_processed": {"point": _public(latest)},
        "window": {"oldest": _public(oldest), "newest": _public(latest),
                   "oldest_t_ns": oldest.t_last_ns if oldest else None,
                   "newest_t_ns": received.t_last_ns if received else None}}
    for name, (field, _kinds) in TAGGED.items():
        points = tagged(result, field)
        out[name] = {"point": _public(points[0]) if points else None}
    return out


def common_tagged(per_disk: Mapping[str, Sequence[mp.DiskPoint]], kinds: Sequence[str]
                  ) -> tuple[str, mp.MachinePoint] | None:
    """(tag, machine point) of the newest tag of ``kinds`` every disk carries at one ``wnum_hi``."""
    if not per_disk:
        return None
    by_tag: dict[str, dict[str, mp.DiskPoint]] = {}
    for disk_id, points in per_disk.items():
        for point in points:  # newest first: a tag's newest point wins
            for tag in point.tags:
                if mp.tag_kind(tag) in kinds:
                    by_tag.setdefault(tag, {}).setdefault(disk_id, point)
    found = []
    for tag, disks in by_tag.items():
        his = {p.wnum_hi for p in disks.values()}
        if len(disks) == len(per_disk) and len(his) == 1:
            found.append((his.pop(), tag, disks))
    if not found:
        return None
    wnum, tag, disks = max(found, key=lambda f: (f[0], f[1]))
    return tag, mp.MachinePoint(wnum, max(p.t_last_ns for p in disks.values()),
                                mp.worst([p.accuracy for p in disks.values()]), disks)


def tagged_wnum(results: Mapping[str, Mapping[str, Any]], name: str) -> int:
    """W of a machine's ``latest_app_consistent`` / ``latest_multi_machine`` (404 if none)."""
    field, kinds = TAGGED[name]
    found = common_tagged({d: tagged(r, field) for d, r in results.items()}, kinds)
    if found is None:
        kind = name.removeprefix("latest_").replace("_", "-")
        raise errors.NotFound(f"no {kind} point common to every disk of the machine")
    return found[1].wnum


def _min_wnum(points: Mapping[str, mp.DiskPoint | None]) -> int | None:
    if not points or any(p is None for p in points.values()):
        return None
    return min(p.wnum_hi for p in points.values() if p is not None)


def machine_named(results: Mapping[str, Mapping[str, Any]], windows: Mapping[str, mp.Window]) -> dict[str, Any]:
    """The named choices of a machine from its disks' ``named`` probe answers (``windows``: the
    disks' listed points, which show the machine point of ``latest_processed`` when it is listed)."""
    latests = {d: mp.DiskPoint.parse_optional(r.get("latest")) for d, r in results.items()}
    receiveds = {d: mp.DiskPoint.parse_optional(r.get("received")) or latests[d] for d, r in results.items()}
    oldests = {d: mp.DiskPoint.parse_optional(r.get("oldest")) for d, r in results.items()}
    stages = [staged(r) for r in results.values()]
    total = {k: sum(s[k] for s in stages) for k in ("batches", "bytes", "pending")}
    processed = _min_wnum(latests)
    shown = None if processed is None else mp.machine_point(windows, processed)
    out: dict[str, Any] = {
        "latest": {"wnum": _min_wnum(receiveds), "staged": total, "applies_staged_first": total["pending"] > 0},
        "latest_processed": {"wnum": processed, "point": shown.public() if shown else None},
        "window": {"oldest_wnum": None if _min_wnum(oldests) is None else
                   max(p.wnum_hi for p in oldests.values() if p is not None),
                   "oldest_t_ns": None if _min_wnum(oldests) is None else
                   max(p.t_last_ns for p in oldests.values() if p is not None),
                   "newest_wnum": processed, "newest_t_ns": shown.t_ns if shown else None}}
    for name, (field, kinds) in TAGGED.items():
        found = common_tagged({d: tagged(r, field) for d, r in results.items()}, kinds)
        out[name] = {"wnum": found[1].wnum if found else None, "tag": found[0] if found else None,
                     "point": found[1].public() if found else None}
    return out
