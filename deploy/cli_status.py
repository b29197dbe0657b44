"""Status commands over the admin API that had no command of their own:

    drlab whoami                 GET /v1/whoami          (who the CLI's credentials are to the CS)
    drlab rpo [--since-ns NS]    GET /v1/dashboard/rpo   (every machine's RPO now; --history: samples)
    drlab cs ping                GET /v1/ping            (liveness over mutual TLS, round-trip time)
    drlab cs routes [--tag TAG]  GET /v1/openapi.json    (every API operation: method, path, roles)

Rules: a readable table by default, the CS's answer unchanged with ``--json``; a CS error exits 2
(deploy/cli.py ``main``); nothing here changes state.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from common import errors
from deploy import report


def _call(args: argparse.Namespace, path: str, params: dict[str, Any] | None = None) -> Any:
    from deploy.cli import _admin_api

    return _admin_api(args, lambda api: api.get(path, params=params))


def _out(args: argparse.Namespace, reply: Any, text: str) -> int:
    print(json.dumps(reply, indent=2) if args.json else text)
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    reply = _call(args, "/v1/whoami")
    return _out(args, reply, f"{reply['name']} ({reply['role']}, by {reply['via']})")


def rpo_rows(machines: dict[str, Any], names: dict[str, str]) -> list[list[Any]]:
    """One row per machine, worst RPO first (pure): machine, host, RPO, threshold, over?, disks."""
    rows = []
    for mid, m in sorted(machines.items(), key=lambda kv: -float(kv[1].get("rpo_s") or 0)):
        rpo, limit = float(m.get("rpo_s") or 0), float(m.get("threshold_s") or 0)
        rows.append([mid, names.get(mid, "-"), f"{rpo:.1f}", f"{limit:.0f}", "yes" if limit and rpo > limit else "no",
                     len(m.get("disks") or {})])
    return rows


def cmd_rpo(args: argparse.Namespace) -> int:
    """Every machine's current RPO (worst disk), worst first, with its host id; ``--history``: the CS's
    in-memory samples after ``--since-ns`` too (one line per sample)."""
    from cs.client import all_pages
    from deploy.cli import _admin_api

    if args.since_ns < 0:
        raise errors.BadRequest("--since-ns must be a non-negative integer (ns since the epoch)")

    async def go(api: Any) -> tuple[Any, dict[str, str]]:
        reply = await api.get("/v1/dashboard/rpo", params={"since_ns": args.since_ns})
        comps = [] if args.json else await all_pages(api, "/v1/components")
        return reply, {c["component_id"]: c.get("host_id") or "-" for c in comps}

    reply, names = _admin_api(args, go)
    text = report.table(["machine_id", "host", "rpo_s", "threshold_s", "over", "disks"],
                        rpo_rows(reply["machines"], names)) if reply["machines"] else "no machine has a point yet"
    if args.history:
        text += "".join(f"\n{report.ago(s['t_ns'], reply['now_ns'])}: " + ", ".join(
            f"{names.get(k, k)}={v:.1f}" for k, v in sorted(s["rpo_s"].items())) for s in reply["history"])
    return _out(args, reply, text)


def cmd_ping(args: argparse.Namespace) -> int:
    started = time.monotonic()
    reply = _call(args, "/v1/ping")
    ms = (time.monotonic() - started) * 1000
    return _out(args, reply, f"CS alive: answered {reply['role']} in {ms:.0f} ms (its clock {reply['time_ns']})")


def route_rows(doc: dict[str, Any], tag: str | None = None) -> list[list[str]]:
    """``method, path, roles, summary`` of every operation of an OpenAPI document (pure), by path."""
    rows = []
    for path, ops in sorted(doc.get("paths", {}).items()):
        for method, op in sorted(ops.items()):
            if tag and tag not in op.get("tags", []):
                continue
            roles = "public" if op.get("security") == [] else ",".join(op.get("x-roles", [])) or "-"
            rows.append([method.upper(), path, roles, (op.get("summary") or "")[:80]])
    return rows


def cmd_routes(args: argparse.Namespace) -> int:
    doc = _call(args, "/v1/openapi.json")
    rows = route_rows(doc, args.tag)
    if args.tag and not rows:
        raise errors.NotFound(f"no operation is tagged {args.tag!r}")
    return _out(args, doc, report.table(["method", "path", "roles", "summary"], rows))


def add_parsers(sub: Any, cs: Any) -> None:
    """``whoami`` and ``rpo`` on the top-level subparsers, ``ping`` and ``routes`` on ``drlab cs``'s, and
    deploy/cli_show.py's ``show`` commands and deploy/cli_session.py's ``operator login|logout`` (after
    ``site``, ``account``, ``group``, ``disk`` and ``operator`` exist)."""
    from deploy import cli_session, cli_show

    cli_show.add_parsers(sub)
    cli_session.add_parsers(sub)
    sub.add_parser("whoami", help="who the CLI's credentials are to the CS").set_defaults(func=cmd_whoami)
    rpo = sub.add_parser("rpo", help="every machine's RPO now, worst first (the dashboard's figures)")
    rpo.add_argument("--history", action="store_true", help="the CS's RPO samples too (kept in its memory)")
    rpo.add_argument("--since-ns", type=int, default=0, help="only samples after this time (ns since the epoch)")
    rpo.set_defaults(func=cmd_rpo)
    cs.add_parser("ping", help="is the CS answering over mutual TLS (no database access)").set_defaults(
        func=cmd_ping)
    rt = cs.add_parser("routes", help="every operation of the CS's HTTP API (its OpenAPI document)")
    rt.add_argument("--tag", default=None, help="only operations with this tag (disks, machines, ps, ...)")
    rt.set_defaults(func=cmd_routes)
