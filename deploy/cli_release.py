"""``drlab machine disable MACHINE [--keep-points] [--wait]``, ``drlab disk exclude DISK
[--keep-points] [--wait]``, ``drlab disk include DISK [--wait]``: a disk leaves protection, or comes
back (cs/release.py), each a job of the CS (cs/release_jobs.py). Without ``--wait`` the job id is
printed; with it the job's steps as they are recorded, then the machine's disks (or the job as
JSON with ``--json``), and the exit status is 0 only if the job succeeded."""

from __future__ import annotations

import argparse
import json
from typing import Any


def summary(job: dict[str, Any]) -> list[str]:
    """The lines that describe a finished release job (pure)."""
    out = job.get("result") or {}
    if job.get("state") != "succeeded" or not out:
        return [f"job {job.get('job_id')} {job.get('state')}: {job.get('error')}"]
    kept = "points kept" if out.get("keep_points") else "points deleted"
    released = out.get("released") or []
    lines = [f"machine {out['machine_id']}: {out['protection_state']}; released {len(released)} disk(s)"
             + (f" ({kept})" if released else "")]
    mts = out.get("mt_release") or {}
    lines += [f"  {disk['disk_id']}  {disk['name']:<12} {disk['state']}"
              + (f"  (MT: {mts[disk['disk_id']]})" if disk["disk_id"] in mts else "")
              for disk in out.get("disks") or []]
    return lines


def _post(args: argparse.Namespace, path: str, body: dict[str, Any] | None) -> int:
    from deploy.cli import _admin_api
    from deploy.cli_ops import follow

    async def go(api: Any) -> dict[str, Any]:
        job_id = str((await api.post(path, body))["job_id"])
        if not args.wait:
            return {"job_id": job_id}
        if not args.json:
            print(f"job {job_id}")
        return await follow(api, job_id, args.timeout_s, out=(lambda _: None) if args.json else print)

    job = _admin_api(args, go)
    if not args.wait:
        print(json.dumps(job) if args.json else job["job_id"])
        return 0
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        print("\n".join(summary(job)))
    return 0 if job.get("state") == "succeeded" else 1


def cmd_machine_disable(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/machines/{args.machine_id}/disable-protection", {"keep_points": args.keep_points})


def cmd_disk_exclude(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/disks/{args.disk_id}/exclude", {"keep_points": args.keep_points})


def cmd_disk_include(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/disks/{args.disk_id}/include", None)


def _waiting(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="follow the job's steps until it ends")
    p.add_argument("--timeout-s", type=float, default=600.0)


def add_parsers(machine: Any, disk: Any) -> None:
    """``machine``, ``disk``: the subparsers of ``drlab machine`` and ``drlab disk``."""
    p = machine.add_parser("disable", help="disable protection of a machine (every disk leaves replication)")
    p.add_argument("machine_id")
    p.add_argument("--keep-points", action="store_true",
                   help="the MT keeps the replica and its points (enabling again compares by checksum)")
    _waiting(p)
    p.set_defaults(func=cmd_machine_disable)
    p = disk.add_parser("exclude", help="exclude one disk of a protected machine (the others keep replicating)")
    p.add_argument("disk_id")
    p.add_argument("--keep-points", action="store_true", help="the MT keeps the disk's replica and its points")
    _waiting(p)
    p.set_defaults(func=cmd_disk_exclude)
    p = disk.add_parser("include", help="protect an excluded disk again")
    p.add_argument("disk_id")
    _waiting(p)
    p.set_defaults(func=cmd_disk_include)
