"""``drlab operator add|list|remove|passwd|set``: dashboard logins, managed through the CS's API
with the admin certificate. A password is read from stdin when it is not a terminal (one line),
else prompted twice without echo; never taken from the command line."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from common import errors

ROLES = ("admin", "reader")


def read_password(prompt: str = "Password: ") -> str:
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
    else:
        password = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != password:
            raise errors.BadRequest("the two passwords differ")
    if not password:
        raise errors.BadRequest("no password given")
    return password


def _api(args: argparse.Namespace, fn: Any) -> Any:
    from deploy.cli import _admin_api

    return _admin_api(args, fn)


def cmd_add(args: argparse.Namespace) -> int:
    body = {"name": args.name, "role": args.role, "password": read_password()}
    op = _api(args, lambda api: api.post("/v1/operators", body))
    print(json.dumps(op, indent=2) if args.json else f"operator {op['name']} added ({op['role']})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from cs.client import all_pages
    from deploy.cli import _print_items

    items = _api(args, lambda api: all_pages(api, "/v1/operators"))
    return _print_items(args, items, ["name", "role", "disabled", "created_ns", "updated_ns"])


def cmd_remove(args: argparse.Namespace) -> int:
    _api(args, lambda api: api.request("DELETE", f"/v1/operators/{args.name}"))
    print(f"operator {args.name} removed")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    body = {"password": read_password("New password: ")}
    _api(args, lambda api: api.put(f"/v1/operators/{args.name}", body))
    print(f"operator {args.name}: password changed (its sessions ended)")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.role is not None:
        body["role"] = args.role
    if args.disabled is not None:
        body["disabled"] = args.disabled == "yes"
    if not body:
        raise errors.BadRequest("name --role and/or --disabled")
    op = _api(args, lambda api: api.put(f"/v1/operators/{args.name}", body))
    print(json.dumps(op, indent=2) if args.json else
          f"operator {op['name']}: {op['role']}{' (disabled)' if op['disabled'] else ''}")
    return 0


def add_parsers(sub: Any) -> None:
    op = sub.add_parser("operator", help="dashboard logins (roles admin and reader)")
    osub = op.add_subparsers(dest="operator_command", required=True)
    add = osub.add_parser("add", help="add an operator; the password comes from stdin or a prompt")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.set_defaults(func=cmd_add)
    osub.add_parser("list", help="every operator (never a password hash)").set_defaults(func=cmd_list)
    rm = osub.add_parser("remove", help="remove an operator (its sessions end)")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_remove)
    pw = osub.add_parser("passwd", help="set an operator's password (stdin or a prompt)")
    pw.add_argument("name")
    pw.set_defaults(func=cmd_passwd)
    st = osub.add_parser("set", help="change an operator's role or disable it (its sessions end)")
    st.add_argument("name")
    st.add_argument("--role", choices=ROLES)
    st.add_argument("--disabled", choices=("yes", "no"))
    st.set_defaults(func=cmd_set)
