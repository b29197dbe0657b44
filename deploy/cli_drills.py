"""`drlab drill failback | site-loss | failover | ps-switch | chaos`: the drills in a lab of their own
(deploy/drills/), each step printed with what it verified."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

# drill name -> (module in deploy/drills/, help)
DRILLS = {
    "failback": ("failback", "protect, test failover, unplanned failover, commit, reprotect, failback, "
                             "protect again — each step verified"),
    "site-loss": ("siteloss", "kill every on-prem process, fail over from the cloud side alone"),
    "failover": ("failover", "test failover to latest, to a point in time, to latest-app-consistent (a bookmark), "
                             "then a planned failover — each checked by the oracle"),
    "ps-switch": ("psswitch", "switch the machine to another PS under load, then balance it back with that PS "
                              "killed (a second on-prem PS is added to its lab when the topology has one)"),
    "chaos": ("chaos", "N cycles: SIGKILL a random daemon (agent, PS, MT or CS) under load, restart it, wait for "
                       "the recovery, check the recovery points with the oracle; a JSON summary with --report"),
}


def cmd_drill(args: argparse.Namespace) -> int:
    from deploy.drills.common import DrillParams

    params = DrillParams(root=Path(args.drill_dir or f".lab/drill-{args.drill}"), topology=Path(args.topology),
                         duration_s=args.duration_s, rate_mb_s=args.rate_mb_s)
    if args.seed is not None:
        params.seed = args.seed
    params.alternate = bool(getattr(args, "alternate", False))
    params.cycles = int(getattr(args, "cycles", params.cycles))
    params.report = Path(args.report) if getattr(args, "report", None) else None
    module = importlib.import_module(f"deploy.drills.{DRILLS[args.drill][0]}")
    return int(module.main(params))


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_parsers(sub: Any) -> None:
    drill = sub.add_parser("drill", help="drills in a lab of their own (every daemon a process)")
    dsub = drill.add_subparsers(dest="drill", required=True)
    for name, (_, text) in DRILLS.items():
        p = dsub.add_parser(name, help=text)
        p.add_argument("--drill-dir", default=None, help="lab directory (default: .lab/drill-NAME)")
        p.add_argument("--duration-s", type=float, default=6.0, help="length of each workload phase")
        p.add_argument("--rate-mb-s", type=float, default=4.0)
        p.add_argument("--seed", type=int, default=None)
        if name == "failback":
            p.add_argument("--alternate", action="store_true",
                           help="fail back to a new on-prem machine (an alternate location)")
        if name == "chaos":
            p.add_argument("--cycles", type=positive, default=5, help="kill cycles (each: kill, restart, verify)")
            p.add_argument("--report", default=None, help="write the summary as JSON to this file")
        p.set_defaults(func=cmd_drill)
