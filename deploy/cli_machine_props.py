"""``drlab machine properties MACHINE [--target-name N] [--target-size S] [--target-network NET]
[--clear FIELD ...]``: show or set a machine's failover properties (cs/failover_props.py). Without
an option the properties are shown; a refused value prints the CS's rule and exits 2."""

from __future__ import annotations

import argparse
import json
from typing import Any

FIELDS = ("target_name", "target_size", "target_network")


def body_of(args: argparse.Namespace) -> dict[str, Any]:
    """The PATCH body from the options (pure): values to set, ``None`` for ``--clear``."""
    body: dict[str, Any] = {f: getattr(args, f) for f in FIELDS if getattr(args, f) is not None}
    for field in args.clear or []:
        body[field] = None
    return body


def lines(props: dict[str, Any]) -> list[str]:
    return [f"machine {props['machine_id']}"] + [f"  {f:<15} {props.get(f) or '-'}" for f in FIELDS]


def cmd_properties(args: argparse.Namespace) -> int:
    from deploy.cli import _admin_api

    path = f"/v1/machines/{args.machine_id}/failover-properties"
    body = body_of(args)
    if body:
        props = _admin_api(args, lambda api: api.request("PATCH", path, json_body=body))[1]
    else:
        props = _admin_api(args, lambda api: api.get(path))
    print(json.dumps(props, indent=2) if getattr(args, "json", False) else "\n".join(lines(props)))
    return 0


def add_parsers(machine: Any) -> None:
    """``machine``: the subparsers of ``drlab machine``."""
    p = machine.add_parser("properties", help="show or set a machine's failover properties (target name, size, "
                                              "network)")
    p.add_argument("machine_id")
    p.add_argument("--target-name", dest="target_name", default=None,
                   help="1-63 letters, digits and hyphens, starting and ending with a letter or digit")
    p.add_argument("--target-size", dest="target_size", default=None, help="e.g. Standard_A2, Standard_D14")
    p.add_argument("--target-network", dest="target_network", default=None, help="the target network's name")
    p.add_argument("--clear", action="append", choices=FIELDS, default=None, help="unset a property")
    p.set_defaults(func=cmd_properties)
