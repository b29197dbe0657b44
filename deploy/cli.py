"""The `drlab` command: lab, demo, verification and administration."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import errors, tls
from common import logging as dlog
from deploy import (
    cli_bookmarks,
    cli_cs,
    cli_drills,
    cli_install,
    cli_inventory,
    cli_lab,
    cli_machine_props,
    cli_model,
    cli_operators,
    cli_ops,
    cli_points,
    cli_ps,
    cli_release,
    cli_status,
    report,
)
from deploy.cli_lab import DEFAULT_LAB, lab_of
from deploy.topology import DEFAULT_TOPOLOGY


def _admin_call(args: argparse.Namespace, fn: Callable[[Any], Any]) -> Any:
    from cs.client import CSAdminClient

    lab = lab_of(args)
    files = tls.IdentityFiles(Path(args.admin_dir)) if args.admin_dir else lab.admin_files
    url = args.cs_url or lab.topology.cs_url

    async def go() -> Any:
        async with CSAdminClient(url, files) as admin:
            return await fn(admin)

    return asyncio.run(go())


def _print_items(args: argparse.Namespace, items: list[dict[str, Any]], cols: list[str]) -> int:
    if args.json:
        print(json.dumps(items, indent=2))
    else:
        print(report.table(cols, [[item.get(c, "") for c in cols] for item in items]))
    return 0


def cmd_components(args: argparse.Namespace) -> int:
    """The table shows each heartbeat's age; ``--json`` the CS's ``last_heartbeat`` (ns since the epoch)."""
    items = _admin_call(args, lambda a: a.components())
    now = time.time_ns()
    rows = items if args.json else [{**c, "heartbeat": report.ago(c.get("last_heartbeat"), now)} for c in items]
    return _print_items(args, rows, ["component_id", "role", "host_id", "address", "version", "heartbeat",
                                     "state", "health"])


def cmd_disks(args: argparse.Namespace) -> int:
    items = _admin_call(args, lambda a: a.disks())
    return _print_items(args, items, ["disk_id", "machine_id", "name", "size_bytes", "generation", "state", "percent"])


def cmd_protect(args: argparse.Namespace) -> int:
    """Protect a machine (id or host id); ``--ps`` / ``--mt`` by id or host id."""
    targets: dict[str, Any] = {}
    if args.seed:
        pairs = [item.partition("=") for item in args.seed]
        bad = [item for item, (_, eq, path) in zip(args.seed, pairs, strict=True) if not eq or not path]
        if bad:
            raise errors.BadRequest(f"--seed takes DISK=PATH, not {bad[0]!r}")
        targets["seed"] = {name: path for name, _, path in pairs}

    async def go(admin: Any) -> int:  # with --wait: follow the initial replication until every disk is protected
        from deploy.cli_inventory import resolve
        from deploy.cli_progress import follow_protect

        for key, role, name in (("ps_id", "ps", args.ps), ("mt_id", "mt", args.mt)):
            if name:
                targets[key] = await resolve(admin.api, role, name)
        machine_id = await resolve(admin.api, "agent", args.machine_id)
        disks = await admin.protect(machine_id, policy=args.policy, **targets)
        if not args.wait:
            print(json.dumps(disks, indent=2))
            return 0
        return await follow_protect(admin.disks, [d["disk_id"] for d in disks], args.timeout_s, as_json=args.json)

    return int(_admin_call(args, go))


def cmd_failover(args: argparse.Namespace) -> int:
    named = ("latest", "latest-processed", "latest-app-consistent", "latest-multi-machine")
    point: Any = args.point if args.point in named else {"time_ns": int(args.point)}
    if args.tag is not None:  # a bookmark
        point = {"tag": args.tag}
    if args.wnum is not None:  # a machine boundary (docs/PROTOCOL.md, "Machine points and failover")
        point = {"wnum": args.wnum}
    if (args.machine is None) == (args.disk_id is None):
        raise errors.BadRequest("name either a disk (DISK_ID) or a machine (--machine ID)")

    from deploy.cli_progress import follow_job

    path = (f"/v1/machines/{args.machine}/failover" if args.machine is not None  # every disk at one W
            else f"/v1/disks/{args.disk_id}/failover")

    async def go(api: Any) -> int:
        body: dict[str, Any] = {"point": point, **({"image": True} if args.image else {})}
        job_id = str((await api.post(path, body))["job_id"])
        if not args.json:
            print(f"job {job_id}", flush=True)
        return await follow_job(api, job_id, args.timeout_s, as_json=args.json)

    return int(_admin_api(args, go))


def _admin_api(args: argparse.Namespace, fn: Callable[[Any], Any]) -> Any:
    """Call raw admin routes (``fn`` gets a common.http.ApiClient with the admin certificate)."""
    from common.http import ApiClient

    lab = lab_of(args)
    files = tls.IdentityFiles(Path(args.admin_dir)) if args.admin_dir else lab.admin_files
    url = args.cs_url or lab.topology.cs_url

    async def go() -> Any:
        api = ApiClient(url, tls.client_context(files))
        try:
            return await fn(api)
        finally:
            await api.close()

    return asyncio.run(go())


def cmd_disk_resync(args: argparse.Namespace) -> int:
    """Resync a disk under a new generation; with --wait, follow it until the disk is protected."""
    async def go(admin: Any) -> int:
        from deploy.cli_progress import follow_protect

        out = await admin.api.post(f"/v1/disks/{args.disk_id}/resync", {"reason": args.reason})
        if args.wait:  # the disk reads ``resync`` from the answer on: it is protected again once done
            return await follow_protect(admin.disks, [args.disk_id], args.timeout_s, as_json=args.json)
        print(json.dumps(out) if args.json else
              f"disk {args.disk_id}: resync ({args.reason}) under generation {out['generation']}")
        return 0

    return int(_admin_call(args, go))


def cmd_disk_resyncs(args: argparse.Namespace) -> int:
    from cs.client import all_pages

    items = _admin_api(args, lambda api: all_pages(api, f"/v1/disks/{args.disk_id}/resyncs", most=args.limit))
    return _print_items(args, items, ["generation", "reason", "state", "mode", "percent",
                                                     "bytes_total", "bytes_compared", "bytes_sent", "started_ns",
                                                     "ended_ns"])


def cmd_disk_verify(args: argparse.Namespace) -> int:
    """Start an online verify (or show the last one); with --wait, exit 1 if blocks differ."""
    base = f"/v1/disks/{args.disk_id}/verify"

    async def go(api: Any) -> Any:
        if args.last:
            return await api.get(base)
        v = await api.post(base, {"block_bytes": args.block_bytes, "repair": args.repair})
        deadline = time.monotonic() + args.timeout_s
        while args.wait and v["state"] not in ("succeeded", "failed"):
            if time.monotonic() >= deadline:
                raise errors.Unavailable(f"verify {v['verify_id']} still {v['state']} after {args.timeout_s:.0f} s")
            await asyncio.sleep(0.5)
            v = await api.get(f"{base}/{v['verify_id']}")
        return v

    v = _admin_api(args, go)
    result = v.get("result") or {}
    if args.json:
        print(json.dumps(v, indent=2))
    elif v["state"] == "succeeded":
        print(f"verify {v['verify_id']}: {result['blocks_compared']} blocks of {result['block_bytes']} bytes "
              f"compared, {len(result['differing'])} differ, {len(result['unsettled'])} unsettled"
              + (f"; differing offsets: {result['differing'][:32]}" if result["differing"] else "")
              + (f"; repair under generation {result['repair_generation']}" if "repair_generation" in result else ""))
    else:
        print(f"verify {v['verify_id']}: {v['state']}" + (f" ({v['error']})" if v.get("error") else ""))
    if v["state"] == "failed":
        return 1
    return 1 if result.get("differing") else 0


def _ns_time(ns: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if isinstance(ns, int) else "-"


def cmd_alerts(args: argparse.Namespace) -> int:
    """Open alerts (``--all``: cleared ones too), newest first, following the pages up to ``--limit``."""

    async def go(api: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": min(args.limit, 1000)} | ({} if args.all else {"active": 1})
        while len(items) < args.limit:
            page = await api.get("/v1/alerts", params=params)
            items += page["items"]
            if page["next"] is None:
                break
            params["cursor"] = page["next"]
        return items[:args.limit]

    items = _admin_api(args, go)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    print(report.table(["id", "severity", "code", "source", "disk", "raised", "cleared", "message"],
                       [[a["alert_id"], a["severity"], a["code"], a.get("source_host") or a["source_id"],
                         a["disk_id"] or "-", _ns_time(a["raised_ns"]), _ns_time(a["cleared_ns"]), a["message"]]
                        for a in items]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from deploy.cli_progress import EXIT_CODES_HELP

    p = argparse.ArgumentParser(prog="drlab", description="drlab: continuous block-level disaster recovery",
                                epilog=EXIT_CODES_HELP)
    p.add_argument("--topology", default=str(DEFAULT_TOPOLOGY), help="lab topology file")
    p.add_argument("--dir", default=str(DEFAULT_LAB), help="lab directory (state, configs, logs)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="store_true", help="log to the terminal")
    p.add_argument("--cs-url", default=None, help="CS URL (default: the lab's)")
    p.add_argument("--admin-dir", default=None, help="admin identity directory (default: the lab's)")
    sub = p.add_subparsers(dest="command", required=True)

    cs = sub.add_parser("cs", help="configuration server").add_subparsers(dest="cs_command", required=True)
    cli_lab.add_parsers(sub, cs)  # cs init, lab up|down|status|logs, demo, verify
    cli_cs.add_parsers(cs)  # revoke, passphrase rotate, backup, restore
    sub.add_parser("components", help="registered components").set_defaults(func=cmd_components)
    sub.add_parser("disks", help="disks and their replication state").set_defaults(func=cmd_disks)
    al = sub.add_parser("alerts", help="open alerts, newest first (--all: cleared ones too)")
    al.add_argument("--all", action="store_true", help="cleared alerts too")
    al.add_argument("--limit", type=int, default=100)
    al.set_defaults(func=cmd_alerts)
    pr = sub.add_parser("protect", help="enable protection of a machine's disks")
    pr.add_argument("machine_id", help="the machine (its id, or its host id, e.g. m1)")
    pr.add_argument("--policy", default=None, help="replication policy (default: the default policy)")
    pr.add_argument("--ps", default=None, help="PS, id or host id (default: the least loaded in the machine's site)")
    pr.add_argument("--mt", default=None, help="MT, id or host id (default: the least loaded outside its site)")
    pr.add_argument("--seed", action="append", default=[], metavar="DISK=PATH",
                    help="adopt an existing disk in the MT's datastore as DISK's replica (reprotect, failback)")
    pr.add_argument("--wait", action="store_true",
                    help="follow the initial replication until every disk is protected (exit 3 on timeout)")
    pr.add_argument("--timeout-s", type=float, default=3600.0, help="how long --wait waits")
    pr.set_defaults(func=cmd_protect)
    fo = sub.add_parser("failover", help="fail a disk (or a machine: --machine) over to a recovery point")
    fo.add_argument("disk_id", nargs="?", default=None)
    fo.add_argument("--machine", default=None, metavar="MACHINE_ID",
                    help="fail every protected disk of the machine over to one machine-consistent point")
    fo.add_argument("--wnum", type=int, default=None, help="the point at this machine write number (boundary)")
    fo.add_argument("--point", default="latest", help="latest | latest-processed | latest-app-consistent | "
                    "latest-multi-machine | TIME_NS")
    fo.add_argument("--tag", default=None, help="the point carrying this bookmark tag (e.g. group-app:NAME)")
    fo.add_argument("--image", action="store_true",
                    help="also write each view's image file (image_path; takes time in proportion to the data)")
    fo.add_argument("--timeout-s", type=float, default=300.0)
    fo.set_defaults(func=cmd_failover)

    disk = sub.add_parser("disk", help="one disk: resync, resync history, online verify")
    dsub = disk.add_subparsers(dest="disk_command", required=True)
    rs = dsub.add_parser("resync", help="resync a disk (a new generation; only differing blocks travel)")
    rs.add_argument("disk_id")
    rs.add_argument("--reason", default="user")
    rs.add_argument("--wait", action="store_true", help="follow the resync until the disk is protected (exit 3 on "
                    "timeout)")
    rs.add_argument("--timeout-s", type=float, default=3600.0, help="how long --wait waits")
    rs.set_defaults(func=cmd_disk_resync)
    hist = dsub.add_parser("resyncs", help="the disk's resyncs, newest first")
    hist.add_argument("disk_id")
    hist.add_argument("--limit", type=int, default=20)
    hist.set_defaults(func=cmd_disk_resyncs)
    ver = dsub.add_parser("verify", help="compare the disk with its replica without stopping replication")
    ver.add_argument("disk_id")
    ver.add_argument("--wait", action="store_true", help="wait for the result (exit 1 if blocks differ)")
    ver.add_argument("--repair", action="store_true", help="resync (reason verify) if blocks differ")
    ver.add_argument("--block-bytes", type=int, default=1 << 20)
    ver.add_argument("--timeout-s", type=float, default=600.0)
    ver.add_argument("--last", action="store_true", help="show the last verify instead of starting one")
    ver.set_defaults(func=cmd_disk_verify)
    cli_points.add_disk_parser(dsub)  # drlab disk points
    cli_bookmarks.add_parsers(sub)  # drlab bookmark|group
    cli_operators.add_parsers(sub)
    cli_ps.add_parsers(sub)  # drlab ps switch|balance
    cli_model.add_parsers(sub)  # drlab site|machine|policy|plan|account|audit|jobs|job
    cli_ops.add_parsers(sub)  # drlab machine test-failover|..., plan failover|cleanup, job resume
    cli_release.add_parsers(cli_ops._subparsers(sub.choices["machine"]), dsub)  # machine disable, disk exclude
    cli_inventory.add_parsers(sub, cli_ops._subparsers(sub.choices["machine"]))  # hypervisor, inventory
    cli_drills.add_parsers(sub)  # drlab drill failback|site-loss
    cli_machine_props.add_parsers(cli_ops._subparsers(sub.choices["machine"]))  # drlab machine properties
    cli_status.add_parsers(sub, cs)  # whoami, rpo, cs ping|routes, X show, disk assignments, operator login
    cli_install.add_parsers(sub)  # drlab mt install|reregister, agent install
    return p


async def _resolve(api: Any, *, role: str, name: str) -> str:
    from deploy.cli_inventory import resolve

    return await resolve(api, role, name)


def _by_host_id(args: argparse.Namespace) -> None:
    """Machines (``machine_id``) and process servers (``ps_id``, and ``--to`` of a ``ps`` command)
    named by their host id (``m1``, ``web1``, ``ps2``) become their component ids; so do the machines of
    a repeatable ``--machine`` (``ps balance``, ``policy assign``) and of bookmark and group lists."""
    named = [("machine_id", "agent"), ("ps_id", "ps"), ("machine", "agent"), ("machines", "agent")]
    named += [("to", "ps")] if hasattr(args, "ps_command") else []
    for attr, role in named:
        value = getattr(args, attr, None)
        if isinstance(value, str):
            setattr(args, attr, _by_name(args, role, value))
        elif isinstance(value, list):  # a repeatable --machine, or a list of machines
            setattr(args, attr, [_by_name(args, role, v) if isinstance(v, str) else v for v in value])


def _by_name(args: argparse.Namespace, role: str, name: str) -> str:
    from deploy.cli_inventory import COMPONENT_ID

    if not name or COMPONENT_ID.match(name):
        return name
    return str(_admin_api(args, functools.partial(_resolve, role=role, name=name)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dlog.setup("drlab", level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        _by_host_id(args)
        return int(args.func(args))
    except errors.DrlabError as exc:
        print(f"drlab: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
