"""``drlab machine disable MACHINE [--keep-points]``, ``drlab disk exclude DISK [--keep-points]``,
``drlab disk include DISK``: a disk leaves protection, or comes back (cs/release.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _post(args: argparse.Namespace, path: str, body: dict[str, Any] | None) -> int:
    from deploy.cli import _admin_api

    out = _admin_api(args, lambda api: api.post(path, body))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    kept = "points kept" if out.get("keep_points") else "points deleted"
    released = out.get("released") or []
    print(f"machine {out['machine_id']}: {out['protection_state']}; released {len(released)} disk(s)"
          + (f" ({kept})" if released else ""))
    for disk in out.get("disks") or []:
        print(f"  {disk['disk_id']}  {disk['name']:<12} {disk['state']}")
    return 0


def cmd_machine_disable(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/machines/{args.machine_id}/disable-protection", {"keep_points": args.keep_points})


def cmd_disk_exclude(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/disks/{args.disk_id}/exclude", {"keep_points": args.keep_points})


def cmd_disk_include(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/disks/{args.disk_id}/include", None)


def add_parsers(machine: Any, disk: Any) -> None:
    """``machine``, ``disk``: the subparsers of ``drlab machine`` and ``drlab disk``."""
    p = machine.add_parser("disable", help="disable protection of a machine (every disk leaves replication)")
    p.add_argument("machine_id")
    p.add_argument("--keep-points", action="store_true",
                   help="the MT keeps the replica and its points (enabling again compares by checksum)")
    p.set_defaults(func=cmd_machine_disable)
    p = disk.add_parser("exclude", help="exclude one disk of a protected machine (the others keep replicating)")
    p.add_argument("disk_id")
    p.add_argument("--keep-points", action="store_true", help="the MT keeps the disk's replica and its points")
    p.set_defaults(func=cmd_disk_exclude)
    p = disk.add_parser("include", help="protect an excluded disk again")
    p.add_argument("disk_id")
    p.set_defaults(func=cmd_disk_include)
