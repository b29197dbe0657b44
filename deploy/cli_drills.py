"""`drlab drill failback | site-loss`: the recovery drills in a lab of their own (deploy/drills/)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_drill(args: argparse.Namespace) -> int:
    from deploy.drills import failback, siteloss
    from deploy.drills.common import DrillParams

    params = DrillParams(root=Path(args.drill_dir or f".lab/drill-{args.drill}"), topology=Path(args.topology),
                         duration_s=args.duration_s, rate_mb_s=args.rate_mb_s)
    if args.seed is not None:
        params.seed = args.seed
    params.alternate = bool(getattr(args, "alternate", False))
    module = failback if args.drill == "failback" else siteloss
    return module.main(params)


def add_parsers(sub: Any) -> None:
    drill = sub.add_parser("drill", help="recovery drills in a lab of their own (every daemon a process)")
    dsub = drill.add_subparsers(dest="drill", required=True)
    for name, text in (("failback", "protect, test failover, unplanned failover, commit, reprotect, failback, "
                                    "protect again — each step verified"),
                       ("site-loss", "kill every on-prem process, fail over from the cloud side alone")):
        p = dsub.add_parser(name, help=text)
        p.add_argument("--drill-dir", default=None, help="lab directory (default: .lab/drill-NAME)")
        p.add_argument("--duration-s", type=float, default=6.0, help="length of each workload phase")
        p.add_argument("--rate-mb-s", type=float, default=4.0)
        p.add_argument("--seed", type=int, default=None)
        if name == "failback":
            p.add_argument("--alternate", action="store_true",
                           help="fail back to a new on-prem machine (an alternate location)")
        p.set_defaults(func=cmd_drill)
