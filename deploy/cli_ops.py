"""CLI of failover operations and recovery plan runs (cs/machine_ops.py, cs/plan_jobs.py):

``drlab machine test-failover|cleanup|failover|change-point|commit MACHINE [--point ...] [--image] [--wait]``,
``drlab machine image MACHINE [--wait]`` (the image files of its failover's views, later: cs/machine_image.py),
``drlab plan failover NAME [--test|--planned] [--point ...] [--image] [--wait]``,
``drlab plan cleanup|commit NAME [--wait]``
and ``drlab job resume ID``. With ``--wait`` the job is followed (deploy/cli_progress.py: a progress
bar on a terminal, its steps otherwise, then a summary table or ``--json`` the job) and the exit
status is 0 if it succeeded, 1 if it failed, 3 if it did not end in ``--timeout-s``; without, the
job id is printed.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from common import errors

MACHINE_OPS = {"test-failover": ("test-failover", "test failover: a view of every disk at one point; "
                                                  "replication keeps running"),
               "cleanup": ("cleanup-test-failover", "clean up the machine's test failover"),
               "failover": ("failover", "unplanned failover (the disks become failed-over)"),
               "planned-failover": ("planned-failover", "planned failover: the source stops, everything drains, "
                                                        "nothing is lost"),
               "change-point": ("change-point", "move the machine's failover to another point (before commit)"),
               "commit": ("commit", "commit the machine's unplanned or planned failover"),
               "image": ("image", "write the image file of every disk's failover view as it is now "
                                  "(test, unplanned or planned failover, before commit)")}
WITH_POINT = ("test-failover", "failover", "change-point")
WITH_IMAGE = ("test-failover", "failover", "planned-failover", "change-point")  # --image: image files too


def point_of(args: argparse.Namespace) -> Any:
    """The point from ``--point NAME``, ``--wnum W`` or ``--time-ns T`` (pure)."""
    if args.wnum is not None:
        return {"wnum": args.wnum}
    if args.time_ns is not None:
        return {"time_ns": args.time_ns}
    return args.point


def _run(args: argparse.Namespace, path: str, body: dict[str, Any]) -> int:
    from deploy.cli_progress import run_job

    return run_job(args, path, body)


def cmd_machine_op(args: argparse.Namespace) -> int:
    route, _ = MACHINE_OPS[args.op]
    body: dict[str, Any] = {"point": point_of(args)} if args.op in WITH_POINT else {}
    if args.op == "failover":
        body["mode"] = "test" if args.test else "unplanned"
    if getattr(args, "image", False):
        body["image"] = True
    return _run(args, f"/v1/machines/{args.machine_id}/{route}", body)


def plan_failover_body(args: argparse.Namespace) -> dict[str, Any]:
    """The request of ``drlab plan failover`` (pure): a planned failover takes no point."""
    if args.test and args.planned:
        raise errors.BadRequest("--test and --planned exclude each other")
    if args.planned and (args.point != "latest" or args.wnum is not None or args.time_ns is not None):
        raise errors.BadRequest("a planned failover takes no point: each machine fails over where its source stopped")
    mode = "test" if args.test else "planned" if args.planned else "unplanned"
    return {"mode": mode, **({} if args.planned else {"point": point_of(args)}),
            **({"image": True} if args.image else {})}


def cmd_plan_failover(args: argparse.Namespace) -> int:
    return _run(args, f"/v1/plans/{args.name}/failover", plan_failover_body(args))


def cmd_plan_cleanup(args: argparse.Namespace) -> int:
    return _run(args, f"/v1/plans/{args.name}/cleanup-test-failover", {})


def cmd_plan_commit(args: argparse.Namespace) -> int:
    return _run(args, f"/v1/plans/{args.name}/commit", {})


def cmd_job(args: argparse.Namespace) -> int:
    """``drlab job ID`` shows a job; ``drlab job resume ID`` resumes a paused plan job."""
    from deploy import cli_model
    from deploy.cli import _admin_api

    if args.job_id != "resume":
        if args.resume_id is not None:
            raise errors.BadRequest("usage: drlab job ID | drlab job resume ID")
        return cli_model.cmd_job(args)
    if args.resume_id is None:
        raise errors.BadRequest("usage: drlab job resume ID")
    out = _admin_api(args, lambda api: api.post(f"/v1/jobs/{args.resume_id}/resume", {}))
    print(json.dumps(out, indent=2))
    return 0


def _subparsers(parser: argparse.ArgumentParser) -> Any:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _waiting(p: argparse.ArgumentParser, point: bool) -> None:
    if point:
        p.add_argument("--point", default="latest", help="latest, latest-processed, ... (default latest)")
        p.add_argument("--wnum", type=int, default=None, help="a machine point: write number W")
        p.add_argument("--time-ns", type=int, default=None, help="the machine point at a time")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends (exit 1: failed, 3: timeout)")
    p.add_argument("--timeout-s", type=float, default=1800.0)


def _image(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", action="store_true", help="also write every disk's image file (image_path); the "
                   "failover is otherwise done once the views are made (writable over NBD)")


def add_parsers(sub: Any) -> None:
    """Adds to the ``machine``, ``plan`` and ``job`` commands of deploy/cli_model.py."""
    machine = _subparsers(sub.choices["machine"])
    for op, (_, text) in MACHINE_OPS.items():
        p = machine.add_parser(op, help=text)
        p.add_argument("machine_id")
        _waiting(p, op in WITH_POINT)
        if op == "failover":
            p.add_argument("--test", action="store_true", help="a test failover instead")
        if op in WITH_IMAGE:
            _image(p)
        p.set_defaults(func=cmd_machine_op, op=op)
    plan = _subparsers(sub.choices["plan"])
    fo = plan.add_parser("failover", help="fail a recovery plan over (groups in order); --test: a test failover, "
                         "--planned: a planned one (every source stops and drains: nothing lost)")
    fo.add_argument("name")
    fo.add_argument("--test", action="store_true")
    fo.add_argument("--planned", action="store_true")
    _image(fo)
    _waiting(fo, True)
    fo.set_defaults(func=cmd_plan_failover)
    cl = plan.add_parser("cleanup", help="clean up a recovery plan's test failover")
    cl.add_argument("name")
    _waiting(cl, False)
    cl.set_defaults(func=cmd_plan_cleanup)
    cm = plan.add_parser("commit", help="commit a recovery plan's unplanned or planned failover")
    cm.add_argument("name")
    _waiting(cm, False)
    cm.set_defaults(func=cmd_plan_commit)
    job = sub.choices["job"]
    job.add_argument("resume_id", nargs="?", default=None, help="with `resume`: the paused plan job to resume")
    job.set_defaults(func=cmd_job)
