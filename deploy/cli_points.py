"""``drlab machine points MACHINE`` and ``drlab disk points DISK``: recovery points as an operator
chooses them — each point's time, types, accuracy and write range, and the named choices (latest,
latest-processed, latest-app-consistent, latest-multi-machine, the retention window); pass the
chosen one to ``drlab failover``."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from deploy import report


def iso(ns: Any) -> str:
    """UTC ISO 8601 text of a time in ns (``-`` when there is none)."""
    if not isinstance(ns, int) or isinstance(ns, bool):
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns // 1_000_000 % 1000:03d}Z"


TYPE_ABBREV = {"crash-consistent": "crash", "app-consistent": "app", "multi-machine": "multi"}


def _types(point: dict[str, Any]) -> str:
    return ",".join(TYPE_ABBREV.get(t, t) for t in point.get("types") or []) or "-"


def _wrange(point: dict[str, Any]) -> str:
    first, hi = point.get("wnum_first") or 0, point.get("wnum_hi", 0)
    return f"{first}..{hi}" if first else f"(none)..{hi}"


def disk_rows(items: list[dict[str, Any]]) -> list[list[object]]:
    return [[iso(p.get("t_last_ns")), p.get("t_last_ns"), _types(p), p.get("accuracy"), _wrange(p),
             f"{p.get('gen')}/{p.get('seq')}", ",".join(p.get("tags") or []) or "-"] for p in items]


def machine_rows(items: list[dict[str, Any]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for p in items:
        batches = " ".join(f"{d[:8]}:{q['gen']}/{q['seq']}" for d, q in sorted((p.get("disks") or {}).items()))
        rows.append([iso(p.get("t_ns")), p.get("t_ns"), p.get("wnum"), _types(p), p.get("accuracy"), _wrange(p),
                     batches, ",".join(p.get("tags") or []) or "-"])
    return rows


def _point_text(point: dict[str, Any] | None, wnum: Any = None) -> str:
    if point is None:
        return "-" if wnum is None else f"W={wnum}"
    at = f"W={wnum} " if wnum is not None else ""
    where = f"{point['gen']}/{point['seq']} " if "gen" in point else ""
    t = point.get("t_last_ns", point.get("t_ns"))
    return f"{at}{where}wnum {_wrange(point)} at {iso(t)} ({point.get('accuracy')}, {_types(point)})"


def named_lines(named: dict[str, Any]) -> list[str]:
    """The named choices, one line each (disk or machine listing)."""
    latest = named.get("latest") or {}
    staged = latest.get("staged") or {}
    first = " (applies them first)" if latest.get("applies_staged_first") else ""
    window = named.get("window") or {}
    lines = [f"latest (lowest RPO):   {_point_text(latest.get('point'), latest.get('wnum'))}; staged "
             f"{staged.get('batches', 0)} batches, {staged.get('bytes', 0)} bytes, {staged.get('pending', 0)} "
             f"to apply{first}"]
    for key, label in (("latest_processed", "latest-processed (lowest RTO)"),
                       ("latest_app_consistent", "latest-app-consistent"),
                       ("latest_multi_machine", "latest-multi-machine")):
        item = named.get(key) or {}
        tag = f" [{item['tag']}]" if item.get("tag") else ""
        lines.append(f"{label + ':':<22} {_point_text(item.get('point'), item.get('wnum'))}{tag}")
    oldest_t = window.get("oldest_t_ns")
    newest_t = window.get("newest_t_ns")
    lines.append(f"window (any time):     {iso(oldest_t)} .. {iso(newest_t) if newest_t else 'latest'}"
                 + (f" (W {window['oldest_wnum']} .. {window.get('newest_wnum')})"
                    if window.get("oldest_wnum") is not None else ""))
    return lines


def render_disk(out: dict[str, Any]) -> str:
    head = f"disk {out.get('name')} ({out.get('disk_id')}) of machine {out.get('machine_id')}"
    table = report.table(["time (UTC)", "t_ns", "type", "accuracy", "wnum", "gen/seq", "tags"],
                         disk_rows(out.get("items") or []))
    return "\n".join([head, table, *named_lines(out.get("named") or {})])


def render_machine(out: dict[str, Any]) -> str:
    disks = ", ".join(f"{d.get('name')} ({d.get('disk_id')})" for d in out.get("disks") or [])
    head = f"machine {out.get('machine_id')}: disks {disks}"
    table = report.table(["time (UTC)", "t_ns", "W", "type", "accuracy", "wnum", "batches (disk:gen/seq)", "tags"],
                         machine_rows(out.get("items") or []))
    return "\n".join([head, table, *named_lines(out.get("named") or {})])


def _run(args: argparse.Namespace, path: str, render: Any) -> int:
    from deploy.cli import _admin_api

    out = _admin_api(args, lambda api: api.get(path, params={"limit": args.limit}))
    print(json.dumps(out, indent=2) if args.json or args.points_json else render(out))
    return 0


def cmd_machine_points(args: argparse.Namespace) -> int:
    return _run(args, f"/v1/machines/{args.machine_id}/points", render_machine)


def cmd_disk_points(args: argparse.Namespace) -> int:
    return _run(args, f"/v1/disks/{args.disk_id}/points", render_disk)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=20, help="the newest N points (1..1000)")
    p.add_argument("--json", dest="points_json", action="store_true", help="the API's answer as JSON")


def add_machine_parser(machine: Any) -> None:
    """``machine points`` (``machine``: the ``drlab machine`` subparsers)."""
    p = machine.add_parser("points", help="the machine's consistent recovery points and named choices")
    p.add_argument("machine_id")
    _common(p)
    p.set_defaults(func=cmd_machine_points)


def add_disk_parser(disk: Any) -> None:
    """``disk points`` (``disk``: the ``drlab disk`` subparsers)."""
    p = disk.add_parser("points", help="the disk's recovery points and named choices")
    p.add_argument("disk_id")
    _common(p)
    p.set_defaults(func=cmd_disk_points)
