"""``drlab ps switch|balance``: move every machine of a process server, or the machines named, to
another PS as a CS job (cs/switch_jobs.py), and optionally wait for it, showing its steps."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from common import errors

FINAL = ("succeeded", "failed")


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


async def _submit_and_wait(api: Any, path: str, body: dict[str, Any], wait: bool, timeout_s: float,
                           quiet: bool) -> dict[str, Any]:
    job_id = str((await api.post(path, body))["job_id"])
    if not wait:
        return {"job_id": job_id, "state": "queued"}
    deadline, shown = time.monotonic() + timeout_s, 0
    while True:
        job = dict(await api.get(f"/v1/jobs/{job_id}"))
        steps = job.get("steps") or []
        for step in steps[shown:]:
            if not quiet:
                print(f"  {step.get('percent', '')!s:>5} % {step['name']} {step.get('detail', '')}", file=sys.stderr)
        shown = len(steps)
        if job["state"] in FINAL:
            return job
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"job {job_id} still {job['state']} after {timeout_s:.0f} s")
        await asyncio.sleep(0.5)


def _run(args: argparse.Namespace, kind: str) -> int:
    if kind == "balance" and not args.machines:
        raise errors.BadRequest("name the machines to move (--machine ID, repeatable)")
    path = f"/v1/ps/{args.ps_id}/{kind}"
    job = _api(args, lambda api: _submit_and_wait(api, path, body_of(args), args.wait, args.timeout_s, args.json))
    if args.json:
        print(json.dumps(job, indent=2))
    elif job["state"] == "queued":
        print(f"job {job['job_id']} queued (drlab --json ... to follow it with GET /v1/jobs/ID)")
    else:
        result = job.get("result") or {}
        moved = len(result.get("moves", []))
        print(f"job {job['job_id']} {job['state']}"
              + (f": {moved} disk(s) moved, mode {result.get('mode')}, regenerated {len(result.get('regenerated', []))}"
                 if job["state"] == "succeeded" else f": {job.get('error')}"))
    return 0 if job["state"] in ("queued", "succeeded") else 1


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
