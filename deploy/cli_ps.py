"""``drlab ps switch|balance``: move every machine of a process server, or the machines named, to
another PS as a CS job (cs/switch_jobs.py), and optionally wait for it (deploy/cli_progress.py:
a progress bar or its steps, then a summary; exit 1 if it failed, 3 if ``--timeout-s`` passed)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from common import errors


def _api(args: argparse.Namespace, fn: Any) -> Any:
    from deploy.cli import _admin_api

    return _admin_api(args, fn)


def body_of(args: argparse.Namespace) -> dict[str, Any]:
    """The request body from the command line (only what was given)."""
    body: dict[str, Any] = {}
    if args.to:
        body["to_ps_id"] = args.to
    if args.machines:
        body["machine_ids"] = args.machines
    if args.old_ps_dead:
        body["old_ps_dead"] = True
    if args.job_timeout_s is not None:
        body["timeout_s"] = args.job_timeout_s
    return body


def headline(job: dict[str, Any]) -> list[str]:
    """The moves of a succeeded switch job, above the summary table (pure)."""
    result = job.get("result") or {}
    if job.get("state") != "succeeded":
        return []
    return [f"{len(result.get('moves', []))} disk(s) moved, mode {result.get('mode')}, "
            f"regenerated {len(result.get('regenerated', []))}"]


async def _submit(api: Any, args: argparse.Namespace, path: str) -> int:
    from deploy.cli_progress import follow_job

    if path.endswith("/balance") and not args.json:  # the PSs' load first, to help choose (deploy/cli_ps_load.py)
        from deploy import cli_ps_load

        print(cli_ps_load.render(await cli_ps_load.fetch(api)), flush=True)
    job_id = str((await api.post(path, body_of(args)))["job_id"])
    if not args.wait:
        print(json.dumps({"job_id": job_id, "state": "queued"}, indent=2) if args.json
              else f"job {job_id} queued (--wait to follow it, or GET /v1/jobs/ID)")
        return 0
    return await follow_job(api, job_id, args.timeout_s, as_json=args.json, headline=headline)


def _run(args: argparse.Namespace, kind: str) -> int:
    if kind == "balance" and not args.machines:
        raise errors.BadRequest("name the machines to move (--machine ID, repeatable)")
    return int(_api(args, lambda api: _submit(api, args, f"/v1/ps/{args.ps_id}/{kind}")))


def cmd_switch(args: argparse.Namespace) -> int:
    return _run(args, "switch")


def cmd_balance(args: argparse.Namespace) -> int:
    return _run(args, "balance")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("ps_id", help="the process server the machines leave")
    p.add_argument("--to", default=None, metavar="PS_ID",
                   help="the target PS (default: the least loaded live PS, by measured churn and backlog)")
    p.add_argument("--old-ps-dead", action="store_true",
                   help="do not drain: re-send the un-applied regions under a new generation")
    p.add_argument("--job-timeout-s", type=float, default=None, help="the job's drain and verify timeout")
    p.add_argument("--wait", action="store_true", help="wait for the job and show its steps")
    p.add_argument("--timeout-s", type=float, default=600.0, help="how long --wait waits")


def add_parsers(sub: Any) -> None:
    ps = sub.add_parser("ps", help="process servers: switch and load balance")
    psub = ps.add_subparsers(dest="ps_command", required=True)
    sw = psub.add_parser("switch", help="move every machine of a PS (or --machine ones) to another PS")
    _common(sw)
    sw.add_argument("--machine", dest="machines", action="append", default=None, metavar="MACHINE_ID",
                    help="only this machine (repeatable)")
    sw.set_defaults(func=cmd_switch)
    bal = psub.add_parser("balance", help="move the machines named off a PS")
    _common(bal)
    bal.add_argument("--machine", dest="machines", action="append", default=None, metavar="MACHINE_ID",
                     required=True, help="a machine to move (repeatable)")
    bal.set_defaults(func=cmd_balance)
    from deploy import cli_ps_check, cli_ps_lifecycle, cli_ps_uplink

    cli_ps_uplink.add_parsers(psub)  # drlab ps proxy|bandwidth set|clear|show
    cli_ps_check.add_parsers(psub)  # drlab ps check ADDRESS PORT, drlab ps list
    cli_ps_lifecycle.add_parsers(psub)  # drlab ps install|reregister|remove|purge
