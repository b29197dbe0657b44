"""Read-only ``show`` commands for single CS objects that had no command of their own:

    drlab site show NAME                       GET /v1/sites/{name}      (the site and its members)
    drlab account show NAME                    GET /v1/accounts/{name}
    drlab group show NAME                      GET /v1/groups/{name}
    drlab disk assignments DISK_ID [--limit N] GET /v1/disks/{disk_id}/assignments (PS/MT history)
    drlab disk verify-show DISK_ID VERIFY_ID   GET /v1/disks/{disk_id}/verify/{verify_id}

Rules: a readable table by default (one ``field value`` row per field for a single object), the
CS's answer unchanged with ``--json``; an unknown name or id is the CS's 404, printed by
deploy/cli.py ``main`` as ``drlab: error: ...`` with exit status 2. Nothing here changes state.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from deploy import report

ASSIGNMENT_COLS = ["at_ns", "actor", "action", "ps_id_from", "ps_id_to", "mt_id_from", "mt_id_to"]


def _get(args: argparse.Namespace, path: str, params: dict[str, Any] | None = None) -> Any:
    from deploy.cli import _admin_api

    return _admin_api(args, lambda api: api.get(path, params=params))


def fields(obj: dict[str, Any]) -> str:
    """A ``field value`` table of one object (pure); lists are joined by commas, None is ``-``."""
    def text(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return ", ".join(v) or "-"
        return json.dumps(v) if isinstance(v, (dict, list)) else str(v)

    return report.table(["field", "value"], [[k, text(v)] for k, v in obj.items()])


def _out(args: argparse.Namespace, reply: Any, text: str) -> int:
    print(json.dumps(reply, indent=2) if args.json else text)
    return 0


def cmd_site_show(args: argparse.Namespace) -> int:
    reply = _get(args, f"/v1/sites/{args.name}")
    members = reply.get("components") or []
    text = fields(reply["site"]) + "\n\n" + (
        report.table(["component_id", "role", "host_id"], [[c.get("component_id"), c.get("role"), c.get("host_id")]
                                                           for c in members]) if members else "no members")
    return _out(args, reply, text)


def cmd_account_show(args: argparse.Namespace) -> int:
    reply = _get(args, f"/v1/accounts/{args.name}")
    return _out(args, reply, fields(reply))


def cmd_group_show(args: argparse.Namespace) -> int:
    reply = _get(args, f"/v1/groups/{args.name}")
    return _out(args, reply, fields(reply))


def cmd_disk_assignments(args: argparse.Namespace) -> int:
    """A disk's PS and MT assignments, newest first; columns a change did not touch read ``-``."""
    items = list(_get(args, f"/v1/disks/{args.disk_id}/assignments", {"limit": args.limit})["items"])
    rows = [[item.get(c) if item.get(c) is not None else "-" for c in ASSIGNMENT_COLS] for item in items]
    return _out(args, items, report.table(ASSIGNMENT_COLS, rows) if items else f"disk {args.disk_id}: no "
                "assignment changes recorded")


def cmd_verify_show(args: argparse.Namespace) -> int:
    """One online verify of a disk; exit 1 when it failed or found differing blocks (like ``disk verify``)."""
    v = _get(args, f"/v1/disks/{args.disk_id}/verify/{args.verify_id}")
    result = v.get("result") or {}
    _out(args, v, fields(v))
    return 1 if v.get("state") == "failed" or result.get("differing") else 0


def _subparsers(parser: argparse.ArgumentParser) -> Any:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def add_parsers(sub: Any) -> None:
    """Adds ``show`` to ``site``, ``account`` and ``group``, ``assignments`` and ``verify-show`` to ``disk``
    (those commands are made by deploy/cli_model.py, deploy/cli_bookmarks.py and deploy/cli.py first)."""
    for command, func, what in (("site", cmd_site_show, "one site and its member components"),
                                ("account", cmd_account_show, "one hypervisor/guest account (no password)"),
                                ("group", cmd_group_show, "one replication group and its machines")):
        p = _subparsers(sub.choices[command]).add_parser("show", help=what)
        p.add_argument("name")
        p.set_defaults(func=func)
    disk = _subparsers(sub.choices["disk"])
    asg = disk.add_parser("assignments", help="the disk's PS and MT assignment history, newest first")
    asg.add_argument("disk_id")
    asg.add_argument("--limit", type=int, default=100, help="at most this many changes (1-1000)")
    asg.set_defaults(func=cmd_disk_assignments)
    vs = disk.add_parser("verify-show", help="one online verify by id (exit 1: failed or blocks differ)")
    vs.add_argument("disk_id")
    vs.add_argument("verify_id")
    vs.set_defaults(func=cmd_verify_show)
