"""``drlab ps check ADDRESS PORT [--timeout S]``: the end-to-end check of a process server's data
port (deploy/pscheck.py), with the admin identity (``--admin-dir``, default the lab's), whose CA
is the CS's. Prints each step with ok / FAILED and its time; exit 0 when every step passed, 1
naming the failed step, 2 on a usage error (argparse, or no admin identity)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from common import errors, tls
from deploy import pscheck

DEFAULT_TIMEOUT_S = 300.0  # the documented cxpsclient -y value


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1-65535, not {text!r}")
    return int(text)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:  # also refuses nan
        raise argparse.ArgumentTypeError(f"the timeout is a number of seconds in (0, 3600], not {text!r}")
    return value


def admin_identity(args: argparse.Namespace) -> tls.IdentityFiles:
    """The admin identity of ``--admin-dir``, else the lab's; ConfigError (exit 2) when absent."""
    if args.admin_dir:
        files = tls.IdentityFiles(Path(args.admin_dir))
    else:
        from deploy.cli_lab import lab_of as _lab

        files = _lab(args).admin_files
    if not files.exists():
        raise errors.ConfigError(f"no admin identity in {files.directory} (--admin-dir): the CS's CA is needed "
                                 "to verify the process server")
    return files


def cmd_check(args: argparse.Namespace) -> int:
    ctx = tls.client_context(admin_identity(args))
    report = asyncio.run(pscheck.check(args.address, args.port, ctx, args.timeout))
    if args.json:
        print(json.dumps({"ok": report.ok, "steps": [s.__dict__ for s in report.steps]}, indent=2))
    else:
        print("\n".join(pscheck.render(report, args.address, args.port)))
    return 0 if report.ok else 1


def add_parsers(psub: Any) -> None:
    chk = psub.add_parser("check", help="check the end-to-end connection to a PS: TCP, TLS, authentication, "
                          "a test upload and its removal")
    chk.add_argument("address", help="the PS's address")
    chk.add_argument("port", type=_port, help="its data port (9443 by default)")
    chk.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT_S, metavar="S",
                     help=f"seconds for the whole check (default {DEFAULT_TIMEOUT_S:g})")
    chk.set_defaults(func=cmd_check)
    from deploy import cli_ps_load

    cli_ps_load.add_parsers(psub)
