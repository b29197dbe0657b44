"""``drlab machine disable MACHINE [--keep-points] [--wait]``, ``drlab disk exclude DISK
[--keep-points] [--wait]``, ``drlab disk include DISK [--wait]``: a disk leaves protection, or comes
back (cs/release.py), each a job of the CS (cs/release_jobs.py). Without ``--wait`` the job id is
printed; with it the job is followed (deploy/cli_progress.py: a progress bar or its steps, then the
summary and a table of the machine's disks, or the job as JSON with ``--json``); the exit status
is 0 if the job succeeded, 1 if it failed, 3 if it did not end in ``--timeout-s``."""

from __future__ import annotations

import argparse
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


def headline(job: dict[str, Any]) -> list[str]:
    """What the summary table (deploy/cli_progress.py) does not show: the machine's protection
    state, how many disks left, and the MT's notes (pure)."""
    if job.get("state") != "succeeded" or not job.get("result"):
        return []
    notes = (job["result"].get("mt_release") or {}).items()
    return summary(job)[:1] + [f"  MT on {disk_id}: {note}" for disk_id, note in sorted(notes)]


def _post(args: argparse.Namespace, path: str, body: dict[str, Any] | None) -> int:
    from deploy.cli_progress import run_job

    return run_job(args, path, body, headline=headline)


def cmd_machine_disable(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/machines/{args.machine_id}/disable-protection", {"keep_points": args.keep_points})


def cmd_disk_exclude(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/disks/{args.disk_id}/exclude", {"keep_points": args.keep_points})


def cmd_disk_include(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/disks/{args.disk_id}/include", None)


def _waiting(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="follow the job until it ends (exit 1: failed, 3: timeout)")
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
