"""``drlab hypervisor|inventory`` and ``drlab machine install``: the on-prem hypervisors the process
servers discover (vCenter-like, deploy/hypervisor.py), the machines they found, and the push
installation of the mobility agent onto one of them (a CS job: the PS pushes the agent with an
account from the CS's account store; the agent enrolls with a single-use token).

A process server may be named by its component id or its host id (``ps1``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

from common import errors

COMPONENT_ID = re.compile(r"^[0-9a-f]{32}\Z")
VM_COLS = ["hypervisor", "vm", "host_id", "os", "power_state", "disks", "agent_installed", "component_id", "protected"]
HV_COLS = ["name", "address", "port", "account", "ps_id", "machines", "last_discovery", "last_error"]


def _api(args: argparse.Namespace, fn: Any) -> Any:
    from deploy.cli import _admin_api

    return _admin_api(args, fn)


ROLE_NAMES = {"ps": "process server", "mt": "master target", "agent": "machine"}


async def resolve(api: Any, role: str, name: str) -> str:
    """The component id of the ``role`` component named by id or host id (a clear error when
    there is none)."""
    if COMPONENT_ID.match(name):
        return name
    from cs.client import all_pages

    items = await all_pages(api, "/v1/components")
    found = [c["component_id"] for c in items if c.get("role") == role and c.get("host_id") == name]
    if not found:
        raise errors.NotFound(f"no {ROLE_NAMES.get(role, role)} with host id {name!r} (drlab components lists them)")
    return str(found[0])


async def resolve_ps(api: Any, name: str) -> str:
    return await resolve(api, "ps", name)


def disks_text(disks: list[dict[str, Any]]) -> str:
    """``disk0 256 MiB, disk1 1 GiB`` (pure)."""
    def size(n: int) -> str:
        return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):g} MiB"

    return ", ".join(f"{d['name']} {size(int(d['size_bytes']))}" for d in disks) or "-"


def vm_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Inventory items as table rows (disks summarised; pure)."""
    return [{**item, "disks": disks_text(item.get("disks") or []), "component_id": item.get("component_id") or "-"}
            for item in items]


def hv_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hypervisors as table rows: the last discovery's time, its error's code and message (pure)."""
    def when(ns: Any) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if isinstance(ns, int) else "never"

    def error(e: Any) -> str:
        return f"{e.get('code')}: {e.get('message')}" if isinstance(e, dict) else "-"

    return [{**hv, "last_discovery": when(hv.get("last_discovery_ns")), "last_error": error(hv.get("last_error"))}
            for hv in items]


def cmd_hypervisor_add(args: argparse.Namespace) -> int:
    async def go(api: Any) -> Any:
        body: dict[str, Any] = {"name": args.name, "address": args.address, "port": args.port,
                                "account": args.account, "ps_id": await resolve_ps(api, args.ps)}
        if args.fingerprint:
            body["fingerprint"] = args.fingerprint.replace(":", "").lower()
        return await api.post("/v1/hypervisors", body)

    out = _api(args, go)
    print(json.dumps(out, indent=2) if args.json else
          f"hypervisor {out['name']} at {out['address']}:{out['port']}: discovered by PS {out['ps_id']}")
    return 0


def cmd_hypervisor_list(args: argparse.Namespace) -> int:
    from deploy.cli import _print_items

    items = _api(args, lambda api: api.get("/v1/hypervisors"))
    items = items["items"] if isinstance(items, dict) else items
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    return _print_items(args, hv_rows(items), HV_COLS)


def cmd_hypervisor_show(args: argparse.Namespace) -> int:
    print(json.dumps(_api(args, lambda api: api.get(f"/v1/hypervisors/{args.name}")), indent=2))
    return 0


def cmd_hypervisor_remove(args: argparse.Namespace) -> int:
    _api(args, lambda api: api.request("DELETE", f"/v1/hypervisors/{args.name}"))
    print(json.dumps({"removed": args.name}) if args.json else f"hypervisor {args.name} removed")
    return 0


def cmd_hypervisor_discover(args: argparse.Namespace) -> int:
    """Ask the hypervisor's PS to discover now; with --wait, until a newer discovery is reported."""
    path = f"/v1/hypervisors/{args.name}"

    async def go(api: Any) -> dict[str, Any]:
        before = (await api.get(path)).get("last_discovery_ns") or 0
        await api.post(f"{path}/discover", {})
        deadline = time.monotonic() + args.timeout_s
        while True:
            hv = dict(await api.get(path))
            if not args.wait or (hv.get("last_discovery_ns") or 0) > before:
                return hv
            if time.monotonic() > deadline:
                raise errors.Unavailable(f"no discovery of {args.name} reported within {args.timeout_s:.0f} s")
            await asyncio.sleep(0.3)

    hv = _api(args, go)
    if args.json:
        print(json.dumps(hv, indent=2))
    elif not args.wait:
        print(f"discovery of {args.name} requested (drlab inventory shows what its PS reports)")
    else:
        error = hv.get("last_error")
        print(f"{args.name}: " + (f"discovery failed: {error.get('code')}: {error.get('message')}" if error
                                  else f"{hv.get('machines', 0)} machine(s) discovered"))
    return 1 if args.wait and hv.get("last_error") else 0


def cmd_inventory(args: argparse.Namespace) -> int:
    from deploy.cli import _print_items

    items = _api(args, lambda api: api.get("/v1/inventory"))["items"]
    if args.hypervisor:
        items = [i for i in items if i.get("hypervisor") == args.hypervisor]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    return _print_items(args, vm_rows(items), VM_COLS)


def cmd_machine_install(args: argparse.Namespace) -> int:
    from deploy.cli_progress import follow_job

    async def go(api: Any) -> int:
        body: dict[str, Any] = {"account": args.account}
        if args.ps:
            body["ps_id"] = await resolve_ps(api, args.ps)
        job_id = str((await api.post(f"/v1/inventory/{args.hypervisor}/{args.vm}/install", body))["job_id"])
        if not args.wait:
            print(json.dumps({"job_id": job_id}) if args.json else job_id)
            return 0
        if not args.json:
            print(f"job {job_id}", flush=True)
        return await follow_job(api, job_id, args.timeout_s, as_json=args.json)

    return int(_api(args, go))


def add_parsers(sub: Any, machine: Any) -> None:
    """``drlab hypervisor …``, ``drlab inventory`` and ``drlab machine install`` (``machine``: the
    machine command's subparsers)."""
    hv = sub.add_parser("hypervisor", help="on-prem hypervisors (vCenter-like) discovered by a PS").add_subparsers(
        dest="hypervisor_command", required=True)
    add = hv.add_parser("add", help="register a hypervisor; its PS discovers its machines periodically")
    add.add_argument("name")
    add.add_argument("--address", required=True)
    add.add_argument("--port", type=int, default=443)
    add.add_argument("--account", required=True, help="the account (drlab account) discovery logs in with")
    add.add_argument("--ps", required=True, help="the process server that discovers it (id or host id)")
    add.add_argument("--fingerprint", default=None,
                     help="SHA-256 of its TLS certificate (hex); none: pinned at the first discovery")
    add.set_defaults(func=cmd_hypervisor_add)
    hv.add_parser("list", help="hypervisors and their last discovery").set_defaults(func=cmd_hypervisor_list)
    for verb, fn, text in (("show", cmd_hypervisor_show, "one hypervisor"),
                           ("remove", cmd_hypervisor_remove, "stop discovering a hypervisor")):
        p = hv.add_parser(verb, help=text)
        p.add_argument("name")
        p.set_defaults(func=fn)
    disc = hv.add_parser("discover", help="discover now (the PS otherwise does every 15 minutes)")
    disc.add_argument("name")
    disc.add_argument("--wait", action="store_true", help="until the PS reports a new discovery (exit 1 if it failed)")
    disc.add_argument("--timeout-s", type=float, default=60.0)
    disc.set_defaults(func=cmd_hypervisor_discover)
    inv = sub.add_parser("inventory", help="machines discovered on the hypervisors")
    inv.add_argument("--hypervisor", default=None, help="only this hypervisor's machines")
    inv.set_defaults(func=cmd_inventory)
    ins = machine.add_parser("install", help="push-install the mobility agent on a discovered machine (a job)")
    ins.add_argument("vm", help="the machine's name on its hypervisor")
    ins.add_argument("--hypervisor", required=True)
    ins.add_argument("--account", required=True, help="an account (drlab account) that administers the machine")
    ins.add_argument("--ps", default=None, help="the PS that pushes (default: the hypervisor's)")
    ins.add_argument("--wait", action="store_true", help="follow the job (exit 1 if it failed, 3 on timeout)")
    ins.add_argument("--timeout-s", type=float, default=300.0)
    ins.set_defaults(func=cmd_machine_install)
