"""``drlab bookmark|group``: multi-machine bookmarks (the CS's two-phase protocol across a group or
named machines) and the replication groups they span."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any


def _admin_api(args: argparse.Namespace, fn: Any) -> Any:
    from deploy.cli import _admin_api as call

    return call(args, fn)


def _print_items(args: argparse.Namespace, items: list[dict[str, Any]], cols: list[str]) -> int:
    from deploy.cli import _print_items as show

    return show(args, items, cols)


def cmd_bookmark_create(args: argparse.Namespace) -> int:
    """A multi-machine bookmark by the CS's two-phase protocol; with --wait, exit 1 unless committed."""
    body: dict[str, Any] = {"consistency": args.consistency}
    body.update({"group": args.group} if args.group else {"machines": args.machines or []})
    body.update({"name": args.name} if args.name else {})
    body.update({"timeout_s": args.timeout_s} if args.timeout_s is not None else {})

    async def go(api: Any) -> Any:
        bm = await api.post("/v1/bookmarks", body)
        while args.wait and bm["state"] not in ("committed", "aborted"):
            await asyncio.sleep(0.1)
            bm = await api.get(f"/v1/bookmarks/{bm['bookmark_id']}")
        return bm

    bm = _admin_api(args, go)
    if args.json:
        print(json.dumps(bm, indent=2))
    else:
        why = f" ({bm['reason']})" if bm["reason"] else ""
        took = f" in {bm['latency_ms']:.0f} ms" if bm.get("latency_ms") else ""
        print(f"bookmark {bm['bookmark_id']} {bm['tag']}: {bm['state']}{why}{took}")
    return 0 if bm["state"] == "committed" or not args.wait else 1


def cmd_bookmark_list(args: argparse.Namespace) -> int:
    from cs.client import all_pages

    params = {k: v for k, v in (("state", args.state), ("group", args.group)) if v}
    items = _admin_api(args, lambda api: all_pages(api, "/v1/bookmarks", params, most=args.limit))
    return _print_items(args, items, ["bookmark_id", "tag", "group", "consistency", "state", "latency_ms", "reason"])


def cmd_bookmark_show(args: argparse.Namespace) -> int:
    print(json.dumps(_admin_api(args, lambda api: api.get(f"/v1/bookmarks/{args.bookmark_id}")), indent=2))
    return 0


def cmd_group_set(args: argparse.Namespace) -> int:
    out = _admin_api(args, lambda api: api.put(f"/v1/groups/{args.name}", {"machines": args.machines}))
    print(json.dumps(out, indent=2) if args.json else f"group {out['name']}: {', '.join(out['machines'])}")
    return 0


def cmd_group_list(args: argparse.Namespace) -> int:
    from cs.client import all_pages

    items = _admin_api(args, lambda api: all_pages(api, "/v1/groups"))
    return _print_items(args, items, ["name", "machines", "updated_ns"])


def cmd_group_delete(args: argparse.Namespace) -> int:
    _admin_api(args, lambda api: api.request("DELETE", f"/v1/groups/{args.name}"))
    return 0


def add_parsers(sub: Any) -> None:
    bm = sub.add_parser("bookmark", help="multi-machine bookmarks (two-phase, across a group or machines)")
    bsub = bm.add_subparsers(dest="bookmark_command", required=True)
    cr = bsub.add_parser("create", help="freeze every member, tag every disk at one instant, thaw")
    who = cr.add_mutually_exclusive_group(required=True)
    who.add_argument("--group", help="a replication group (drlab group set)")
    who.add_argument("--machines", nargs="+", help="machine ids")
    cr.add_argument("--name", help="the tag's name (default: the bookmark id)")
    cr.add_argument("--consistency", choices=["app", "crash"], default="app",
                    help="app: run each member's pre-freeze / post-thaw hooks")
    cr.add_argument("--timeout-s", type=float, default=None, help="every member must be frozen by then")
    cr.add_argument("--wait", action="store_true", help="until committed or aborted (exit 1 if aborted)")
    cr.set_defaults(func=cmd_bookmark_create)
    ls = bsub.add_parser("list", help="bookmarks, newest first")
    ls.add_argument("--state", choices=["preparing", "committing", "committed", "aborted"])
    ls.add_argument("--group")
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(func=cmd_bookmark_list)
    sh = bsub.add_parser("show", help="one bookmark with its members' points")
    sh.add_argument("bookmark_id")
    sh.set_defaults(func=cmd_bookmark_show)
    grp = sub.add_parser("group", help="replication groups (machines consistent together)")
    gsub = grp.add_subparsers(dest="group_command", required=True)
    gs = gsub.add_parser("set", help="create or replace a group")
    gs.add_argument("name")
    gs.add_argument("machines", nargs="+")
    gs.set_defaults(func=cmd_group_set)
    gsub.add_parser("list", help="every group").set_defaults(func=cmd_group_list)
    gd = gsub.add_parser("delete", help="delete a group")
    gd.add_argument("name")
    gd.set_defaults(func=cmd_group_delete)
