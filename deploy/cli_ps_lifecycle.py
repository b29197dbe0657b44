"""``drlab ps install|reregister|remove|purge``: a process server's life cycle.

- ``remove PS``: decommission a connected PS (``DELETE /v1/ps/{id}``); the CS refuses (409) while
  disks are assigned to it: move them first with ``drlab ps switch PS --to OTHER``.
- ``purge PS [--to OTHER] [--force] [--wait]``: a disconnected PS (``POST /v1/ps/{id}/purge``, a
  ps-purge job): its machines move under a new generation, their agents re-send what is
  un-applied, and the PS is removed; refused (409) while the PS heartbeats, unless ``--force``.
Install and re-register are deploy/cli_install.py's. A PS may be named by id or host id.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from deploy import cli_install


def _api(args: argparse.Namespace, fn: Any) -> Any:
    from deploy.cli import _admin_api

    return _admin_api(args, fn)


async def _resolve(api: Any, name: str) -> str:
    from deploy.cli_inventory import COMPONENT_ID, resolve

    return name if COMPONENT_ID.match(name) else str(await resolve(api, "ps", name))


def cmd_remove(args: argparse.Namespace) -> int:
    async def go(api: Any) -> int:
        ps_id = await _resolve(api, args.ps)
        _, reply = await api.request("DELETE", f"/v1/ps/{ps_id}")
        print(json.dumps(reply, indent=2) if args.json
              else f"process server {ps_id} removed; {len(reply['revoked_serials'])} certificate(s) revoked")
        return 0

    return int(_api(args, go))


def purge_body(args: argparse.Namespace, to_ps: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if to_ps:
        body["to_ps_id"] = to_ps
    if args.force:
        body["force"] = True
    if args.dead_after_s is not None:
        body["dead_after_s"] = args.dead_after_s
    if args.job_timeout_s is not None:
        body["timeout_s"] = args.job_timeout_s
    return body


def cmd_purge(args: argparse.Namespace) -> int:
    from deploy.cli_progress import follow_job
    from deploy.cli_ps import headline

    async def go(api: Any) -> int:
        ps_id = await _resolve(api, args.ps)
        to_ps = await _resolve(api, args.to) if args.to else None
        job_id = str((await api.post(f"/v1/ps/{ps_id}/purge", purge_body(args, to_ps)))["job_id"])
        if not args.wait:
            print(json.dumps({"job_id": job_id, "state": "queued"}, indent=2) if args.json
                  else f"job {job_id} queued (--wait to follow it, or GET /v1/jobs/ID)")
            return 0
        return int(await follow_job(api, job_id, args.timeout_s, as_json=args.json, headline=headline))

    return int(_api(args, go))


def add_parsers(psub: Any) -> None:
    cli_install.add_ps_parsers(psub)
    rm = psub.add_parser("remove", help="decommission a PS that serves no disk (revokes its certificate)")
    rm.add_argument("ps", help="the process server (id or host id)")
    rm.set_defaults(func=cmd_remove)
    pg = psub.add_parser("purge", help="a disconnected PS: move its machines away, then remove it (a job)")
    pg.add_argument("ps", help="the process server (id or host id)")
    pg.add_argument("--to", default=None, metavar="PS", help="the target PS (default: the least loaded live PS)")
    pg.add_argument("--force", action="store_true", help="even if it still heartbeats")
    pg.add_argument("--dead-after-s", type=float, default=None,
                    help="silent longer than this counts as disconnected (default 90)")
    pg.add_argument("--job-timeout-s", type=float, default=None, help="the job's verify timeout")
    pg.add_argument("--wait", action="store_true", help="wait for the job and show its steps")
    pg.add_argument("--timeout-s", type=float, default=600.0, help="how long --wait waits")
    pg.set_defaults(func=cmd_purge)
