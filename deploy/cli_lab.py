"""``drlab cs init``, ``drlab lab up|down|status|logs``, ``drlab demo`` and ``drlab verify``: the
process lab of a topology file (deploy/lab.py) and the oracle's check of an image, for ``drlab``
(deploy/cli.py registers them)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from common import errors
from deploy import report
from deploy.topology import load as load_topology

DEFAULT_LAB = Path(".lab/default")


def lab_of(args: argparse.Namespace) -> Any:
    from deploy.lab import Lab

    return Lab(load_topology(Path(args.topology)), Path(args.dir))


def cmd_cs_init(args: argparse.Namespace) -> int:
    from common.config import CSConfig
    from cs.init import init_cs

    cfg = CSConfig(data_dir=Path(args.data_dir), listen_host=args.address, port=args.port, db_url=args.db_url)
    passphrase = asyncio.run(init_cs(cfg, hosts=[args.address]))
    print("Configuration server initialised in", cfg.data_dir)
    print("Passphrase (shown once; also saved with mode 0600 in", cfg.data_dir / "passphrase.txt", "):")
    print(passphrase.value)
    return 0


def cmd_lab_up(args: argparse.Namespace) -> int:
    lab = lab_of(args)
    try:
        asyncio.run(lab.up(timeout_s=args.timeout_s))
    except BaseException:
        lab.down()
        raise
    return cmd_lab_status(args)


def cmd_lab_down(args: argparse.Namespace) -> int:
    killed = lab_of(args).down()
    print("lab stopped" + (f" (SIGKILL needed for {', '.join(killed)})" if killed else ""))
    return 0


def cmd_lab_status(args: argparse.Namespace) -> int:
    rows = lab_of(args).status()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(report.table(["name", "role", "address", "ports", "pid", "running"],
                           [[r["name"], r["role"], r["address"], r["ports"], r["pid"] or "-", r["running"]]
                            for r in rows]))
    return 0


def cmd_lab_logs(args: argparse.Namespace) -> int:
    path = Path(args.dir) / "logs" / f"{args.name}.log"
    if not path.exists():
        raise errors.NotFound(f"no log for {args.name} at {path}")
    lines = path.read_text(errors="replace").splitlines()
    print("\n".join(lines[-args.lines:]))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from deploy.demo import DemoParams, main

    params = DemoParams(root=Path(args.dir), topology=Path(args.topology), duration_s=args.duration_s,
                        rate_mb_s=args.rate_mb_s)
    if args.seed is not None:
        params.seed = args.seed
    return main(params)


def cmd_verify(args: argparse.Namespace) -> int:
    from common import oracle

    res = oracle.verify(Path(args.log), args.disk_index, args.size_bytes, args.wnum, Path(args.image))
    if res.ok:
        print(f"verified: {args.image} equals the image of writes <= {args.wnum}")
        return 0
    print(f"MISMATCH: first differing byte at offset {res.first_mismatch_offset}", file=sys.stderr)
    return 1


def add_parsers(sub: Any, cs: Any) -> None:
    init = cs.add_parser("init", help="create the database, the CA and the passphrase")
    init.add_argument("--data-dir", required=True)
    init.add_argument("--address", default="127.0.0.1")
    init.add_argument("--port", type=int, default=443)
    init.add_argument("--db-url", default="", help="postgresql+asyncpg://user@host/db (the password from "
                      "PGPASSWORD or ~/.pgpass); default: SQLite in the data dir. The CS's config needs the same")
    init.set_defaults(func=cmd_cs_init)

    lab = sub.add_parser("lab", help="the process lab").add_subparsers(dest="lab_command", required=True)
    up = lab.add_parser("up", help="start every daemon and wait until healthy")
    up.add_argument("--timeout-s", type=float, default=60.0)
    up.set_defaults(func=cmd_lab_up)
    lab.add_parser("down", help="stop every daemon").set_defaults(func=cmd_lab_down)
    lab.add_parser("status", help="daemons and their processes").set_defaults(func=cmd_lab_status)
    logs = lab.add_parser("logs", help="a daemon's JSON log")
    logs.add_argument("name")
    logs.add_argument("--lines", type=int, default=50)
    logs.set_defaults(func=cmd_lab_logs)

    demo = sub.add_parser("demo", help="the end-to-end demo (make demo)")
    demo.add_argument("--duration-s", type=float, default=20.0)
    demo.add_argument("--rate-mb-s", type=float, default=20.0)
    demo.add_argument("--seed", type=int, default=None)
    demo.set_defaults(func=cmd_demo, dir=".lab/demo")

    v = sub.add_parser("verify", help="compare an image with the write log's image at a point")
    v.add_argument("--log", required=True)
    v.add_argument("--image", required=True)
    v.add_argument("--disk-index", type=int, default=0)
    v.add_argument("--size-bytes", type=int, required=True)
    v.add_argument("--wnum", type=int, required=True, help="highest write number the point contains")
    v.set_defaults(func=cmd_verify)
